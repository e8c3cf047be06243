"""genbench: train generative model families (built-in or from other packages) with one framework
and benchmark them fairly."""

from pathlib import Path

from genbench.errors import GenbenchError

__version__ = "0.1.0"

#: The Hydra configs. They ship inside the package (genbench/conf/ in the wheel); in a source
#: checkout src/genbench/conf is a symlink to the repository's top-level conf/, resolved here so
#: that paths and messages name conf/ itself.
CONFIG_DIR = (Path(__file__).resolve().parent / "conf").resolve()

#: The source checkout's root (tests and scripts use it). Meaningful only in a checkout: nothing
#: at runtime depends on it, so an installed package works from anywhere (outputs go under the
#: current directory or $GENBENCH_ROOT, see conf/paths/default.yaml).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["CONFIG_DIR", "PROJECT_ROOT", "GenbenchError", "__version__"]
