"""Tune every family's benchmark preset the same way: one Optuna search per family, then its best
configuration becomes the family's preset.

    python scripts/tune_presets.py --families gan,vae --trials 20        # the real searches (docs/tuning.md)
    python scripts/tune_presets.py --families gan --tiny                  # the plumbing in a minute
    python scripts/tune_presets.py --families vae --dry-run               # print the commands only

Each family is searched in turn (never two at once: they would share the cores) by one
``genbench-train -m`` multirun: the benchmark's own training job of that family under ``--budget``
(``genbench.benchmark.training_command``: the budget's protocol experiment, the family's settings for
it, its image count), plus ``hparams_search=tune_<family>``: the shared setup
(``conf/hparams_search/_tune.yaml``: TPE sampler and seed, trial count, FID of the protocol's samples
against the VALIDATION split, one evaluation at the end of the budget) and the family's search space.
Every family therefore gets the same number of trials, the same sampler seed and its own benchmark
budget; the test split the benchmark reports on is never looked at (a search whose objective reads
the test split is refused).

The study is stored (``<log dir>/optuna/tune_<family>_<budget>.db``): a killed search re-run with the
same command runs only its missing trials. Afterwards this script writes, per family:

* ``docs/results/tuning/<family>.json``: the protocol (budget, objective, split, sampler), the search
  space, every trial (params, state, objective value) and the best one;
* ``conf/family_settings/<family>/tuned.yaml``: the best trial's values of the searched keys (a searched
  config group, e.g. ``model/decoder``, as its whole node) and a ``preset`` block saying how they were
  chosen. Every family's cpu preset (``family_settings/<family>/cpu.yaml``) applies it, so the cpu
  benchmarks use it, and the report's protocol reads the ``preset`` block from each run's config.

A search itself runs without the family's current tuned preset (``~family_settings/<family>``), so an
earlier search never leaks into a new one. ``--tiny``: budget=tiny (synthetic shapes, tiny networks),
2 trials, and results under ``<log dir>/tuning/tiny/`` instead of docs/ and conf/ (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from genbench import CONFIG_DIR, PROJECT_ROOT, GenbenchError
from genbench.config import register_resolvers

#: the real search's defaults: the image-count budget (the same models at any machine load) and
#: where its results go in the repository
BUDGET = "cpu_images"
#: the budget the search's finalists are trained again under before one becomes the preset: the
#: time budget the presets are benchmarked at, where an option that makes a step dearer costs images
CHECK_BUDGET = "cpu"
RESULTS_DIR = PROJECT_ROOT / "docs" / "results" / "tuning"
PRESETS_DIR = CONFIG_DIR / "family_settings"
TINY_TRIALS = 2
#: every trial's training seed: none of the benchmark's usual seeds (0, 1, 2), so a benchmark run is a
#: fresh training of the chosen preset, not the very run the search picked (whose FID was selected
#: partly on its luck)
SEED = 100
#: the searched metric's split must be one held out of training and not reported by the benchmark
FORBIDDEN_SPLITS = ("test", "train")


def compose_config(name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """conf/<name>.yaml composed with ``overrides`` (and its hydra node when ``hydra``)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra)


def search_command(
    bench: DictConfig,
    family: str,
    sweep_dir: Path,
    trials: int | None,
    log_dir: Path,
    extra: list[str] = (),
    study: str | None = None,
) -> list[str]:
    """The ``genbench-train -m`` multirun that searches ``family``'s preset: the benchmark's training
    job of the family under ``bench.budget``, the family's search (``hparams_search=tune_<family>``;
    ``trials`` replaces its trial count), its study (``study``, default named after the budget), and
    without the family's current tuned preset; ``extra``: more overrides of every trial (e.g.
    ``paths.cache_dir=...``)."""
    from genbench.benchmark import training_command

    cmd = training_command(bench, family, sweep_dir)
    cmd += [
        f"hparams_search=tune_{family}",
        f"hydra.sweeper.study_name={study or study_name(family, bench.budget.name)}",
        f"paths.log_dir={log_dir}",
        f"tags=[tuning,budget-{bench.budget.name}]",
        *([f"hydra.sweeper.n_trials={trials}"] if trials is not None else []),
        *extra,
    ]
    base = compose_config("train", train_overrides(cmd), hydra=True)
    if f"family_settings/{family}" in base.hydra.runtime.choices:  # the cpu presets include tuned.yaml
        cmd.append(f"~family_settings/{family}")
    return cmd


