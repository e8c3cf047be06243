"""The types and ranges of the config values users commonly set, checked when the config is composed.

A mistyped override (``model.net.base_channels=abc``, ``trainer.max_steps=abc``,
``data.batch_size=0``) used to travel into torch or Lightning and come back as an error that names
neither the key nor the expected type (``empty(): argument 'size' must be tuple of ints``, ``'<' not
supported between instances of 'str' and 'int'``, a DataLoader traceback). :func:`validate_config`
checks the composed config against :data:`RULES` before anything is built, so the user gets one
line with the key, the value, what it should be and an example fix.

The table is declarative: one :class:`Rule` per key pattern (``fnmatch``, where ``*`` also spans
dots), the first matching rule wins. Keys no rule matches are left alone: unknown keys and the
values of the rarer options are the job of the code that consumes them. A key whose value is a
plain reference to another key (``channels: ${data.channels}``) is skipped, so one bad value is
reported once, where the user set it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genbench.config import register_resolvers
from genbench.devices import AUTO_PRECISION
from genbench.errors import GenbenchError

#: ``${a.b}`` / ``${..c}``: a reference to another key (checked there), not a resolver call
_REFERENCE = re.compile(r"^\$\{[\w.\-]+\}$")

#: what ``pytorch_lightning.Trainer(precision=...)`` accepts (lightning_fabric's _PRECISION_INPUT, 2.x)
LIGHTNING_PRECISIONS: tuple[int | str, ...] = (
    64, 32, 16, "64", "32", "16", "bf16",
    "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip

LIGHTNING_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")

#: numpy (hence Lightning's seed_everything) accepts seeds in [0, 2**32 - 1]
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Spec:
    """What a value must be: ``accepts(value)`` and the words for it (``expected``)."""

    accepts: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class Rule:
    """A key pattern, the :class:`Spec` its values must meet, and an example value for the fix."""

    pattern: str
    spec: Spec
    example: str


# --- value kinds ---------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int to Python, not to a user


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bound_words(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _within(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def _or_null(spec: Spec, null: bool) -> Spec:
    if not null:
        return spec
    return Spec(lambda v: v is None or spec.accepts(v), f"{spec.expected} or null")


def integer(lo: int | None = None, hi: int | None = None, *, null: bool = False, also: Sequence[int] = ()) -> Spec:
    """An int (not a bool, not a float such as 4.0) in [lo, hi], or one of ``also`` (e.g. -1)."""
    words = f"an integer{_bound_words(lo, hi, False, False)}"
    if also:
        words = f"{' or '.join(map(str, also))} or {words}"
    spec = Spec(lambda v: _is_int(v) and (v in also or _within(v, lo, hi, False, False)), words)
    return _or_null(spec, null)


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    null: bool = False,
) -> Spec:
    """A finite int or float in the given (half-)open range."""
    words = f"a number{_bound_words(lo, hi, lo_open, hi_open)}"
    return _or_null(Spec(lambda v: _is_number(v) and _within(v, lo, hi, lo_open, hi_open), words), null)


def choice(*values: Any, null: bool = False) -> Spec:
    """One of ``values`` (compared with their types: 1 is not '1' unless both are listed)."""
    shown = list(dict.fromkeys(map(str, values)))  # 16 and '16' both mean "16" to the reader
    words = f"one of {', '.join(shown)}" if len(shown) > 1 else shown[0]

    def accepts(v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in values)

    return _or_null(Spec(accepts, words), null)


def boolean(null: bool = False) -> Spec:
    return _or_null(Spec(lambda v: isinstance(v, bool), "true or false"), null)


def int_list(lo: int, *, empty: bool = False) -> Spec:
    """A list of ints >= lo (non-empty unless ``empty``)."""
    words = f"a {'' if empty else 'non-empty '}list of integers >= {lo}"
    return Spec(
        lambda v: isinstance(v, list) and (empty or len(v) > 0) and all(_is_int(x) and x >= lo for x in v), words
    )


def any_of(*specs: Spec, words: str | None = None) -> Spec:
    """Any of ``specs``; ``words`` replaces the joined descriptions where they read badly."""
    return Spec(lambda v: any(s.accepts(v) for s in specs), words or " or ".join(s.expected for s in specs))


def string(pattern: str, words: str) -> Spec:
    return Spec(lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None, words)


#: trainer.devices: N >= 1, -1 (all), "auto", a list of device indices or "0,1"
DEVICES = any_of(
    integer(1, also=(-1,)),
    choice("auto"),
    int_list(0),
    string(r"-1|\d+(,\d+)*,?", "a string of device indices such as '0,1'"),
    words="a device count >= 1, -1 (all), auto, or device indices such as [0,1]",
)
#: train batches: a count, or a fraction of the epoch (0 would train nothing)
LIMIT_TRAIN = any_of(integer(1), number(0, 1, lo_open=True))
#: val/test batches: 0 (or 0.0) switches that loop off
LIMIT_EVAL = any_of(integer(0), number(0, 1))
#: trainer.max_time: Lightning's "DD:HH:MM:SS", a {days, hours, ...} mapping, or null (no limit)
MAX_TIME = _or_null(
    any_of(
        string(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", "a DD:HH:MM:SS string"), Spec(lambda v: isinstance(v, dict), "a dict")
    ),
    True,
)

# --- the table -----------------------------------------------------------------------------------

#: every checked key; the first rule whose pattern matches a key applies (specific before generic)
RULES: tuple[Rule, ...] = (
    # top level (genbench-train and genbench-eval)
    Rule("seed", integer(0, MAX_SEED), "42"),
    Rule("print_config", boolean(), "false"),
    Rule("fail_soft", boolean(), "true"),
    Rule("device", choice("auto", "cpu", "cuda"), "auto"),
    # data
    Rule("data.batch_size", integer(1), "32"),
    Rule("data.num_workers", integer(0), "0"),
    Rule("data.image_size", integer(8), "32"),
    Rule("data.channels", choice(1, 3), "1"),
    Rule("data.val_fraction", number(0, 1, hi_open=True), "0.1"),
    Rule("data.test_fraction", number(0, 1, hi_open=True), "0.1"),
    Rule("data.limit_train", integer(1, null=True), "1000"),
    Rule("data.num_classes", integer(2, null=True), "10"),
    Rule("model.conditional", boolean(), "true"),
    Rule("data.num_train", integer(1), "512"),
    Rule("data.num_test", integer(1), "256"),
    Rule("data.seed", integer(0, MAX_SEED), "0"),
    Rule("data.split_seed", integer(0, MAX_SEED), "1234"),
    Rule("data.download", boolean(), "true"),
    Rule("data.pin_memory", boolean(), "true"),
    # trainer
    Rule("trainer.max_steps", integer(1, also=(-1,)), "1000"),
    Rule("trainer.max_epochs", integer(1, also=(-1,), null=True), "10"),
    Rule("trainer.min_steps", integer(0, null=True), "100"),
    Rule("trainer.min_epochs", integer(0, null=True), "1"),
    Rule("trainer.max_time", MAX_TIME, "00:01:00:00"),
    Rule("trainer.limit_train_batches", LIMIT_TRAIN, "1.0"),
    Rule("trainer.limit_*_batches", LIMIT_EVAL, "1.0"),
    Rule("trainer.overfit_batches", LIMIT_EVAL, "1"),
    Rule("trainer.devices", DEVICES, "1"),
    Rule("trainer.num_nodes", integer(1), "1"),
    Rule("trainer.accelerator", choice(*LIGHTNING_ACCELERATORS), "cpu"),
    # auto: genbench chooses per device and family (genbench.devices.choose_precision)
    Rule("trainer.precision", choice(AUTO_PRECISION, *LIGHTNING_PRECISIONS), "auto"),
    Rule("trainer.log_every_n_steps", integer(1), "50"),
    Rule("trainer.check_val_every_n_epoch", integer(1, null=True), "1"),
    Rule("trainer.val_check_interval", _or_null(LIMIT_TRAIN, True), "1.0"),
    Rule("trainer.accumulate_grad_batches", integer(1), "1"),
    Rule("trainer.gradient_clip_val", number(0, null=True), "1.0"),
    Rule("trainer.fast_dev_run", any_of(boolean(), integer(0)), "true"),
    Rule("trainer.deterministic", any_of(boolean(null=True), choice("warn")), "true"),
    # model: what every family's config has (each family adds rules for its own keys: FamilySpec.schema_rules)
    Rule("model.*width", integer(1), "32"),
    Rule("model.channels", choice(1, 3), "1"),
    Rule("model.*.channels", choice(1, 3), "1"),
    Rule("model.image_size", integer(8), "32"),
    Rule("model.*.image_size", integer(8), "32"),
    # model: objectives and training
    Rule("model.optimizer*.lr", number(0, lo_open=True), "2.0e-4"),
    Rule("model.optimizer*.weight_decay", number(0), "0.0"),
    Rule("model.sample_batch_size", integer(1), "256"),
    # samplers: the model's own, genbench-eval's sampler=..., the evaluation callback's
    Rule("*sampler.steps", integer(1), "50"),
    Rule("*sampler.eta", number(0), "0.0"),
    Rule("*sampler.variance", choice("beta_tilde", "beta"), "beta_tilde"),
    # callbacks
    Rule("callbacks.resume.every_n_train_steps", integer(1, null=True), "500"),
    Rule("callbacks.resume.every_n_minutes", number(0, lo_open=True, null=True), "5.0"),
    Rule("callbacks.resume.handle_signals", boolean(), "true"),
    Rule("callbacks.model_checkpoint.save_top_k", integer(-1), "1"),
    Rule("callbacks.model_checkpoint.mode", choice("min", "max"), "min"),
    Rule("callbacks.sample_grid.num_samples", integer(1), "64"),
    Rule("callbacks.sample_grid.every_n_epochs", integer(1), "1"),
    Rule("callbacks.finite_guard.every_n_steps", integer(1), "1"),
    Rule("callbacks.evaluation.num_samples", integer(2), "1000"),
    Rule("callbacks.evaluation.every_n_epochs", integer(1, null=True), "1"),
    Rule("callbacks.evaluation.every_n_train_steps", integer(1, null=True), "1000"),
    Rule("callbacks.evaluation.seed", integer(0, MAX_SEED), "1234"),
    # metrics: genbench-eval's metrics group and the evaluation callback's metrics
    Rule("*metrics.num_samples", integer(2), "2000"),
    Rule("*metrics.extractor", choice("auto", "in-domain", "inception-v3-compat"), "in-domain"),
    Rule("*metrics.split", choice("train", "val", "test"), "test"),
    Rule("*metrics.kid_subsets", integer(1), "100"),
    Rule("*metrics.kid_subset_size", integer(2, null=True), "1000"),
    Rule("*metrics.isc_splits", integer(1), "10"),
    Rule("*metrics.prc_neighborhood", integer(1), "3"),
    Rule("*metrics.batch_size", integer(1), "256"),
    Rule("*metrics.rng_seed", integer(0, MAX_SEED), "2020"),
    Rule("*metrics.device", choice("auto", "cpu", "cuda"), "auto"),
    Rule("*metrics.fid", boolean(), "true"),
    Rule("*metrics.kid", boolean(), "true"),
    Rule("*metrics.isc", boolean(), "true"),
    Rule("*metrics.prc", boolean(), "true"),
    Rule("*metrics.cache", boolean(), "true"),
    Rule("*metrics.train_extractor", boolean(), "true"),
)


def all_rules() -> tuple[Rule, ...]:
    """:data:`RULES` (keys every config has) followed by every registered family's own rules."""
    from genbench.registry import family_rules

    return RULES + family_rules()


