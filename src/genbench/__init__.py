"""genbench: train GANs, VAEs and DDPMs with one framework and benchmark them fairly."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the package is installed editable, so configs are found next to it).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


class GenbenchError(RuntimeError):
    """A user-facing error: the message says what is wrong and how to fix it.

    Entry points print it as one line and exit with status 1 instead of a traceback.
    """
