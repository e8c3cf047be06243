"""Preset tuning: the shared search setup and each family's search space, the validation-split
objective, scripts/tune_presets.py end to end (tiny: 2 trials, synthetic data) and the report's
"Preset chosen" / "Menu options" protocol lines."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import compose_train
from genbench import CONFIG_DIR, PROJECT_ROOT, GenbenchError
from genbench.registry import FamilySpec, families, get_family
from genbench.report.build import protocol
from genbench.report.collect import RunResult
from genbench.report.presets import BY_HAND, menu_text, preset_text

#: a tiny in-domain extractor (a few seconds to train): the tests need a real extractor, not a good one
TINY_EXTRACTOR = {"epochs": 1, "width": 8, "feature_dim": 16, "min_steps": 20}


def load_script() -> ModuleType:
    path = PROJECT_ROOT / "scripts" / "tune_presets.py"
    spec = importlib.util.spec_from_file_location("tune_presets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_search(family: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=benchmark/tiny",  # the budget's protocol, which the script adds
                f"model={family}",
                f"hparams_search=tune_{family}",
                *overrides,
            ],
            return_hydra_config=True,
        )


# --- the search configs --------------------------------------------------------------------------


def test_every_family_is_searched_alike_over_keys_of_its_own_config() -> None:
    """One search space per registered family, all with the shared setup (same trials, sampler and
    seed, FID against the validation split); every searched key is a key (or config group) of the
    family's config, and every menu key the report shows exists there too."""
    shared = None
    for family, spec in families().items():
        cfg = compose_search(family)
        sweeper = cfg.hydra.sweeper
        setup = (sweeper.n_trials, sweeper.n_jobs, sweeper.direction, OmegaConf.to_yaml(sweeper.sampler))
        shared = shared or setup
        assert setup == shared, family
        assert sweeper._target_.endswith("ResumableOptunaSweeper") and sweeper.study_name == f"tune_{family}"
        assert cfg.optimized_metric == "eval/fid"
        metrics = cfg.callbacks.evaluation.metrics
        assert metrics.split == "val" and not metrics.likelihood.enabled
        assert list(cfg.callbacks.budget.eval_at) == [1.0] and cfg.callbacks.sampling is None
        options = {}
        for key, space in sweeper.params.items():
            if "/" in key:  # a config group: each choice is one of its configs
                choices = str(space).removeprefix("choice(").removesuffix(")").split(",")
                for choice in (c.strip() for c in choices):
                    assert (CONFIG_DIR / key / f"{choice}.yaml").is_file(), (family, key, choice)
                    options[key] = choice
            else:
                assert OmegaConf.select(cfg, key, default="absent") != "absent", (family, key)
        # the menu: in the default config, or in the config with a searched group's other option
        configs = [cfg] + [compose_search(family, f"{k}={v}") for k, v in options.items()]
        for key, _label in spec.menu:
            assert any(OmegaConf.select(c, key, default="absent") != "absent" for c in configs), (family, key)


def test_a_menu_entry_must_be_a_key_and_a_label() -> None:
    with pytest.raises(GenbenchError, match="menu entry"):
        FamilySpec(name="toy", model="x:Y", menu=(("model.lr",),))
    assert FamilySpec(name="toy", model="x:Y", menu=[["model.lr", "lr"]]).menu == (("model.lr", "lr"),)


# --- the objective's split ---------------------------------------------------------------------


