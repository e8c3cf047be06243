"""The verified on-disk cache of the real side's features and statistics.

torch-fidelity caches input2 under a name we give it; genbench chooses a name that means
something (dataset, split, resolution, the exact real images' hash and the extractor weights'
hash -- torch-fidelity's own names carry none of the latter, so a retrained extractor would
silently reuse stale statistics) and keeps a manifest of SHA-256 sums: a corrupt or unknown file
is deleted and recomputed, never loaded. Filling the cache happens under a lock so concurrent
jobs neither duplicate the work nor read each other's partial state.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from genbench.compat import fidelity_cache_files
from genbench.io import atomic_write_json, file_lock, read_json, sha256_file, tensor_digest
from genbench.metrics.settings import MetricsConfig
from genbench.metrics.spec import ExtractorSpec

log = logging.getLogger("genbench.metrics")


def feature_layer(spec: ExtractorSpec, metric: str) -> str:
    """The extractor layer torch-fidelity uses for ``metric`` (e.g. logits for IS)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY[spec.name].get_default_feature_layer_for_metric(metric)


class RealFeatureCache:
    """torch-fidelity's file cache for input2, under a key that means something, plus a manifest
    of SHA-256 sums so that only files this class has seen written are ever loaded."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.manifest_path = self.root / f"{key}.manifest.json"

    def files(self) -> list[Path]:
        return sorted(self.root.glob(f"{self.key}-*.pt"))

    def _manifest(self) -> dict[str, str]:
        data = read_json(self.manifest_path)
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def expected(self, spec: ExtractorSpec, cfg: MetricsConfig) -> list[str]:
        """The file names torch-fidelity will look up for this request."""
        return fidelity_cache_files(
            self.key,
            spec.name,
            feature_layers=[feature_layer(spec, m) for m in cfg.enabled()],
            fid_layer=feature_layer(spec, "fid") if cfg.fid else None,
            only_fid=cfg.enabled() == ["fid"],
        )

    def is_complete(self, names: list[str]) -> bool:
        manifest = self._manifest()
        for name in names:
            path = self.root / name
            if not path.is_file() or manifest.get(name) != sha256_file(path):
                return False
        return True

    def purge_unverified(self) -> list[str]:
        """Delete every file of this key whose checksum the manifest does not vouch for."""
        manifest, removed = self._manifest(), []
        for path in self.files():
            if manifest.get(path.name) != sha256_file(path):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.warning("Real-feature cache: discarded %s (corrupt or unverified); recomputing.", ", ".join(removed))
        return removed

    def record(self) -> None:
        files = {p.name: sha256_file(p) for p in self.files()}
        atomic_write_json(self.manifest_path, {"key": self.key, "files": files, "written": time.time()})

    def lock(self) -> Any:
        return file_lock(self.root / f".{self.key}.lock", f"the real features {self.key}")


def real_cache_key(real: torch.Tensor, spec: ExtractorSpec, dataset: str = "real", split: str = "custom") -> str:
    """dataset, split, resolution, the exact images and the extractor weights, in one file-name-safe key."""
    c, h, w = real.shape[1:]
    safe = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in f"{dataset}-{split}")
    return f"{safe}-{h}x{w}x{c}-n{len(real)}-img{tensor_digest(real)[:12]}-w{spec.weights_hash[:12]}"
