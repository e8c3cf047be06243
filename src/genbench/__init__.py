"""genbench: train GANs, VAEs and DDPMs with one framework and benchmark them fairly."""

from pathlib import Path

from genbench.errors import GenbenchError

__version__ = "0.1.0"

#: Repository root (the package is installed editable, so configs are found next to it).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"

__all__ = ["CONFIG_DIR", "PROJECT_ROOT", "GenbenchError", "__version__"]
