"""From a composed Hydra config to live objects: the custom resolvers, instantiation with clear
errors, and the config tree every run prints.

The resolvers are registered when this module is imported; every entry point imports it before
Hydra composes, so ``${gpu_precision:}`` or ``${genbench_slurm_tasks:...}`` always resolve.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from genbench.cluster.resources import slurm_cpus_per_task, slurm_gpus_per_node, slurm_tasks_per_node
from genbench.devices import gpu_precision
from genbench.errors import GenbenchError

#: name -> function of every OmegaConf resolver genbench's configs use
RESOLVERS = {
    # paths.root_dir when $GENBENCH_ROOT is unset: the current directory. An installed package has no
    # project root to write into; the README's commands run from the repository root, so repo users
    # see no change (outputs/, data/ under the checkout).
    "genbench_root": os.getcwd,
    "gpu_precision": gpu_precision,
    "genbench_slurm_tasks": slurm_tasks_per_node,
    "genbench_slurm_gpus": slurm_gpus_per_node,
    "genbench_slurm_cpus": slurm_cpus_per_task,
    # --help (conf/hydra/default.yaml): the command's name and the config groups it uses
    "genbench_command": lambda config_name: command_name(config_name),
    "genbench_help_groups": lambda config_name: help_groups(config_name),
    # genbench-benchmark's default families: every registered one, in display order
    "genbench_families": lambda: _family_names(),
    # a network's class count: ${genbench_classes:${..conditional},${..num_classes}} is the model's
    # num_classes when it is conditional and null otherwise (the network then has no class input)
    "genbench_classes": lambda conditional, num_classes: num_classes if conditional else None,
}


def _family_names() -> ListConfig:
    from genbench.registry import family_names

    return ListConfig(family_names())  # a plain list would fail in --cfg job --resolve


#: groups a command uses that are not in its config's defaults list (Hydra's launcher of a sweep)
EXTRA_HELP_GROUPS = {"train": ("hydra/launcher",)}


def command_name(config_name: str) -> str:
    """The console script of a primary config: train_extractor -> genbench-train-extractor."""
    return "genbench-" + str(config_name).replace("_", "-")


def help_groups(config_name: str) -> str:
    """``--help``'s list of config groups: only those in the command's own defaults list (plus
    :data:`EXTRA_HELP_GROUPS`), each with its options. Hydra's ``$APP_CONFIG_GROUPS`` lists every
    folder under conf/, so genbench-train showed budget/metrics/sampler that it never reads."""
    import yaml

    from genbench import CONFIG_DIR

    primary = yaml.safe_load((CONFIG_DIR / f"{config_name}.yaml").read_text()) or {}
    groups = []
    for entry in primary.get("defaults") or []:
        if isinstance(entry, dict):
            group = str(next(iter(entry))).split(" ")[-1].lstrip("/")
            if group != "hydra" and not group.startswith("hydra/"):
                groups.append(group)
    groups += EXTRA_HELP_GROUPS.get(str(config_name), ())
    from genbench.registry import group_options

    lines = []
    for group in groups:
        options = list(group_options(group))  # plug-ins' configs too
        if group == "hydra/launcher":
            options = ["basic (default)", *options]
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """Register :data:`RESOLVERS` (idempotent: a second import or a test session is harmless)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def _root_cause(e: BaseException) -> BaseException:
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def build(cfg: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces genbench's own error messages unwrapped and
    names the config group for anything else (a typo in a ``_target_``, a bad argument)."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = _root_cause(e)
        if isinstance(cause, GenbenchError):
            raise cause from None
        raise GenbenchError(f"Cannot build the {what} from its config: {cause}") from e


def _yaml(value: DictConfig) -> str:
    """A config section as YAML, resolved where it can be: a config composed outside
    ``@hydra.main`` (``genbench.api.compose``) has no run directory until training claims one, so
    the paths derived from it are shown as written (``${paths.output_dir}/checkpoints``)."""
    try:
        return OmegaConf.to_yaml(value, resolve=True)
    except InterpolationResolutionError:
        return OmegaConf.to_yaml(value)


def print_config_tree(
    cfg: DictConfig, order: tuple[str, ...] = ("data", "model", "trainer", "callbacks", "logger", "paths")
) -> None:
    """Print the composed config as a rich tree, one branch per group, so every run shows what it ran."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), guide_style="dim")
        value = cfg[key]
        text = _yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