#: the keys of the UNet (genbench.nets.unet) under ``model.net``: every family built on it lists these
#: in its ``FamilySpec.schema_rules``
UNET_RULES: tuple[Rule, ...] = (
    Rule("model.net.base_channels", integer(1), "32"),
    Rule("model.net.channel_mults", int_list(1), "[1,2,2]"),
    Rule("model.net.num_res_blocks", integer(1), "1"),
    Rule("model.net.attn_resolutions", int_list(1, empty=True), "[8]"),
    Rule("model.net.dropout", number(0, 1, hi_open=True), "0.1"),
)


def rule_for(key: str, rules: Sequence[Rule] | None = None) -> Rule | None:
    """The first rule whose pattern matches the dotted ``key`` (None: the key is not checked)."""
    return next((r for r in (all_rules() if rules is None else rules) if fnmatch.fnmatchcase(key, r.pattern)), None)


# --- checking ------------------------------------------------------------------------------------


class _Unresolvable:
    """A value whose interpolation failed (the message says why)."""

    def __init__(self, error: Exception) -> None:
        self.reason = (str(error).strip().splitlines() or [type(error).__name__])[0]


def _is_reference(node: DictConfig, key: Any) -> bool:
    if not OmegaConf.is_interpolation(node, key):
        return False
    return bool(_REFERENCE.match(str(node._get_node(key)._value())))  # type: ignore[union-attr]


