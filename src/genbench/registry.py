"""The families genbench knows: one :class:`FamilySpec` per family, declared beside its
LightningModule, and the one place generic code (train, evaluate, benchmark, report, compare, api,
schema, scripts) asks about families. Generic code never names a family.

Where families come from:

* genbench's own, declared in ``genbench/models/<family>.py`` and collected by ``genbench.models``;
* any installed package's, through the Python entry point group ``genbench.families``: an entry
  ``toy = "my_package.toy:SPEC"`` points at a :class:`FamilySpec` (or a function returning one).
  Its configs (``model/<name>.yaml``, optionally ``bench/<name>.yaml``) join Hydra's search path
  through the entry point group ``genbench.configs``, whose value is the package that holds the
  ``conf`` folder (``my_package = "my_package.conf"``, read by genbench's Hydra search-path plugin).

So a user's own package adds a family without editing genbench (README: "Add your own family").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

from genbench.errors import GenbenchError

if TYPE_CHECKING:  # the schema's Rule type, without importing the schema (and OmegaConf) here
    from genbench.schema import Rule

log = logging.getLogger("genbench.registry")

#: entry point group of families from other packages (value: a FamilySpec, or a callable giving one)
FAMILY_GROUP = "genbench.families"
#: entry point group of config packages joining Hydra's search path (value: a package, ``pkg.conf``)
CONFIG_GROUP = "genbench.configs"

#: what a model without a likelihood reports in place of bits/dim
IMPLICIT = "none (implicit model: no likelihood)"

#: network output types a sampler understands (see genbench.diffusion)
PREDICTIONS = ("eps", "x0", "v", "velocity")


@dataclass(frozen=True)
class FamilySpec:
    """Everything generic code needs to know about a family, declared once beside its module.

    Attributes:
        name: the config name (``model=<name>``), the checkpoint's family tag and the report's key.
        model: the LightningModule class, or its import path ``"package.module:Class"``.
        title: how tables and plots name it (e.g. ``"Toy (MLP)"``); default: the name in capitals.
        order: position in leaderboards, plots and sweeps (lower first).
        colour: its colour in every plot (a matplotlib colour).
        likelihood: ``None`` (implicit model), ``"bound"`` (an upper bound on NLL, e.g. ELBO/VLB) or
            ``"exact"``; ``likelihood_note`` is what the report shows when there is none.
        has_encoder: it maps images to latents (reconstruction grids).
        deterministic_sampler: the same latent always gives the same image (interpolation grids).
        conditional: it can be asked for a class.
        guidance: a conditional model of it takes ``sample(..., guidance=w)``: classifier-free
            guidance, guided = (1 + w) * conditional - w * unconditional (w = 0: purely
            conditional). The evaluation sweeps w for such a family (``metrics.conditional``).
        prediction: what its network predicts when it is a diffusion/flow model (``eps``, ``x0``,
            ``v``, ``velocity``), else None.
        samplers: ``sample()`` takes ``sampler=`` (a config of the ``sampler`` group).
        default_sampler: the name of the ``sampler`` config its model uses by default.
        tiny_overrides: Hydra overrides on ``model=<name>`` that make a few-millisecond CPU step
            (test suite, ``scripts/gpu_check.py --tiny``).
        schema_rules: config rules (``genbench.schema.Rule``) for this family's own keys.
        find_unused_parameters: DDP must look for parameters a backward pass did not reach.
        cpu_bf16_speedup: bf16-mixed / fp32 training speed of this family on a CPU with native bf16,
            as ``scripts/perf_precision.py`` measured it; ``trainer.precision=auto`` reads it there
            (None: never measured, so such a CPU trains the family in fp32).
        menu: the family's options a user chooses between, as ``(dotted config key, short label)``
            pairs (e.g. ``("model.r1_gamma", "R1 gamma")``): the benchmark report shows, per family,
            the value each run used (read from its resolved config), so a reader sees which options
            a preset turns on without reading YAML.
    """

    name: str
    model: type | str
    title: str = ""
    order: int = 100
    colour: str = "tab:gray"
    likelihood: str | None = None
    likelihood_note: str = IMPLICIT
    has_encoder: bool = False
    deterministic_sampler: bool = True
    conditional: bool = False
    guidance: bool = False
    prediction: str | None = None
    samplers: bool = False
    default_sampler: str | None = None
    tiny_overrides: tuple[str, ...] = ()
    schema_rules: tuple[Rule, ...] = field(default_factory=tuple)
    find_unused_parameters: bool = False
    cpu_bf16_speedup: float | None = None
    menu: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or not self.name[0].isalpha():
            raise GenbenchError(f"Family name {self.name!r}: use letters, digits and '_', starting with a letter.")
        if self.likelihood not in (None, "bound", "exact"):
            raise GenbenchError(f"Family {self.name}: likelihood={self.likelihood!r}, use None, 'bound' or 'exact'.")
        if self.prediction is not None and self.prediction not in PREDICTIONS:
            raise GenbenchError(f"Family {self.name}: prediction={self.prediction!r}, use one of {PREDICTIONS}.")
        if self.guidance and not self.conditional:
            raise GenbenchError(f"Family {self.name}: guidance=True needs conditional=True (guidance steers a class).")
        if not self.title:
            object.__setattr__(self, "title", self.name.upper())
        object.__setattr__(self, "tiny_overrides", tuple(self.tiny_overrides))
        object.__setattr__(self, "schema_rules", tuple(self.schema_rules))
        menu = tuple(tuple(entry) for entry in self.menu)
        for entry in menu:
            if len(entry) != 2 or not all(isinstance(part, str) and part for part in entry):
                raise GenbenchError(
                    f"Family {self.name}: menu entry {entry!r} must be a (dotted config key, label) pair, "
                    'e.g. ("model.r1_gamma", "R1 gamma").'
                )
        object.__setattr__(self, "menu", menu)

    @property
    def model_class(self) -> type:
        """The LightningModule class (imported on first use when given as a path)."""
        if isinstance(self.model, str):
            module, _, attr = self.model.partition(":")
            return getattr(import_module(module), attr)
        return self.model

    @property
    def target(self) -> str:
        """The ``_target_`` its model config instantiates."""
        if isinstance(self.model, str):
            return self.model.replace(":", ".")
        return f"{self.model.__module__}.{self.model.__qualname__}"


_REGISTRY: dict[str, FamilySpec] = {}
_loaded = False


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add ``spec`` to the registry (again with the same spec: no-op; another spec of the same
    name: an error, so two packages cannot silently fight over a name)."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec:
        raise GenbenchError(f"Two families are called '{spec.name}' ({old.target} and {spec.target}): rename one.")
    _REGISTRY[spec.name] = spec
    return spec


def _load() -> None:
    """Register genbench's own families, then every ``genbench.families`` entry point (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_module("genbench.models")  # genbench's own families register on import
    for ep in entry_points(group=FAMILY_GROUP):
        try:
            spec = ep.load()
            spec = spec() if callable(spec) and not isinstance(spec, FamilySpec) else spec
        except Exception as e:  # a broken plug-in must not take genbench down: say which and why
            log.warning("Family plug-in %s = %s could not be loaded (%s: %s); skipped.", ep.name, ep.value,
                        type(e).__name__, e)  # fmt: skip
            continue
        if not isinstance(spec, FamilySpec):
            log.warning("Family plug-in %s = %s is not a FamilySpec; skipped.", ep.name, ep.value)
            continue
        register_family(spec)


