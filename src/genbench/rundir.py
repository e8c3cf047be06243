"""The files of a run directory, named once, and the failure record every writer shares.

Writers (``genbench.train``, the callbacks, ``genbench-benchmark``) and the reader
(``genbench.report.collect``) use these names, so a run looks the same to the report whether it
was part of a benchmark or not.

Also who may write a run directory at all: :class:`RunDirGuard` claims it for genbench-train
before Hydra writes into it (refusing a start that would overwrite a run's checkpoints or cannot
write there), and :func:`undo_failed_start` takes back what a start that failed on bad input wrote.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genbench.errors import GenbenchError, user_errors
from genbench.io import atomic_write_json, probe_writable

log = logging.getLogger("genbench")

CONFIG = "config_resolved.yaml"  # the fully resolved config of the run
CHECKPOINTS = "checkpoints"  # ModelCheckpoint's and ResumeCheckpoint's directory
LAST = "last.ckpt"  # the resumable checkpoint, written atomically at every save
EVAL_RESULTS = f"{CHECKPOINTS}/metrics.json"  # genbench-eval: every evaluation of the run's checkpoints
WANDB_RUN_ID = "wandb_run_id"  # the run's W&B id: a resumed job or genbench-eval continues that run
METRICS = "metrics.json"  # final training metrics (family, steps, parameters, callback metrics)
FAILED = "failed.json"  # written instead of metrics.json when a fail_soft job fails
BUDGET = "budget.json"  # TrainingBudget: what was spent
SAMPLING = "sampling.json"  # SamplingBenchmark: sampling speed (and quality) per sampler
EVAL_DIR = "eval"  # EvaluationCallback's results
EVAL_HISTORY = f"{EVAL_DIR}/metrics.jsonl"  # EvaluationCallback: one line per evaluation
EVAL_FINAL = f"{EVAL_DIR}/final.json"  # EvaluationCallback: the final model's evaluation
EVAL_LATEST = f"{EVAL_DIR}/latest.json"  # EvaluationCallback: the newest evaluation
FINAL_GRID = "samples/final.png"  # SampleGrid: the final model's samples
FINAL_RECON = "samples/recon_final.png"  # SampleGrid (encoder families): validation images above their reconstructions
FINAL_INTERP = "samples/interp_final.png"  # SampleGrid: latent interpolations of the final model
OVERRIDES = ".hydra/overrides.yaml"  # Hydra: the job's command-line overrides (a sweep's point, its seed)


@dataclass(frozen=True)
class RunLayout:
    """Where each file of one run directory lives: the one object writers and readers share, so
    a file is named in one place (the constants above) and found by every tool the same way."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / CONFIG)
    metrics = property(lambda self: self.root / METRICS)
    failed = property(lambda self: self.root / FAILED)
    budget = property(lambda self: self.root / BUDGET)
    sampling = property(lambda self: self.root / SAMPLING)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    last_checkpoint = property(lambda self: self.root / CHECKPOINTS / LAST)
    eval_results = property(lambda self: self.root / EVAL_RESULTS)
    eval_dir = property(lambda self: self.root / EVAL_DIR)
    eval_history = property(lambda self: self.root / EVAL_HISTORY)
    eval_final = property(lambda self: self.root / EVAL_FINAL)
    eval_latest = property(lambda self: self.root / EVAL_LATEST)
    final_grid = property(lambda self: self.root / FINAL_GRID)
    final_recon = property(lambda self: self.root / FINAL_RECON)
    final_interp = property(lambda self: self.root / FINAL_INTERP)
    wandb_run_id = property(lambda self: self.root / WANDB_RUN_ID)

    @classmethod
    def of_checkpoint(cls, ckpt_path: str | Path) -> RunLayout:
        """The layout of the run a checkpoint (``<run>/checkpoints/<name>.ckpt``) belongs to."""
        return cls(Path(ckpt_path).expanduser().parent.parent)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's resolved config (``config_resolved.yaml``) as plain data, {} when it has none (a run
    that failed before training wrote it): what the report and genbench-eval read of a run."""
    import yaml

    path = RunLayout(run_dir).config
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def write_failure(
    run_dir: Path,
    *,
    family: str | None,
    seed: int | None,
    error: BaseException | str,
    overrides: Sequence[str] = (),
    details: str | None = None,
) -> Path:
    """Record why a job failed in ``<run_dir>/failed.json`` (one schema for every writer): the
    family and seed it was, the error and its type, the job's overrides and ``details`` (a
    traceback or the tail of a launcher log)."""
    record: dict[str, Any] = {
        "family": family,
        "seed": seed,
        "type": type(error).__name__ if isinstance(error, BaseException) else "LaunchError",
        "error": str(error),
        "overrides": list(overrides),
        "details": details,
    }
    path = RunLayout(run_dir).failed
    atomic_write_json(path, record)
    return path


# --- claiming a run directory before Hydra writes into it ----------------------------------------

#: What Hydra and genbench write into a run directory before the first training step: a start that
#: fails before training leaves nothing else, so these (and only these) are taken back.
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", OVERRIDES)
#: A csv/ folder with nothing but the hyperparameters Lightning's CSVLogger saves when a fit fails
#: before its first step (the data missing at setup) holds no training output either.
CSV_HPARAMS = "csv/hparams.yaml"


@dataclass
class _Start:
    """What a genbench-train start found in its run directory, so a start that fails on bad input
    can leave the disk as it found it (:func:`undo_failed_start`)."""

    created: bool  # this process made the directory (claimed it with os.mkdir)
    log_name: str  # <hydra.job.name>.log, Hydra's file log
    sweep_dir: str | None = None  # a multirun directory this process made, removed if it ends up empty
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # relpath -> (size, mtime_ns) before
    contents: dict[str, bytes] = field(default_factory=dict)  # the start files' bytes before
    had_hydra_dir: bool = False

    def start_files(self) -> set[str]:
        return {*HYDRA_FILES, CONFIG, self.log_name}


_STARTS: dict[str, _Start] = {}


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (relative path -> size, mtime): what changed between two looks."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            found[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


def _quote_override(value: str) -> str:
    """A path as a Hydra override value (quoted: it may hold '=', ',' or spaces)."""
    return "'" + value.replace("'", "\\'") + "'"


def _dir_setting(config: DictConfig, key: str) -> tuple[Path, bool] | None:
    """The directory ``key`` (hydra.run.dir / hydra.sweep.dir) names, and whether it is a
    generated, timestamped name (``${now:...}``, the default) rather than one the user chose.
    None where it does not resolve: Hydra reports that itself."""
    parent, leaf = key.rsplit(".", 1)
    try:
        raw = OmegaConf.to_container(OmegaConf.select(config, parent), resolve=False)[leaf]  # type: ignore[index]
        value = OmegaConf.select(config, key)
    except Exception:  # noqa: BLE001 - an unresolvable setting is Hydra's error to report
        return None
    if value is None:
        return None
    return Path(os.path.abspath(str(value))), isinstance(raw, str) and "${now:" in raw


def claim_dir(path: Path, *, generated: bool, key: str) -> tuple[Path, bool]:
    """Make the run directory with ``os.mkdir`` (atomic: of two processes exactly one succeeds).

    Returns the directory and whether this process created it. A generated (timestamped) name
    that another start took first (two starts in the same second) becomes ``<name>_1``,
    ``<name>_2``, ...: two runs never share a directory. A directory named explicitly is used as it
    is when it exists (resuming, a DDP rank, a directory made beforehand). Raises GenbenchError
    where the directory cannot be made or written, before anything is written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker else e.strerror or str(e)
        raise GenbenchError(
            f"Cannot create the run directory {path} ({why}): choose a writable place with {key}=<dir>, or set "
            "GENBENCH_ROOT (outputs go to $GENBENCH_ROOT/outputs)."
        ) from None
    candidate = path
    for n in range(1, 10_000):
        try:
            os.mkdir(candidate)
            return candidate, True
        except FileExistsError:
            if not candidate.is_dir():
                raise GenbenchError(
                    f"The run directory {candidate} exists and is not a directory: choose another with {key}=<dir>."
                ) from None
            if not generated:
                try:
                    probe_writable(candidate)
                except OSError as e:
                    raise GenbenchError(
                        f"The run directory {candidate} is not writable ({e.strerror or e}): make it writable or "
                        f"choose another with {key}=<dir>."
                    ) from None
                return candidate, False
            candidate = path.with_name(f"{path.name}_{n}")
        except OSError as e:
            raise GenbenchError(
                f"Cannot create the run directory {candidate} ({e.strerror or e}): choose a writable place with "
                f"{key}=<dir>, or set GENBENCH_ROOT (outputs go to $GENBENCH_ROOT/outputs)."
            ) from None
    raise GenbenchError(f"Found no free name for the run directory {path}_<n>: choose one with {key}=<dir>.")


