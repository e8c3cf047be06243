"""torch-fidelity's InceptionV3 (``inception-v3-compat``), for numbers comparable with papers.

Its weights cannot be downloaded on our machines, so they must be a local file (or already be in
the torch hub cache). The file is resolved and checked *before* torch-fidelity is called, which
would otherwise try the network; a missing file is an immediate error saying where to put it, and
genbench never falls back silently to another extractor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from genbench.errors import GenbenchError
from genbench.io import sha256_file
from genbench.metrics.spec import INCEPTION, ExtractorSpec

INCEPTION_FILENAME = URL_INCEPTION_V3.rsplit("/", 1)[-1]


def inception_hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def resolve_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The local InceptionV3 weights file: the given path, else torch hub's cache.

    Checked before torch-fidelity is called: torch-fidelity would otherwise try to download the
    file (no internet here), and we never fall back silently to another extractor."""
    hub = inception_hub_path()
    how = (
        f"Download {URL_INCEPTION_V3} on a machine with internet access, then either put it at {hub} "
        "(torch hub's cache; TORCH_HOME moves it) or pass metrics.inception_weights=/path/to/"
        f"{INCEPTION_FILENAME}. Offline alternative: metrics.extractor=in-domain."
    )
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise GenbenchError(f"InceptionV3 weights file {path} does not exist. {how}")
    elif hub.is_file():
        path = hub
    else:
        raise GenbenchError(f"InceptionV3 weights for {INCEPTION} are not available offline. {how}")
    _check_inception_state_dict(path)
    return path


_INCEPTION_SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048), "fc.bias": (1008,)}


def _check_inception_state_dict(path: Path) -> None:
    """Cheap structural check, so a wrong file is a clear error and not a stack of missing keys."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GenbenchError(f"InceptionV3 weights file {path} cannot be read ({type(e).__name__}: {e}).") from e
    if not isinstance(sd, dict):
        raise GenbenchError(f"{path} is not a state dict of torch-fidelity's InceptionV3.")
    for key, shape in _INCEPTION_SHAPES.items():
        if key not in sd or tuple(sd[key].shape) != shape:
            found = tuple(sd[key].shape) if key in sd else "missing"
            raise GenbenchError(
                f"{path} is not torch-fidelity's InceptionV3 ({INCEPTION_FILENAME}): {key} should be {shape}, "
                f"found {found}. Use the file from {URL_INCEPTION_V3}."
            )


def inception_spec(weights_path: str | Path | None = None) -> ExtractorSpec:
    path = resolve_inception_weights(weights_path)
    return ExtractorSpec(
        name=INCEPTION, weights_path=path, weights_hash=sha256_file(path), rgb=True, feature_dim=2048, label=INCEPTION
    )