def families() -> dict[str, FamilySpec]:
    """Every known family, name -> spec, in display order."""
    _load()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def family_names() -> list[str]:
    """The known families' names in display order."""
    return list(families())


def get_family(name: str) -> FamilySpec:
    """The spec of family ``name``, or one line saying which families exist."""
    specs = families()
    if name not in specs:
        raise GenbenchError(
            f"Unknown family '{name}': genbench knows {', '.join(specs)}. A family from another package "
            f"registers through the '{FAMILY_GROUP}' entry point group (README: Add your own family)."
        )
    return specs[name]


def find_family(name: str | None) -> FamilySpec | None:
    """The spec of ``name``, or None (an unknown or missing name, e.g. a foreign run)."""
    return families().get(name) if name else None


def family_of_target(target: str) -> str | None:
    """The family whose model class a ``_target_`` names, or None. Both the class's own module
    and its package's re-export count (``my_package.models.toy.Toy`` and ``my_package.models.Toy``)."""
    module, _, cls = target.rpartition(".")
    for spec in families().values():
        own_module, _, own_cls = spec.target.rpartition(".")
        if cls == own_cls and module in (own_module, own_module.rpartition(".")[0]):
            return spec.name
    return None


def family_sort_key(name: str) -> tuple[int, str]:
    """Sort key putting families in display order (unknown names last, alphabetically)."""
    spec = find_family(name)
    return (spec.order if spec is not None else 10_000, name)


def family_colour(name: str) -> str:
    """The family's plot colour (grey for an unknown name)."""
    spec = find_family(name)
    return spec.colour if spec is not None else "tab:gray"


def family_rules() -> tuple[Rule, ...]:
    """Every family's own config rules, for the schema."""
    # families built on the same network share its rules: each rule once, in registration order
    return tuple(dict.fromkeys(rule for spec in families().values() for rule in spec.schema_rules))


def config_searchpath() -> list[str]:
    """``pkg://`` search-path entries of the config packages of installed plug-ins."""
    return [f"pkg://{ep.value.strip()}" for ep in entry_points(group=CONFIG_GROUP)]


def config_roots() -> list[Traversable]:
    """genbench's ``conf/`` followed by every plug-in's config package, as Hydra searches them."""
    from importlib.resources import files

    from genbench import CONFIG_DIR

    roots: list[Traversable] = [CONFIG_DIR]  # type: ignore[list-item]  # a Path is a Traversable
    for ep in entry_points(group=CONFIG_GROUP):
        try:
            roots.append(files(ep.value.strip()))
        except (ModuleNotFoundError, TypeError) as e:
            log.warning("Config package %s = %s cannot be read (%s); skipped.", ep.name, ep.value, e)
    return roots


def group_options(group: str) -> dict[str, Traversable]:
    """The configs of a config group (e.g. ``sampler``), name -> file, from genbench's ``conf/`` and
    every plug-in's (genbench's own win a clash, as on Hydra's search path). ``_``-prefixed files
    are parts of other configs, not options."""
    options: dict[str, Traversable] = {}
    for root in config_roots():
        folder = root.joinpath(*group.split("/"))
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            name = entry.name.removesuffix(".yaml")
            if entry.name.endswith(".yaml") and not name.startswith("_"):
                options.setdefault(name, entry)
    return dict(sorted(options.items()))


__all__ = [
    "CONFIG_GROUP",
    "FAMILY_GROUP",
    "IMPLICIT",
    "FamilySpec",
    "config_searchpath",
    "families",
    "family_colour",
    "family_names",
    "family_of_target",
    "family_rules",
    "family_sort_key",
    "find_family",
    "get_family",
    "group_options",
    "register_family",
]