def test_evaluation_against_the_validation_split(tmp_path: Path) -> None:
    """metrics.split=val scores against the held-out validation images, with statistics cached
    apart from the test split's: the validation images score FID ~0 against themselves and clearly
    more against the test split."""
    from genbench.data.synthetic import SyntheticDataModule
    from genbench.metrics.evaluator import Evaluator

    dm = SyntheticDataModule(num_train=512, num_test=256, val_fraction=0.125)
    settings = {
        "extractor": "in-domain",
        "extractor_training": TINY_EXTRACTOR,
        "kid": False,
        "isc": False,
        "prc": False,
        "coverage": {"enabled": False},
        "memorisation": {"enabled": False},
    }
    val = Evaluator.for_datamodule(dm, {**settings, "split": "val"}, cache_dir=tmp_path, progress=False)
    test = Evaluator.for_datamodule(dm, {**settings, "split": "test"}, cache_dir=tmp_path, progress=False)
    assert torch.equal(val.real, dm.real_images("val")) and len(val.real) == 64  # 512 / 8 held out
    assert not set(map(tuple, val.real.flatten(1).tolist())) & set(
        map(tuple, dm.real_images("train").flatten(1).tolist())
    )
    assert val.real_key != test.real_key and "val" in val.real_key
    own = val.evaluate(dm.real_images("val"))
    assert own["real"] == "synthetic:val" and own["num_real"] == 64
    assert abs(own["fid"]) < 1e-3
    assert test.evaluate(dm.real_images("val"))["fid"] > 100 * max(abs(own["fid"]), 1e-3)
    # cached: a second evaluation against the validation split reads the same statistics
    assert val.evaluate(dm.real_images("val"))["fid"] == pytest.approx(own["fid"], abs=1e-9)


def test_a_search_on_the_test_split_is_refused(tmp_path: Path) -> None:
    script = load_script()
    bench = script.compose_config("benchmark", ["budget=tiny", "seeds=[0]"])
    with pytest.raises(GenbenchError, match="held-out split"):
        script.tune_family(
            "gan",
            bench,
            2,
            tmp_path,
            tmp_path,
            tmp_path,
            dry_run=True,
            extra=["callbacks.evaluation.metrics.split=test"],
        )


# --- the script, end to end ------------------------------------------------------------------------