def _entries(node: DictConfig, rules: Sequence[Rule], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, resolved plain value) of every key a rule matches, in config order."""
    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key) or _is_reference(node, key):
            continue
        matched = rule_for(path, rules) is not None
        try:
            value = node[key]
            if matched and isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as e:  # resolver failure: reported only for checked keys
            if matched:
                yield path, _Unresolvable(e)
            continue
        if matched:
            yield path, value
        elif isinstance(value, DictConfig):
            yield from _entries(value, rules, f"{path}.")


def _show(value: Any) -> str:
    """The value as the user would type it, with its type where it is the problem (a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, str) else str(value)
    text = text if len(text) <= 60 else f"{text[:57]}..."
    return f"{text} (a string)" if isinstance(value, str) else text


def problems(cfg: DictConfig, rules: Sequence[Rule] | None = None) -> list[str]:
    """One phrase per bad value of ``cfg`` (empty: all checked values are fine)."""
    rules = all_rules() if rules is None else rules
    register_resolvers()  # a config composed outside an entry point still resolves ${gpu_precision:} etc.
    found = []
    for key, value in _entries(cfg, rules):
        rule = rule_for(key, rules)
        assert rule is not None
        if isinstance(value, _Unresolvable):
            found.append(f"{key} cannot be resolved ({value.reason}): set e.g. {key}={rule.example}")
        elif not rule.spec.accepts(value):
            found.append(f"{key}={_show(value)} is not {rule.spec.expected}: set e.g. {key}={rule.example}")
    return found


def validate_config(cfg: DictConfig, rules: Sequence[Rule] | None = None) -> None:
    """Refuse a composed config with a mistyped or out-of-range value, before anything is built.

    Raises :class:`GenbenchError` with every bad value in one line (key, value, expected type and
    an example fix), so a typo costs one run of the command instead of a torch traceback.
    """
    found = problems(cfg, rules)
    if found:
        what = "Bad config value" if len(found) == 1 else f"{len(found)} bad config values"
        raise GenbenchError(f"{what}: {'; '.join(found)}.")


__all__ = ["RULES", "UNET_RULES", "Rule", "all_rules", "Spec", "problems", "rule_for", "validate_config"]
