"""Training in-process through the real config + train() path, on the synthetic dataset."""

from __future__ import annotations

import copy
import csv
import hashlib
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict

from genbench import GenbenchError
from genbench.callbacks import FiniteLossGuard
from genbench.config import build
from genbench.data import SyntheticDataModule
from genbench.models import read_checkpoint
from genbench.registry import family_names, family_of_target
from genbench.train import train


def _train_losses(run: Path, key: str) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.mark.parametrize("family", family_names())
def test_each_family_trains_with_finite_losses(family: str, train_cfg, tmp_path: Path) -> None:
    metrics = train(train_cfg(f"model={family}"))
    run = tmp_path / "run"
    assert metrics["family"] == family
    losses = {k: v for k, v in metrics.items() if "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert (run / "checkpoints" / "last.ckpt").is_file()
    resolved = OmegaConf.load(run / "config_resolved.yaml")
    assert family_of_target(resolved.model._target_) == family  # the saved config rebuilds this family
    assert (run / "samples" / "final.png").is_file()
    assert (run / "metrics.json").is_file()
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["genbench"]["family"] == family
    assert ckpt["genbench"]["config"]["data"]["_target_"].endswith("SyntheticDataModule")


def test_same_seed_same_losses(train_cfg, tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(train_cfg("model=vae", f"seed={seed}", output_dir=tmp_path / name))
        runs.append(_train_losses(tmp_path / name, "train/loss"))
    assert len(runs[0]) >= 5
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_fast_dev_run_override(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("model=vae", "++trainer.fast_dev_run=true")
    metrics = train(cfg)
    assert metrics["global_step"] == 1


class _GANStepRecorder(pl.Callback):
    """Hooks each optimizer's step: records which network's weights moved at each step."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool, bool]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        opt_g, opt_d = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
        snap = {}

        def snapshot(*_):
            snap["g"] = [p.detach().clone() for p in pl_module.generator.parameters()]
            snap["d"] = [p.detach().clone() for p in pl_module.discriminator.parameters()]

        def changed(net: str, module) -> bool:
            return any(not torch.equal(a, b) for a, b in zip(snap[net], module.parameters(), strict=True))

        for name, opt in (("g", opt_g), ("d", opt_d)):
            opt.register_step_pre_hook(snapshot)
            opt.register_step_post_hook(
                lambda *_, name=name: self.events.append(
                    (name, changed("g", pl_module.generator), changed("d", pl_module.discriminator))
                )
            )
        assert {id(p) for p in opt_g.param_groups[0]["params"]} == {id(p) for p in pl_module.generator.parameters()}


def _fit_gan(cfg, probe: pl.Callback) -> pl.LightningModule:
    """Six optimiser steps of the configured GAN, watched by ``probe``."""
    model, dm = build(cfg.model, "model"), build(cfg.data, "data")
    trainer = pl.Trainer(
        max_steps=6,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[probe],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    return model


def _fit_gan_recording_steps(cfg) -> _GANStepRecorder:
    """Six optimiser steps of the configured GAN with every D/G step recorded."""
    recorder = _GANStepRecorder()
    _fit_gan(cfg, recorder)
    return recorder


def test_gan_step_updates_each_network_with_its_own_optimizer(train_cfg) -> None:
    cfg = train_cfg("model=gan")
    recorder = _fit_gan_recording_steps(cfg)
    assert [e[0] for e in recorder.events] == ["d", "g"] * 3  # one D then one G step per batch
    for net, g_moved, d_moved in recorder.events:
        if net == "d":
            assert d_moved and not g_moved  # the D step leaves the generator unchanged
        else:
            assert g_moved and not d_moved


class _DGradProbe(pl.Callback):
    """D's gradients right after D's step and right before G's step: G's backward must not touch them."""

    def __init__(self) -> None:
        self.touched: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        opt_g, opt_d = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
        saved: list[torch.Tensor | None] = []

        def after_d(*_) -> None:
            saved[:] = [None if p.grad is None else p.grad.clone() for p in pl_module.discriminator.parameters()]

        def before_g(*_) -> None:
            now = [p.grad for p in pl_module.discriminator.parameters()]
            self.touched.append(any(not torch.equal(a, b) for a, b in zip(saved, now, strict=True)))

        opt_d.register_step_post_hook(after_d)
        opt_g.register_step_pre_hook(before_g)


def test_gan_generator_step_computes_no_discriminator_gradients(train_cfg) -> None:
    probe = _DGradProbe()
    model = _fit_gan(train_cfg("model=gan"), probe)
    assert probe.touched == [False, False, False]  # three G steps, none wrote into D's .grad
    assert all(p.requires_grad for p in model.discriminator.parameters())  # D is trainable again after


def test_gan_d_steps_per_g_step(train_cfg) -> None:
    cfg = train_cfg("model=gan", "model.d_steps_per_g_step=2")
    recorder = _fit_gan_recording_steps(cfg)
    assert [e[0] for e in recorder.events] == ["d", "d", "g", "d", "d", "g"]


class ResumeProbe(pl.Callback):
    """Built by train() from the config (callbacks.probe); records the state training starts from."""

    last: ResumeProbe | None = None

    def __init__(self) -> None:
        ResumeProbe.last = self

    def on_train_start(self, trainer, pl_module) -> None:
        self.step = trainer.global_step
        self.optimizer_state = copy.deepcopy(trainer.optimizers[0].state_dict())  # live tensors change
        self.ema_updates = int(pl_module.ema.num_updates)


def test_resume_continues_at_saved_step_with_identical_optimizer_state(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("model=ddpm", output_dir=tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6
    first_ckpt = (hashlib.sha256(last.read_bytes()).hexdigest(), last.stat().st_mtime_ns)

    cfg = train_cfg(
        "model=ddpm", f"ckpt_path={last}", "trainer.max_steps=9", "trainer.max_epochs=3", output_dir=tmp_path / "second"
    )
    with open_dict(cfg):
        cfg.callbacks.probe = {"_target_": f"{__name__}.ResumeProbe"}
    metrics = train(cfg)
    probe = ResumeProbe.last
    assert probe is not None and probe.step == 6
    assert probe.ema_updates == 6  # the EMA weights came back too
    expected = saved["optimizer_states"][0]["state"]
    got = probe.optimizer_state["state"]
    assert expected.keys() == got.keys()
    for k in expected:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(got[k][name], expected[k][name], rtol=0, atol=0)
    assert metrics["global_step"] == 9
    # the first run's checkpoint is untouched: same bytes, never rewritten
    assert (hashlib.sha256(last.read_bytes()).hexdigest(), last.stat().st_mtime_ns) == first_ckpt
    torch.testing.assert_close(
        torch.load(last, weights_only=False)["state_dict"]["net.stem.weight"], saved["state_dict"]["net.stem.weight"]
    )


def test_existing_checkpoints_are_never_overwritten(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("model=vae")
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes(), last.stat().st_mtime_ns
    with pytest.raises(GenbenchError, match="already holds checkpoints"):
        train(train_cfg("model=vae"))
    assert (last.read_bytes(), last.stat().st_mtime_ns) == before  # not even rewritten with the same bytes
    # ckpt_path=auto resumes from that run's own last.ckpt instead
    metrics = train(train_cfg("model=vae", "ckpt_path=auto", "trainer.max_steps=8", "trainer.max_epochs=3"))
    assert metrics["global_step"] == 8


def test_resume_with_wrong_family_is_refused(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("model=vae", output_dir=tmp_path / "vae"))
    ckpt = tmp_path / "vae" / "checkpoints" / "last.ckpt"
    with pytest.raises(GenbenchError, match="'vae' checkpoint"):
        train(train_cfg("model=ddpm", f"ckpt_path={ckpt}", output_dir=tmp_path / "ddpm"))


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(train_cfg, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(GenbenchError, match="corrupt"):
        train(train_cfg("model=vae", f"ckpt_path={bad}"))
    assert bad.read_bytes() == b"PK\x03\x04 this is not a checkpoint"
    assert not (tmp_path / "run" / "checkpoints").exists()


def poison_loss_from_step(model: pl.LightningModule, step: int) -> None:
    """From global step ``step`` on, the training loss the model returns is NaN."""
    original_step = model.training_step

    def poisoned(batch, batch_idx):
        out = original_step(batch, batch_idx)
        if model.global_step >= step:
            out["loss"] = out["loss"] * float("nan")
        return out

    model.training_step = poisoned


def test_nan_loss_stops_training_and_keeps_earlier_checkpoints(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("model=vae")
    model, dm = build(cfg.model, "model"), SyntheticDataModule(num_train=256, batch_size=32)
    poison_loss_from_step(model, 5)
    ckpts = tmp_path / "ckpts"
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=ckpts, every_n_train_steps=2, save_top_k=-1, save_last=True)
    trainer = pl.Trainer(
        max_steps=20,
        limit_val_batches=0,
        logger=False,
        callbacks=[FiniteLossGuard(), checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(GenbenchError, match="Non-finite training loss at step 6"):
        trainer.fit(model, datamodule=dm)
    saved = sorted(p.name for p in ckpts.glob("*.ckpt"))
    assert saved == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 4


def _fit_with_resume(model: pl.LightningModule, ckpts: Path) -> None:
    from genbench.callbacks import ResumeCheckpoint, link_callbacks

    resume = ResumeCheckpoint(every_n_train_steps=2, every_n_minutes=None, handle_signals=False)
    trainer = pl.Trainer(
        max_steps=20,
        limit_val_batches=0,
        logger=False,
        default_root_dir=ckpts.parent,
        callbacks=link_callbacks([FiniteLossGuard(), resume]),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=SyntheticDataModule(num_train=256, batch_size=32))


def test_nan_loss_names_the_step_of_the_last_checkpoint_kept(train_cfg, tmp_path: Path) -> None:
    model = build(train_cfg("model=vae").model, "model")
    poison_loss_from_step(model, 5)
    with pytest.raises(GenbenchError, match=r"step 6: .*last\.ckpt of step 4 \(finite loss and weights\) is kept"):
        _fit_with_resume(model, tmp_path / "checkpoints")
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_non_finite_weights_never_replace_last_checkpoint(train_cfg, tmp_path: Path) -> None:
    # the Bernoulli likelihood keeps the loss finite for a step after one weight becomes inf (the
    # discretised logistic turns it into an inf loss at once, which the loss check catches first)
    model = build(train_cfg("model=vae", "model.likelihood=bernoulli").model, "model")

    class Break(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if trainer.global_step == 5:  # weights blow up while the loss was still finite
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(float("inf"))

    model.configure_callbacks = lambda: [Break()]
    with pytest.raises(GenbenchError, match=r"no longer finite at step 6: .*last\.ckpt of step 4 is kept"):
        _fit_with_resume(model, tmp_path / "checkpoints")
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 4


def test_diverged_but_finite_weights_never_become_last_checkpoint(train_cfg, tmp_path: Path) -> None:
    """Weights of magnitude 1e30 are finite, so they pass a finite check, but their loss is not: the
    save taken with them stays pending and is dropped, and last.ckpt keeps the last sane weights."""
    model = build(train_cfg("model=vae").model, "model")

    class Diverge(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if trainer.global_step == 6:  # right before the save due at step 6
                with torch.no_grad():
                    for p in pl_module.parameters():
                        p.fill_(1e30)

    model.configure_callbacks = lambda: [Diverge()]
    with pytest.raises(GenbenchError, match=r"Non-finite training loss at step 7: .*last\.ckpt of step 4 "):
        _fit_with_resume(model, tmp_path / "checkpoints")
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 4
    assert max(v.abs().max().item() for v in kept["state_dict"].values() if v.is_floating_point()) < 1e6
    assert not (tmp_path / "checkpoints" / ".last.ckpt.pending").exists()  # the diverged save was dropped


def test_wandb_goes_offline_without_credentials(train_cfg, tmp_path: Path, monkeypatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with an api.wandb.ai entry
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    import wandb

    from genbench.loggers import wandb_has_credentials

    wandb.teardown()  # W&B reads its settings once per process: from this environment
    assert not wandb_has_credentials()
    metrics = train(train_cfg("model=vae", "logger=[csv,wandb]"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B must write exactly one offline run"
    assert list(runs[0].glob("run-*.wandb"))  # the run's data file, ready for `wandb sync`
    assert metrics["global_step"] == 6
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    wandb.teardown()  # W&B reads its settings once per process
    assert wandb_has_credentials()


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_trains_on_real_fashion_mnist(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg("model=vae", "data=fashion_mnist", "data.limit_train=512", "data.batch_size=64")
    metrics = train(cfg)
    assert metrics["global_step"] == 6 and math.isfinite(metrics["val/loss"])
    # the checkpoint's stored config is fully resolved (no ${paths...} left) and rebuilds the model
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["genbench"]["config"]["data"]["root"].endswith("data/fashion_mnist")
    from genbench.models import load_model_from_checkpoint

    model = load_model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, model.sample(5, generator=torch.Generator().manual_seed(0)))


def test_tensorboard_logger_writes_events_and_sample_grids(train_cfg, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(train_cfg("model=vae", "logger=[csv,tensorboard]"))
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "val/loss" in acc.Tags()["scalars"]
    assert "samples" in acc.Tags()["images"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_cpu(precision: str, train_cfg) -> None:
    metrics = train(train_cfg("model=ddpm", f"trainer.precision={precision}"))
    assert metrics["global_step"] == 6 and math.isfinite(metrics["train/loss"])


def test_last_checkpoint_is_the_final_model_when_training_stops_mid_epoch(train_cfg, tmp_path: Path) -> None:
    # 14 batches per epoch, stopped after 5: no validation or epoch end has refreshed last.ckpt
    metrics = train(train_cfg("model=vae", "trainer.max_steps=5", "trainer.limit_train_batches=1.0"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert metrics["global_step"] == ckpt["global_step"] == 5


@pytest.mark.parametrize("precision,warned", [("bf16-mixed", True), ("16-mixed", True), ("32-true", False)])
def test_reduced_precision_on_cpu_is_warned_with_the_reason(precision: str, warned: bool) -> None:
    """On a CPU without native bf16 (tests/test_precision.py: with it, bf16 is not warned)."""
    from genbench.devices import CpuBf16, reduced_precision_warning

    emulated = CpuBf16(False, "none of amx_bf16 avx512_bf16 in /proc/cpuinfo")
    message = reduced_precision_warning(torch.device("cpu"), precision, cpu_bf16=emulated)
    assert (message is not None) == warned
    if warned:
        assert precision in message and "trainer.precision=32" in message
    assert reduced_precision_warning(torch.device("cuda"), precision) is None  # GPUs: what it is for