def test_tiny_search_writes_its_record_and_the_best_preset(tmp_path: Path) -> None:
    """scripts/tune_presets.py --tiny: two GAN trials through the real sweeper; the record holds both
    trials as the study stored them, the best is their minimum, each trial was scored against the
    validation split, and tuned.yaml holds the best trial's values and the preset block the report reads."""
    import subprocess

    tuned_in_repo = CONFIG_DIR / "family_settings" / "gan" / "tuned.yaml"
    before = tuned_in_repo.read_bytes() if tuned_in_repo.is_file() else None
    out = tmp_path / "out"
    # the time check under the search's own budget: the same finalists trained again, with the same seed
    args = ["--families", "gan", "--tiny", "--check-budget", "tiny", "--log-dir", str(out), "--"]
    args += [f"++callbacks.evaluation.metrics.extractor_training.{k}={v}" for k, v in TINY_EXTRACTOR.items()]
    r = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "tune_presets.py"), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    record = json.loads((out / "tuning" / "tiny" / "results" / "gan.json").read_text())
    assert record["n_trials"] == 2 and record["budget"]["name"] == "tiny" and record["budget"]["max_images"] == 320
    assert record["objective"] == {
        "metric": "eval/fid",
        "direction": "minimize",
        "split": "val",
        "num_samples": 200,
        "extractor": "in-domain",
        "data": "synthetic",
    }
    assert set(record["search_space"]) == set(compose_search("gan").hydra.sweeper.params)
    trials = record["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0]["params"] != trials[1]["params"]
    # the first trial is the hand-set preset (enqueued), so the search never picks what it ranked below it
    assert [t["hand_set"] for t in trials] == [True, False]
    hand = compose_train(["model=gan"], tmp_path).model
    assert trials[0]["params"]["model.loss"] == hand.loss and trials[0]["params"]["model.r1_gamma"] == hand.r1_gamma
    assert trials[0]["params"]["model.optimizer_d.lr"] == hand.optimizer_d.lr
    values = [t["value"] for t in trials]
    assert all(math.isfinite(v) for v in values)
    assert record["best"]["value"] == min(values) and record["best"]["number"] == values.index(min(values))

    # each trial's own evaluation: against the validation split, and the value the study stored
    sweep = next(d for d in (out / "tuning" / "tiny" / "gan").iterdir() if not d.name.startswith("check_"))
    for number, value in enumerate(values):
        final = json.loads((sweep / str(number) / "eval" / "final.json").read_text())
        assert final["real"] == "synthetic:val" and final["num_samples"] == 200
        assert final["fid"] == pytest.approx(value, rel=1e-6)
        run_cfg = yaml.safe_load((sweep / str(number) / "config_resolved.yaml").read_text())
        assert "preset" not in run_cfg  # the search ran without any tuned preset
        assert run_cfg["seed"] == record["seed"] and record["fixed_by_command"] == []
        assert (
            run_cfg["model"]["discriminator"]["spectral_norm"]
            == trials[number]["params"]["model.discriminator.spectral_norm"]
        )

    # tuned.yaml: the best trial's values of every searched key, written where asked (not into conf/)
    preset = yaml.safe_load((out / "tuning" / "tiny" / "presets" / "gan" / "tuned.yaml").read_text())
    best = record["best"]["params"]
    model = preset["model"]
    assert model["r1_gamma"] == best["model.r1_gamma"] and model["loss"] == best["model.loss"]
    assert model["optimizer_d"]["lr"] == best["model.optimizer_d.lr"]
    assert model["discriminator"]["spectral_norm"] == best["model.discriminator.spectral_norm"]
    assert model["diffaugment"] == str(best["model.diffaugment"]).strip("'")
    assert preset["preset"]["trials"] == 2 and preset["preset"]["split"] == "val"
    assert preset["preset"]["best_value"] == record["best"]["value"]
    assert preset["preset"]["hand_set_value"] == values[0]

    # the time check: the best trial and the hand-set one trained again; under the same budget and seed
    # training is deterministic, so each scores what it scored in the search, and the best stays chosen
    check = record["time_check"]
    assert check["budget"]["name"] == "tiny" and check["study"]["name"] == "tune_gan_tiny_check_tiny"
    assert {f["search_trial"] for f in check["finalists"]} == {0, 1}
    for finalist in check["finalists"]:
        assert finalist["value"] == pytest.approx(values[finalist["search_trial"]], rel=1e-6)
        assert finalist["hand_set"] == (finalist["search_trial"] == 0)
    assert check["chosen"] == record["chosen"]["number"] == record["best"]["number"]
    check_sweep = next((out / "tuning" / "tiny" / "gan" / "check_tiny").iterdir())
    for finalist in check["finalists"]:  # each check run scored against the validation split too
        final = json.loads((check_sweep / str(finalist["check_trial"]) / "eval" / "final.json").read_text())
        assert final["real"] == "synthetic:val" and final["fid"] == pytest.approx(finalist["value"], rel=1e-6)
    assert preset["preset"]["check"]["chosen"] == check["chosen"]
    assert [f["value"] for f in preset["preset"]["check"]["finalists"]] == [f["value"] for f in check["finalists"]]
    text = preset_text(preset)
    names = ["hand-set" if f["hand_set"] else f"trial {f['search_trial']}" for f in check["finalists"]]
    scores = " vs ".join(f"{n} {f['value']:.3g}" for n, f in zip(names, check["finalists"], strict=True))
    assert f"finalists under budget tiny: {scores}, chosen trial {check['chosen']}" in text
    assert "2 trials" in text and "budget tiny (320 training images)" in text
    assert "eval/fid of 200 samples against the val split" in text
    assert (tuned_in_repo.read_bytes() if tuned_in_repo.is_file() else None) == before

    # the cpu preset applies the tuned.yaml it finds (here in a copy of the configs, in place of the
    # repository's own), and a search removes it
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "family_settings" / "gan" / "tuned.yaml").write_bytes(
        (out / "tuning" / "tiny" / "presets" / "gan" / "tuned.yaml").read_bytes()
    )
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        applied = compose("train", ["experiment=benchmark/cpu", "model=gan", "section=cpu_images"])
        removed = compose(
            "train", ["experiment=benchmark/cpu", "model=gan", "section=cpu_images", "~family_settings/gan"]
        )
    assert applied.model.r1_gamma == model["r1_gamma"] and applied.model.diffaugment == model["diffaugment"]
    assert applied.callbacks.budget.max_images == 43776  # the budget's image count is kept
    assert preset_text(OmegaConf.to_container(applied)) == text
    assert "preset" not in removed and removed.model.r1_gamma == 0.0  # the hand-set value