def train_overrides(cmd: list[str]) -> list[str]:
    """The Hydra overrides of a ``python -m genbench.train -m ...`` command."""
    assert cmd[1:4] == ["-m", "genbench.train", "-m"], cmd[:4]
    return cmd[4:]


def study_name(family: str, budget: str, check: str | None = None) -> str:
    """The stored study of ``family``'s search under ``budget`` (``check``: of its finalists' runs
    under that budget)."""
    return f"tune_{family}_{budget}" + (f"_check_{check}" if check else "")


def config_path(param: str) -> str:
    """The config node a searched parameter sets: ``model.r1_gamma`` itself, ``model/decoder`` (a
    config group) its node ``model.decoder``."""
    return param.lstrip("+~").replace("/", ".")


def best_settings(cmd: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """The searched keys' values in the config of the trial with ``params``, as nested YAML data;
    a searched config group gives its whole node, its references (``${..channels}``) kept."""
    trial = compose_config("train", [*train_overrides(cmd), *(f"{k}={v}" for k, v in params.items())])
    settings: dict[str, Any] = {}
    for param in params:
        path = config_path(param)
        value = OmegaConf.select(trial, path, throw_on_missing=False)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=False)
        node = settings
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return settings


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path.resolve())


def hand_set_params(cmd: list[str], cfg: DictConfig) -> tuple[dict[str, Any], list[str]]:
    """The family's hand-set preset as values of its searched parameters: each key's value in the
    search's own config (which runs without the tuned preset), a config group by its chosen option.
    Returns the values and the keys whose hand-set value the search space cannot express."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution

    space = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    distributions, _ = create_params_from_overrides([f"{k}={v}" for k, v in space.items()])
    params: dict[str, Any] = {}
    missing = []
    for name, dist in distributions.items():
        if "/" in name:  # a config group: its chosen option
            value = cfg.hydra.runtime.choices.get(name.lstrip("+~"))
        else:
            value = OmegaConf.select(cfg, config_path(name), throw_on_missing=False)
        if isinstance(dist, CategoricalDistribution):
            if value is None and 0.0 in dist.choices:  # null and 0 both mean "off" (an EMA, a penalty)
                value = 0.0
            ok = value in dist.choices
        else:
            ok = isinstance(value, (int, float)) and dist.low <= value <= dist.high
        if ok:
            params[name] = value
        else:
            missing.append(f"{name}={value!r}")
    return params, missing


def open_study(cfg: DictConfig) -> Any:
    """The search's stored study (created, as the sweeper creates it, when it is not there yet)."""
    import optuna

    from genbench.cluster.optuna_sweeper import ensure_rdb_storage

    storage = str(cfg.hydra.sweeper.storage)
    ensure_rdb_storage(storage)  # a fresh database, set up as the sweeper sets it up
    return optuna.create_study(
        study_name=str(cfg.hydra.sweeper.study_name),
        storage=storage,
        direction=str(cfg.hydra.sweeper.direction),
        load_if_exists=True,
    )