def _set_dir(config: DictConfig, key: str, path: Path, *, as_override: bool) -> None:
    """Point ``key`` at the claimed directory. A multirun recomposes each job's config from the
    command line, so there the claimed directory also goes into ``hydra.overrides.hydra``."""
    parent, leaf = key.rsplit(".", 1)
    with read_write(config.hydra), open_dict(config.hydra):
        OmegaConf.select(config, parent)[leaf] = str(path)
        if as_override:
            config.hydra.overrides.hydra.append(f"{key}={_quote_override(str(path))}")


class RunDirGuard(HydraCallback):
    """A Hydra callback (``hydra.callbacks`` in conf/hydra/default.yaml) that vets a genbench-train
    run directory before Hydra writes ``.hydra/`` and ``train.log`` into it.

    By the time the task function runs, Hydra has made the directory and overwritten its
    ``.hydra`` record, so a refusal there comes too late: the record of a run would no longer
    describe its checkpoints. Hydra calls ``on_run_start`` / ``on_multirun_start`` before that, so
    here a start is refused that would overwrite a run's checkpoints (ckpt_path null in a directory
    that holds some) or that cannot write its directory, with one line and exit status 1. A fresh
    directory is claimed atomically, so two starts in the same second get two directories.

    Only rank 0 acts (DDP children re-enter their parent's directory on purpose) and only for the
    configs in ``config_names`` (other entry points share conf/hydra/default.yaml).
    """

    def __init__(self, config_names: Sequence[str] = ("train",)) -> None:
        self.config_names = tuple(config_names)
        self.sweep_dir: str | None = None  # the multirun directory (state carried to submitit jobs)
        self.sweep_created = False
        self.sweep_entries: frozenset[str] = frozenset()
        self.job_snapshots: dict[str, _Start] = {}  # job subdirectory -> what it held before the sweep

    def _applies(self, config: DictConfig) -> bool:
        from genbench.distributed import is_rank_zero

        return OmegaConf.select(config, "hydra.job.config_name") in self.config_names and is_rank_zero()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._applies(config):
            return
        with user_errors():
            setting = _dir_setting(config, "hydra.run.dir")
            if setting is None:
                return
            path, generated = setting
            if path.is_dir() and not generated:
                _refuse_fresh_start_over_checkpoints(config, [path])
            run_dir, created = claim_dir(path, generated=generated, key="hydra.run.dir")
            if generated:
                _set_dir(config, "hydra.run.dir", run_dir, as_override=False)
            log_name = f"{OmegaConf.select(config, 'hydra.job.name')}.log"
            if created:
                _remove_if_empty_at_exit(run_dir)
                _STARTS[str(run_dir)] = _Start(created=True, log_name=log_name)
            else:
                _STARTS[str(run_dir)] = _snapshot(run_dir, log_name)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._applies(config):
            return
        with user_errors():
            setting = _dir_setting(config, "hydra.sweep.dir")
            if setting is None:
                return
            path, generated = setting
            if path.is_dir() and not generated:
                _refuse_fresh_start_over_checkpoints(config, [p for p in path.iterdir() if p.is_dir()])
            sweep_dir, created = claim_dir(path, generated=generated, key="hydra.sweep.dir")
            if generated:
                _set_dir(config, "hydra.sweep.dir", sweep_dir, as_override=True)
            if created:
                _remove_if_empty_at_exit(sweep_dir)
            self.sweep_dir, self.sweep_created = str(sweep_dir), created
            self.sweep_entries = frozenset() if created else frozenset(os.listdir(sweep_dir))
            # Hydra rewrites each job's .hydra/ before any job callback runs: what a resumed job
            # directory held is recorded now, so a job that fails on bad input can put it back
            log_name = f"{OmegaConf.select(config, 'hydra.job.name')}.log"
            self.job_snapshots = {
                entry: _snapshot(sweep_dir / entry, log_name)
                for entry in self.sweep_entries
                if (sweep_dir / entry / ".hydra").is_dir()
            }

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A multirun job (its directory is made and .hydra written just before this): remember
        whether this multirun made the directory, so a failed start can take it back."""
        if self.sweep_dir is None or not self._applies(config):
            return
        job_dir = os.path.abspath(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
        rel = os.path.relpath(job_dir, self.sweep_dir)
        if rel.startswith(os.pardir) or rel == os.curdir:
            return
        if self.sweep_created or rel.split(os.sep)[0] not in self.sweep_entries:
            _STARTS[job_dir] = _Start(
                created=True,
                log_name=f"{OmegaConf.select(config, 'hydra.job.name')}.log",
                sweep_dir=self.sweep_dir if self.sweep_created else None,
            )
        elif rel in self.job_snapshots:  # a job resumed into its old directory
            _STARTS[job_dir] = self.job_snapshots[rel]


def _snapshot(run_dir: Path, log_name: str) -> _Start:
    """What an existing run directory holds before a start writes into it: file sizes and times,
    and the bytes of the start files (.hydra/*, config_resolved.yaml) that the start rewrites."""
    start = _Start(created=False, log_name=log_name, files=_files(run_dir))
    start.had_hydra_dir = (run_dir / ".hydra").is_dir()
    for rel in start.start_files() - {log_name}:
        if (run_dir / rel).is_file():
            start.contents[rel] = (run_dir / rel).read_bytes()
    return start


def _refuse_fresh_start_over_checkpoints(config: DictConfig, run_dirs: list[Path]) -> None:
    """The check of :func:`genbench.checkpointing.resolve_ckpt_path` (same message, same SLURM
    requeue exception), run before Hydra writes anything. In a multirun the master config has no
    swept values: a swept ckpt_path is left to each job."""
    from genbench.checkpointing import resolve_ckpt_path

    swept = any(o.lstrip("+").split("=", 1)[0] == "ckpt_path" for o in config.hydra.overrides.task)
    if config.get("ckpt_path") is None and swept and OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
        return
    for run_dir in sorted(run_dirs):
        resolve_ckpt_path(config, run_dir)


def _remove_if_empty_at_exit(path: Path) -> None:
    """A directory claimed by a start that ends before anything was written into it (another
    callback refused the run) is removed when the process exits; rmdir never removes content."""

    def remove() -> None:
        with contextlib.suppress(OSError):
            path.rmdir()

    atexit.register(remove)


def _close_file_logs(run_dir: Path) -> None:
    """Stop logging into the run directory (Hydra's train.log) before it is taken back."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(logger, logging.Logger):
            continue
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(run_dir):
                logger.removeHandler(handler)
                handler.close()


def _take_back(run_dir: Path, start: _Start) -> bool:
    """Undo what the failed start wrote: remove a directory it made, or restore the start files
    of one it found. Only when nothing but start files changed; returns whether it did."""
    now = _files(run_dir)
    if start.created:
        if not set(now) <= start.start_files() | {CSV_HPARAMS}:
            return False
        _close_file_logs(run_dir)
        shutil.rmtree(run_dir)
        if start.sweep_dir and set(os.listdir(start.sweep_dir)) <= {"multirun.yaml"}:
            shutil.rmtree(start.sweep_dir)
        return True
    changed = {rel for rel in set(now) | set(start.files) if now.get(rel) != start.files.get(rel)}
    if not changed <= start.start_files():
        return False
    _close_file_logs(run_dir)
    for rel in changed:
        path = run_dir / rel
        if rel == start.log_name and rel in start.files:
            os.truncate(path, start.files[rel][0])  # Hydra appends to the log: cut what this start added
        elif rel in start.contents:
            path.write_bytes(start.contents[rel])
            os.utime(path, ns=(start.files[rel][1], start.files[rel][1]))
        else:
            path.unlink(missing_ok=True)
    if not start.had_hydra_dir:
        with contextlib.suppress(OSError):
            (run_dir / ".hydra").rmdir()
    return True


@contextmanager
def undo_failed_start(cfg: DictConfig) -> Iterator[None]:
    """Around genbench-train's job: when it fails with a GenbenchError (bad input) before training
    wrote anything, leave the disk as the start found it. A run directory this process made (and
    that holds nothing but .hydra/, train.log, config_resolved.yaml) is removed, so genbench-compare
    never lists an orphan; in a directory that existed (a resume) the files the start rewrote get
    their old bytes back. Anything else in the directory means training ran: then nothing is
    touched."""
    key = None
    with contextlib.suppress(Exception):  # no run directory known: nothing to undo
        key = os.path.abspath(str(cfg.paths.output_dir))
    try:
        yield
    except GenbenchError:
        start = _STARTS.get(key) if key else None
        if start is not None:
            try:
                if _take_back(Path(key), start):  # type: ignore[arg-type]
                    log.debug("Took back the run directory %s of a start that failed.", key)
            except OSError as e:
                log.warning("Could not clean up the run directory %s of a failed start: %s", key, e)
        raise
    finally:
        if key:
            _STARTS.pop(key, None)
