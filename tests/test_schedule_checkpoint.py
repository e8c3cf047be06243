"""A DDPM checkpoint records its noise schedule, and loading it under another one fails clearly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from genbench import GenbenchError
from genbench.models import DDPM


@pytest.fixture
def make_ddpm(train_cfg: Callable[..., DictConfig]) -> Callable[..., DDPM]:
    """A tiny DDPM built from conf/model/ddpm.yaml exactly as genbench-train builds it."""

    def make(*overrides: str) -> DDPM:
        return instantiate(train_cfg("model=ddpm", *overrides).model)

    return make


def _saved(model: DDPM) -> dict:
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    return checkpoint


def test_checkpoint_records_schedule(make_ddpm: Callable[..., DDPM]) -> None:
    checkpoint = _saved(make_ddpm())
    assert checkpoint["genbench"]["family"] == "ddpm"  # the base class's record is still written
    assert checkpoint["genbench_schedule"] == {"kind": "linear", "timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02}


@pytest.mark.parametrize(
    ("override", "now"),
    [
        ("model.schedule.kind=cosine", "cosine T=100"),
        ("model.schedule.timesteps=200", "linear T=200, betas 0.0001..0.02"),
        ("model.schedule.beta_end=0.01", "linear T=100, betas 0.0001..0.01"),
    ],
)
def test_loading_under_another_schedule_fails(make_ddpm: Callable[..., DDPM], override: str, now: str) -> None:
    checkpoint = _saved(make_ddpm())
    with pytest.raises(GenbenchError) as info:
        make_ddpm(override).on_load_checkpoint(checkpoint)
    message = str(info.value)
    assert "\n" not in message
    assert "linear T=100, betas 0.0001..0.02" in message and now in message
    assert (
        "resume with model.schedule.kind=linear model.schedule.timesteps=100 "
        "model.schedule.beta_start=0.0001 model.schedule.beta_end=0.02" in message
    )
    assert "start a new run" in message


def test_same_schedule_loads_silently(make_ddpm: Callable[..., DDPM]) -> None:
    make_ddpm().on_load_checkpoint(_saved(make_ddpm()))
    # a cosine schedule is not defined by the beta range, so an unused beta_end does not matter
    cosine = _saved(make_ddpm("model.schedule.kind=cosine"))
    make_ddpm("model.schedule.kind=cosine", "model.schedule.beta_end=0.01").on_load_checkpoint(cosine)


def test_checkpoint_without_schedule_still_loads(make_ddpm: Callable[..., DDPM]) -> None:
    # written before schedules were recorded: nothing to compare, so nothing is refused
    checkpoint = _saved(make_ddpm())
    del checkpoint["genbench_schedule"]
    make_ddpm("model.schedule.kind=cosine").on_load_checkpoint(checkpoint)