def _trial_params(trial: Any) -> dict[str, Any]:
    """A stored trial's values: its sampled ones, or an enqueued trial's fixed ones before it ran."""
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def enqueue(study: Any, params: dict[str, Any]) -> bool:
    """Make ``params`` the study's next trial, unless a trial with those values is already in it
    (run, or enqueued by a run that was killed); returns whether it was enqueued."""
    if any(_trial_params(t) == params for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(params)
    return True


def enqueue_hand_set(family: str, cmd: list[str], cfg: DictConfig) -> None:
    """Make the hand-set preset one of the search's trials, so that the chosen preset is never one
    the search ranked below the hand-set one: every family is searched from its own starting point,
    alike."""
    params, missing = hand_set_params(cmd, cfg)
    if missing:
        print(f"  the hand-set preset is not in the {family} search space ({', '.join(missing)}): not enqueued")
        return
    if enqueue(open_study(cfg), params):
        print(f"  the hand-set preset is enqueued as a trial: {params}", flush=True)


def run_search(family: str, cmd: list[str], sweep_dir: Path, root: Path) -> None:
    """Run the multirun, its output in ``<sweep dir>/launcher.log``; one line naming it on failure."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log_path = sweep_dir / "launcher.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.run(cmd, cwd=root, stdout=log_file, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise GenbenchError(f"The {family} search failed (exit {proc.returncode}): {tail[0]} Its log: {log_path}")


def check_objective(family: str, cfg: DictConfig) -> None:
    """Refuse a search (or check) whose objective is not the FID on a held-out split."""
    metrics = cfg.callbacks.evaluation.metrics
    if cfg.optimized_metric != "eval/fid" or metrics.split in FORBIDDEN_SPLITS:
        raise GenbenchError(
            f"The {family} search optimises {cfg.optimized_metric} on the {metrics.split} split: a preset must be "
            "chosen by eval/fid on a held-out split the benchmark does not report (metrics.split=val)."
        )


def trial_rows(study: Any, hand_set: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stored trial of ``study``: number, state, params, finite objective value, seconds, and
    whether it is the hand-set preset's trial."""
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        value = _finite(t.value) if t.state == optuna.trial.TrialState.COMPLETE else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": value,
                "seconds": seconds,
                "hand_set": t.params == hand_set,
            }
        )
    return rows


def finalists(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The search's ``count`` best finished trials, and the hand-set preset's trial when it is not
    among them: the configurations a time check trains again."""
    done = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"])
    picked = done[:count]
    picked += [r for r in done[count:] if r["hand_set"]]
    return picked


def choose(checked: list[dict[str, Any]]) -> dict[str, Any]:
    """The finalist with the lowest objective under the check's budget (ties: the search's better)."""
    done = [r for r in checked if r["value"] is not None]
    if not done:
        raise GenbenchError("No finalist of the time check finished with a finite FID; see its launcher.log.")
    return min(done, key=lambda r: (r["value"], r["search_value"]))


def time_check(
    family: str,
    rows: list[dict[str, Any]],
    search_budget: str,
    check_bench: DictConfig,
    count: int,
    log_dir: Path,
    extra: list[str] = (),
) -> dict[str, Any]:
    """Train the search's finalists (its ``count`` best trials and the hand-set preset) once more
    under ``check_bench``'s budget (a time budget: an option that makes a step dearer now costs
    images), with the search's seed and objective, as a stored study of enqueued trials through the
    same sweeper (a killed check re-run trains only its missing finalists). Returns the check's
    record: its budget, every finalist's search and check values, and the chosen search trial."""
    import optuna

    budget = str(check_bench.budget.name)
    picked = finalists(rows, count)
    sweep_dir = log_dir / "tuning" / search_budget / family / f"check_{budget}" / time.strftime("%Y-%m-%d_%H-%M-%S")
    name = study_name(family, search_budget, budget)
    cmd = search_command(check_bench, family, sweep_dir, None, log_dir, list(extra), study=name)
    cfg = compose_config("train", train_overrides(cmd), hydra=True)
    check_objective(family, cfg)
    study = open_study(cfg)
    for row in picked:
        enqueue(study, row["params"])
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    todo = [r for r in picked if not any(t.params == r["params"] for t in finished)]
    print(
        f"  time check under budget {budget}: {len(picked)} finalists "
        f"(search trials {', '.join(str(r['number']) for r in picked)}), {len(todo)} to train",
        flush=True,
    )
    if todo:
        cmd = [*cmd, f"hydra.sweeper.n_trials={len(finished) + len(todo)}"]  # the study's whole count
        print(f"  runs and log (launcher.log): {sweep_dir}", flush=True)
        run_search(family, cmd, sweep_dir, Path(check_bench.paths.root_dir))
    stored = trial_rows(optuna.load_study(study_name=name, storage=str(cfg.hydra.sweeper.storage)), {})
    checked = []
    for row in picked:
        run = next((t for t in stored if t["params"] == row["params"] and t["state"] == "COMPLETE"), None)
        checked.append(
            {
                "search_trial": row["number"],
                "hand_set": row["hand_set"],
                "search_value": row["value"],
                "check_trial": run["number"] if run else None,
                "value": run["value"] if run else None,
                "seconds": run["seconds"] if run else None,
            }
        )
    chosen = choose(checked)
    return {
        "budget": {
            "name": budget,
            "max_train_seconds": cfg.callbacks.budget.get("max_train_seconds"),
            "max_images": cfg.callbacks.budget.get("max_images"),
            "precision": str(cfg.trainer.precision),
            "description": " ".join(str(check_bench.budget.get("description", "")).split()),
        },
        "study": {"name": name, "storage": str(cfg.hydra.sweeper.storage)},
        "command": "genbench-train " + " ".join(train_overrides(cmd)),
        "finalists": checked,
        "chosen": chosen["search_trial"],
    }


