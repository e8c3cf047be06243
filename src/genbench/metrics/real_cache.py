"""The verified on-disk cache of everything about a real image set that does not depend on the
generated one: per-layer features, FID statistics, precision/recall k-NN radii, the classifier's
class histogram, nearest-training-image distances of held-out images.

Each item is a file ``<key>-<item>.pt`` under a key that means something (dataset, split,
resolution, the exact images' hash and the extractor weights' hash -- a retrained extractor never
reuses stale statistics), plus a manifest of SHA-256 sums: a corrupt or unknown file is deleted
and recomputed, never loaded. Computing a missing item happens under a lock so concurrent jobs
neither duplicate the work nor read each other's partial state; a cached evaluation reads the
verified files without taking the lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from genbench.io import atomic_torch_save, atomic_write_json, file_lock, read_json, sha256_file, tensor_digest
from genbench.metrics.spec import ExtractorSpec

log = logging.getLogger("genbench.metrics")


def feature_layer(spec: ExtractorSpec, metric: str) -> str:
    """The extractor layer torch-fidelity uses for ``metric`` (e.g. logits for IS)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY[spec.name].get_default_feature_layer_for_metric(metric)


class RealFeatureCache:
    """Items about one real image set, each a verified file ``<root>/<key>-<item>.pt``."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.manifest_path = self.root / f"{key}.manifest.json"
        self._depth = 0  # the lock is re-entrant within this object (computing one item may need another)

    def files(self) -> list[Path]:
        return sorted(self.root.glob(f"{self.key}-*.pt"))

    def path(self, item: str) -> Path:
        return self.root / f"{self.key}-{item}.pt"

    def _manifest(self) -> dict[str, str]:
        data = read_json(self.manifest_path)
        files = data.get("files") if isinstance(data, dict) else None
        return files if isinstance(files, dict) else {}

    def _verified(self, path: Path, manifest: dict[str, str]) -> bool:
        return path.is_file() and manifest.get(path.name) == sha256_file(path)

    def is_complete(self, names: list[str]) -> bool:
        manifest = self._manifest()
        return all(self._verified(self.root / name, manifest) for name in names)

    def load(self, item: str) -> Any | None:
        """The item when its file is there and the manifest vouches for it, else None."""
        path = self.path(item)
        if not self._verified(path, self._manifest()):
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # verified yet unreadable (written by another torch version): recompute
            return None

    def store(self, item: str, value: Any) -> None:
        """Write the item and add its checksum to the manifest (under the lock)."""
        with self.lock():
            path = self.path(item)
            atomic_torch_save(value, path)
            files = self._manifest()
            files[path.name] = sha256_file(path)
            atomic_write_json(self.manifest_path, {"key": self.key, "files": files, "written": time.time()})

    def get(self, item: str, compute: Callable[[], Any]) -> Any:
        """The cached item, or ``compute()`` stored for next time. A file the manifest does not
        vouch for (corrupt, partial, foreign) is discarded with a warning."""
        value = self.load(item)
        if value is not None:
            return value
        with self.lock():
            value = self.load(item)  # another job may have computed it while we waited
            if value is not None:
                return value
            path = self.path(item)
            if path.exists():
                log.warning("Real-feature cache: discarded %s (corrupt or unverified); recomputing.", path.name)
                path.unlink()
            value = compute()
            self.store(item, value)
            return value

    def purge_unverified(self) -> list[str]:
        """Delete every file of this key whose checksum the manifest does not vouch for."""
        manifest, removed = self._manifest(), []
        for path in self.files():
            if not self._verified(path, manifest):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.warning("Real-feature cache: discarded %s (corrupt or unverified); recomputing.", ", ".join(removed))
        return removed

    @contextmanager
    def lock(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / f".{self.key}.lock", f"the real features {self.key}"):
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0


def real_cache_key(real: torch.Tensor, spec: ExtractorSpec, dataset: str = "real", split: str = "custom") -> str:
    """dataset, split, resolution, the exact images and the extractor weights, in one file-name-safe key."""
    c, h, w = real.shape[1:]
    safe = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in f"{dataset}-{split}")
    return f"{safe}-{h}x{w}x{c}-n{len(real)}-img{tensor_digest(real)[:12]}-w{spec.weights_hash[:12]}"