def test_the_time_check_trains_the_best_and_the_hand_set_trial_and_keeps_its_winner() -> None:
    """The finalists are the search's best trials and the hand-set one; the preset is the finalist
    that scores lowest under the check's budget, even when the search ranked it lower (a step the
    image budget did not charge for), and a failed finalist is never chosen."""
    script = load_script()
    rows = [
        {"number": 0, "value": 18.0, "hand_set": True},
        {"number": 1, "value": 16.6, "hand_set": False},
        {"number": 2, "value": None, "hand_set": False},
        {"number": 3, "value": 17.5, "hand_set": False},
    ]
    assert [r["number"] for r in script.finalists(rows, 1)] == [1, 0]
    assert [r["number"] for r in script.finalists(rows, 2)] == [1, 3, 0]
    assert [r["number"] for r in script.finalists(rows, 5)] == [1, 3, 0]  # the hand-set one once
    checked = [
        {"search_trial": 1, "hand_set": False, "search_value": 16.6, "value": 22.1},
        {"search_trial": 0, "hand_set": True, "search_value": 18.0, "value": 17.4},
        {"search_trial": 3, "hand_set": False, "search_value": 17.5, "value": None},
    ]
    assert script.choose(checked)["search_trial"] == 0
    with pytest.raises(GenbenchError, match="No finalist"):
        script.choose([{**c, "value": None} for c in checked])
    text = preset_text(
        {
            "preset": {
                "method": "Optuna TPESampler search (seed 1234)",
                "check": {
                    "budget": "cpu",
                    "seconds": 120,
                    "finalists": [
                        {"trial": 1, "hand_set": False, "value": 22.1},
                        {"trial": 0, "hand_set": True, "value": 17.4},
                    ],
                    "chosen": 0,
                },
            }
        }
    )
    assert text.endswith(
        "finalists under budget cpu (120 s): trial 1 22.1 vs hand-set 17.4, chosen the hand-set preset"
    )


# --- the report -----------------------------------------------------------------------------------


def test_the_protocol_says_how_each_preset_was_chosen_and_its_menu(tmp_path: Path) -> None:
    gan_cfg = {
        "preset": {
            "method": "Optuna TPESampler search (seed 1234)",
            "trials": 20,
            "complete": 19,
            "budget": "cpu_images",
            "budget_images": 43776,
            "objective": "eval/fid",
            "samples": 1000,
            "split": "val",
            "best_value": 41.23456,
            "hand_set_value": 44.5,
            "record": "docs/results/tuning/gan.json",
        },
        "model": {
            "loss": "hinge",
            "discriminator": {"spectral_norm": True},
            "r1_gamma": 0.1,
            "r1_every": 16,
            "diffaugment": "color,translation",
            "g_ema_decay": None,
            "optimizer_g": {"lr": 0.0001},
            "optimizer_d": {"lr": 0.0004},
            "conditional": False,
        },
    }
    vae_cfg = {"model": {"beta": 1.0, "decoder": {"_target_": "genbench.nets.conv_vae.ResidualDecoder", "blocks": 2}}}
    runs = [
        RunResult(run_dir=tmp_path / "g", family="gan", seed=0, status="ok", config=gan_cfg),
        RunResult(run_dir=tmp_path / "v", family="vae", seed=0, status="ok", config=vae_cfg),
        RunResult(run_dir=tmp_path / "t", family="toy", seed=0, status="ok", config={}),
    ]
    lines = dict(protocol(runs, [], {"environment": {}}, None))
    assert lines["Preset chosen"] == (
        "gan: Optuna TPESampler search (seed 1234), 20 trials (19 complete), budget cpu_images (43,776 training "
        "images), objective eval/fid of 1,000 samples against the val split, best 41.2, hand-set preset 44.5, record "
        f"docs/results/tuning/gan.json; vae: {BY_HAND}; toy: {BY_HAND}"
    )
    assert lines["Menu options"] == (
        "gan: loss hinge, spectral norm on, R1 gamma 0.1, R1 every 16, DiffAugment color,translation, G EMA off, "
        "lr G 0.0001, lr D 0.0004, conditional off; "
        "vae: beta 1, decoder ResidualDecoder, decoder blocks 2; toy: no menu declared"
    )
    # the labels come from the family's spec, in its order
    assert [label for _key, label in get_family("gan").menu][:3] == ["loss", "spectral norm", "R1 gamma"]
    assert menu_text("gan", {}) == "–"