def tune_family(
    family: str,
    bench: DictConfig,
    trials: int | None,
    log_dir: Path,
    results_dir: Path,
    presets_dir: Path,
    dry_run: bool = False,
    extra: list[str] = (),
    check_bench: DictConfig | None = None,
    check_count: int = 1,
) -> dict[str, Any] | None:
    """Search ``family``'s preset (then, with ``check_bench``, train its finalists again under that
    budget and keep the best of them there), write its record and its tuned preset; returns the record."""
    import optuna

    budget = str(bench.budget.name)
    sweep_dir = log_dir / "tuning" / budget / family / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = search_command(bench, family, sweep_dir, trials, log_dir, list(extra))
    cfg = compose_config("train", train_overrides(cmd), hydra=True)
    metrics = cfg.callbacks.evaluation.metrics
    check_objective(family, cfg)
    print(f"{family}: {cfg.hydra.sweeper.n_trials} trials, budget {budget}", flush=True)
    if dry_run:
        print("  " + " ".join(cmd[2:]))
        return None
    print(f"  runs and log (launcher.log): {sweep_dir}", flush=True)
    enqueue_hand_set(family, cmd, cfg)
    run_search(family, cmd, sweep_dir, Path(bench.paths.root_dir))
    storage = str(cfg.hydra.sweeper.storage)
    study = optuna.load_study(study_name=str(cfg.hydra.sweeper.study_name), storage=storage)
    hand_set, _ = hand_set_params(cmd, cfg)
    rows = trial_rows(study, hand_set)
    done = [r for r in rows if r["value"] is not None]
    if not done:
        raise GenbenchError(f"No trial of the {family} search finished with a finite FID; see {sweep_dir}.")
    best = min(done, key=lambda r: r["value"])
    check = None
    chosen = best
    if check_bench is not None:
        check = time_check(family, rows, budget, check_bench, check_count, log_dir, list(extra))
        chosen = next(r for r in rows if r["number"] == check["chosen"])
    best_entry = {**best, "settings": best_settings(cmd, best["params"])}
    sampler = OmegaConf.to_container(cfg.hydra.sweeper.sampler, resolve=True)
    space = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    record_path = results_dir / f"{family}.json"
    preset_path = presets_dir / family / "tuned.yaml"
    record = {
        "family": family,
        "method": f"Optuna {str(sampler['_target_']).rsplit('.', 1)[-1]}",
        "sampler": sampler,
        # the study's finished trials (more than asked for when an earlier run of the search asked for
        # more; a trial left RUNNING by a killed search is listed but not counted: it was run again)
        "n_trials": sum(r["state"] in ("COMPLETE", "FAIL", "PRUNED") for r in rows),
        "n_trials_requested": int(cfg.hydra.sweeper.n_trials),
        "budget": {
            "name": budget,
            "max_images": cfg.callbacks.budget.get("max_images"),
            "description": " ".join(str(bench.budget.get("description", "")).split()),
        },
        "objective": {
            "metric": str(cfg.optimized_metric),
            "direction": str(cfg.hydra.sweeper.direction),
            "split": str(metrics.split),
            "num_samples": int(cfg.callbacks.evaluation.num_samples),
            "extractor": str(metrics.extractor),
            "data": str(cfg.hydra.runtime.choices.data),
        },
        "seed": int(cfg.seed),
        "search_space": space,
        # searched keys the command fixes (e.g. a tiny network's latent size): not searched after all
        "fixed_by_command": sorted(set(space) & {o.split("=", 1)[0].lstrip("+~") for o in train_overrides(cmd)}),
        "study": {"name": study.study_name, "storage": storage},
        "command": "genbench-train " + " ".join(train_overrides(cmd)),
        "trials": rows,
        "best": best_entry,
        # the preset: the search's best, or with a time check the finalist that won it
        "time_check": check,
        "chosen": best_entry if chosen is best else {**chosen, "settings": best_settings(cmd, chosen["params"])},
        "preset_file": _relative(preset_path),
        # the trials' own wall time, summed (this run of the script may have run none of them)
        "trial_seconds": round(sum(r["seconds"] or 0.0 for r in rows), 1),
        "check_seconds": round(sum(r["seconds"] or 0.0 for r in check["finalists"]), 1) if check else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    record_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_preset(preset_path, record, _relative(record_path))
    print(f"{family}: best {best['value']:.4g} (trial {best['number']}); wrote {record_path} and {preset_path}")
    if check:
        print(f"{family}: under budget {check['budget']['name']} the preset is search trial {chosen['number']}")
    return record


def write_preset(path: Path, record: dict[str, Any], record_name: str) -> None:
    """``tuned.yaml``: the chosen settings and the ``preset`` block the report reads."""
    objective = record["objective"]
    chosen = record.get("chosen") or record["best"]
    check = record.get("time_check")
    preset = {
        "method": f"{record['method']} search (seed {record['sampler'].get('seed')})",
        "trials": record["n_trials"],
        "complete": sum(r["value"] is not None for r in record["trials"]),
        "budget": record["budget"]["name"],
        "budget_images": record["budget"]["max_images"],
        "objective": objective["metric"],
        "samples": objective["num_samples"],
        "split": objective["split"],
        "best_value": record["best"]["value"],
        # the hand-set preset's own trial (None when the search space could not express it)
        "hand_set_value": next((r["value"] for r in record["trials"] if r.get("hand_set")), None),
        "record": record_name,
    }
    if check:
        preset["check"] = {
            "budget": check["budget"]["name"],
            "seconds": check["budget"]["max_train_seconds"],
            "precision": check["budget"]["precision"],
            "finalists": [
                {"trial": r["search_trial"], "hand_set": r["hand_set"], "value": r["value"]} for r in check["finalists"]
            ],
            "chosen": check["chosen"],
        }
    search = (
        f"{record['n_trials']} trials of an {record['method']} search under budget {record['budget']['name']},\n"
        f"# by {objective['metric']} of {objective['num_samples']} samples against the {objective['split']} split"
    )
    if check:
        what = (
            f"of {search},\n# the finalist (its best or the hand-set preset) that scored lowest when trained again\n"
            f"# under budget {check['budget']['name']}: search trial {chosen['number']}"
            + (", the hand-set preset" if chosen.get("hand_set") else "")
        )
    else:
        what = f"the best of {search}"
    header = (
        "# @package _global_\n"
        f"# {record['family']}'s tuned preset: {what}\n"
        f"# (the record: {record_name}). Written by scripts/tune_presets.py on {record['written']}; the\n"
        f"# family's cpu preset applies it. Delete this file to go back to the hand-set preset.\n"
    )
    body = yaml.safe_dump({"preset": preset, **chosen["settings"]}, sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=None, help="comma-separated (default: every registered family)")
    p.add_argument("--trials", type=int, default=None, help=f"per family (default 20; {TINY_TRIALS} with --tiny)")
    p.add_argument(
        "--budget", default=None, help=f"the benchmark budget tuned for (default {BUDGET}; tiny with --tiny)"
    )
    p.add_argument("--seed", type=int, default=SEED, help=f"the training seed of every trial (default {SEED})")
    p.add_argument("--tiny", action="store_true", help="synthetic data, tiny networks, 2 trials: the plumbing only")
    p.add_argument("--log-dir", type=Path, default=None, help="runs and studies (default: paths.log_dir, outputs/)")
    p.add_argument("--results-dir", type=Path, default=None, help=f"<family>.json (default {_relative(RESULTS_DIR)})")
    p.add_argument(
        "--presets-dir", type=Path, default=None, help=f"<family>/tuned.yaml (default {_relative(PRESETS_DIR)})"
    )
    p.add_argument(
        "--check-budget",
        default=None,
        help=f"train the search's finalists again under this budget and keep its winner (default {CHECK_BUDGET}; "
        "none with --tiny; 'none' to skip)",
    )
    p.add_argument(
        "--finalists", type=int, default=1, help="the search's best trials the check trains, beside the hand-set one"
    )
    p.add_argument("--dry-run", action="store_true", help="print each family's command; run nothing")
    p.add_argument("overrides", nargs="*", help="after --: genbench-train overrides of every trial")
    args = p.parse_args(argv)

    budget = args.budget or ("tiny" if args.tiny else BUDGET)
    bench = compose_config("benchmark", [f"budget={budget}", f"seeds=[{args.seed}]"])
    from genbench.registry import get_family

    families = args.families.split(",") if args.families else list(bench.families)
    for family in families:
        get_family(family)  # an unknown name: one line listing the known ones
        if not (CONFIG_DIR / "hparams_search" / f"tune_{family}.yaml").is_file():
            raise GenbenchError(
                f"No search space for {family}: write conf/hparams_search/tune_{family}.yaml: 'defaults: [_tune, _self_]' and its hydra.sweeper.params."
            )
    log_dir = (args.log_dir or Path(bench.paths.log_dir)).resolve()
    tiny_dir = log_dir / "tuning" / "tiny"
    results_dir = args.results_dir or (tiny_dir / "results" if args.tiny else RESULTS_DIR)
    presets_dir = args.presets_dir or (tiny_dir / "presets" if args.tiny else PRESETS_DIR)
    trials = (
        args.trials if args.trials is not None else (TINY_TRIALS if args.tiny else None)
    )  # None: the search config's n_trials
    if trials is not None and trials < 1:
        raise GenbenchError(f"--trials {trials}: a search needs at least 1 trial.")
    check = args.check_budget or ("none" if args.tiny else CHECK_BUDGET)
    check_bench = None if check == "none" else compose_config("benchmark", [f"budget={check}", f"seeds=[{args.seed}]"])
    if args.finalists < 1:
        raise GenbenchError(f"--finalists {args.finalists}: the check needs at least the search's best trial.")
    for family in families:
        tune_family(
            family,
            bench,
            trials,
            log_dir,
            results_dir.resolve(),
            presets_dir.resolve(),
            args.dry_run,
            args.overrides,
            check_bench,
            args.finalists,
        )


if __name__ == "__main__":
    import logging

    from genbench.errors import user_errors

    # the error line is printed once by user_errors; the trials' own output is in their launcher.log
    logging.getLogger("genbench").addHandler(logging.NullHandler())
    with user_errors():
        main()
