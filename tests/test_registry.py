"""The family registry (genbench.registry) and the rule that generic code never names a family.

Generic modules ask the registry about families; only the families' own files (their
LightningModules, their networks, the diffusion machinery and the package that collects them) may
name one. A family's name in a generic module, even in a comment, is a sign that a new family would
need an edit there.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from genbench import schema
from genbench.errors import GenbenchError
from genbench.registry import (
    FamilySpec,
    families,
    family_of_target,
    family_sort_key,
    get_family,
    group_options,
    register_family,
)

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "genbench"
BUILTIN = ["gan", "vae", "ddpm", "flow_matching"]

#: a family's name as a whole word, any case, plurals and possessives included
FAMILY_WORD = re.compile(r"\b(gan|vae|ddpm|gans|vaes|ddpms|dcgan|flow_matching)('s)?\b", re.IGNORECASE)
#: the families' own files, relative to src/genbench (folders end in "/")
FAMILY_FILES = (
    "models/gan.py",
    "models/vae.py",
    "models/ddpm.py",
    "models/flow_matching.py",
    "models/__init__.py",
    "nets/",
    "diffusion/",
    "flow/",
)


def _is_family_file(rel: str) -> bool:
    return any(rel.startswith(own) if own.endswith("/") else rel == own for own in FAMILY_FILES)


def test_generic_modules_name_no_family() -> None:
    """Every module of src/genbench except the families' own files is free of family names,
    comments and docstrings included."""
    assert PACKAGE.is_dir(), PACKAGE
    offenders = []
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if _is_family_file(rel):
            continue
        checked += 1
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if FAMILY_WORD.search(line):
                offenders.append(f"src/genbench/{rel}:{number}: {line.strip()}")
    assert checked > 20, f"only {checked} generic modules found under {PACKAGE}"
    assert not offenders, "generic modules name a family (ask genbench.registry instead):\n" + "\n".join(offenders)


def test_the_family_word_pattern_matches_what_it_should() -> None:
    for text in ("the GAN's generator", "VAEs", "a DDPM", "DCGAN", "model=vae", "genbench.models.vae.VAE"):
        assert FAMILY_WORD.search(text), text
    for text in ("organ", "vae_recon", "ddpm_steps", "DDIM", "gantry"):
        assert not FAMILY_WORD.search(text), text


def test_builtin_families_come_in_display_order() -> None:
    names = list(families())
    assert set(BUILTIN) <= set(names)
    assert [n for n in names if n in BUILTIN] == BUILTIN
    orders = [spec.order for spec in families().values()]
    assert orders == sorted(orders)


def test_get_family_of_an_unknown_name_names_the_known_families() -> None:
    assert get_family("vae").name == "vae"
    with pytest.raises(GenbenchError, match="Unknown family 'nope'") as e:
        get_family("nope")
    for name in BUILTIN:
        assert name in str(e.value)


def test_a_second_spec_under_a_taken_name_is_refused() -> None:
    spec = get_family("vae")
    assert register_family(spec) is spec  # the same spec again: a no-op
    other = dataclasses.replace(spec, colour="tab:pink")
    with pytest.raises(GenbenchError, match="Two families are called 'vae'"):
        register_family(other)
    assert get_family("vae") is spec  # the registry kept the first one


def test_family_of_target_reads_the_module_and_its_package() -> None:
    assert family_of_target("genbench.models.VAE") == "vae"
    assert family_of_target("genbench.models.vae.VAE") == "vae"
    assert family_of_target(get_family("ddpm").target) == "ddpm"
    assert family_of_target("genbench.models.vae.Nope") is None
    assert family_of_target("somewhere.else.VAE") is None
    assert family_of_target("my_package.Thing") is None


def test_family_sort_key_puts_unknown_names_last() -> None:
    shuffled = ["zz_unknown", "ddpm", "aa_unknown", "gan", "vae"]
    assert sorted(shuffled, key=family_sort_key) == ["gan", "vae", "ddpm", "aa_unknown", "zz_unknown"]


def test_group_options_lists_the_samplers() -> None:
    samplers = group_options("sampler")
    assert {"ddim", "ancestral"} <= set(samplers)
    assert all(not name.startswith("_") for name in samplers)
    assert group_options("no_such_group") == {}


@pytest.mark.parametrize("name", ["1x", "a-b", "", "_x", "a b"])
def test_family_spec_refuses_a_bad_name(name: str) -> None:
    with pytest.raises(GenbenchError):
        FamilySpec(name=name, model="my_package.toy:Toy")


def test_family_spec_refuses_a_bad_likelihood_or_prediction() -> None:
    with pytest.raises(GenbenchError, match="likelihood"):
        FamilySpec(name="toy", model="my_package.toy:Toy", likelihood="approximate")
    with pytest.raises(GenbenchError, match="prediction"):
        FamilySpec(name="toy", model="my_package.toy:Toy", prediction="score")


def test_family_spec_defaults() -> None:
    spec = FamilySpec(name="my_toy2", model="my_package.toy:Toy", tiny_overrides=["a=1"])
    assert spec.title == "MY_TOY2"
    assert spec.target == "my_package.toy.Toy"
    assert spec.tiny_overrides == ("a=1",)
    assert spec.likelihood is None


def test_schema_includes_every_family_s_rules() -> None:
    rules = schema.all_rules()
    for spec in families().values():
        for rule in spec.schema_rules:
            assert rule in rules, (spec.name, rule.pattern)
    patterns = {rule.pattern for rule in rules}
    assert "model.schedule.timesteps" in patterns
    assert schema.rule_for("model.schedule.timesteps") is not None


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("genbench.models", "genbench.metrics"),  # the likelihood maths sit below both (distributions)
        ("genbench.cluster", "genbench.callbacks"),
        ("genbench.report.build", "genbench.callbacks"),
        ("genbench.registry", "genbench.report"),
    ],
)
def test_dependencies_point_one_way(module: str, forbidden: str) -> None:
    """Importing ``module`` in a fresh interpreter loads nothing of ``forbidden``."""
    import subprocess
    import sys

    code = f"import sys, {module}; print([m for m in sys.modules if m.startswith({forbidden!r})])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
