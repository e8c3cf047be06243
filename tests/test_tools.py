"""The families' own tools: VAE encode/reconstruct, latent interpolations, their grids in a run
directory, and resuming an interrupted sweep."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision.io import read_image

from conftest import QUIET, TINY, compose_train, run_cli, tiny
from genbench import PROJECT_ROOT, GenbenchError
from genbench.diffusion import AncestralSampler, DDIMSampler
from genbench.latents import (
    interpolate,
    interpolation_grid,
    interpolation_images,
    interpolation_latents,
    lerp,
    reconstruction_grid,
    slerp,
    write_latent_grids,
)
from genbench.train import train


def tiny_model(family: str):
    """An untrained tiny model whose weights are redrawn at gain 2: the default initialisation
    (DCGAN's std 0.02) gives images of ~1e-5, where a tolerance of 1e-6 would prove nothing."""
    model = instantiate(compose_train(["data=synthetic", *tiny(family)]).model).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(2 * torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    if family == "ddpm":
        model.ema.shadow.load_state_dict(model.net.state_dict())
    return model


def test_slerp_against_a_hand_computation_and_keeps_the_norm() -> None:
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    t = torch.tensor([0.0, 0.5, 1.0])
    mid = 2 * math.cos(math.pi / 4)  # a quarter turn, halfway: (2 cos 45°, 2 sin 45°)
    torch.testing.assert_close(slerp(a, b, t)[1], torch.tensor([mid, mid]))
    torch.testing.assert_close(lerp(a, b, t)[1], torch.tensor([1.0, 1.0]))  # norm 2/sqrt(2): the dip slerp avoids
    # Two equal-norm Gaussian draws (nearly orthogonal in 1024 dims): slerp keeps the norm all along,
    # the straight line sags to ~1/sqrt(2) of it in the middle.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
    y = y * (x.norm() / y.norm())
    path = interpolate(x, y, 9, "slerp")
    norms = path.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, x.norm().item()), rtol=1e-5, atol=0)
    assert interpolate(x, y, 9, "linear")[4].norm() < 0.75 * x.norm()
    assert torch.equal(path[0], x) and torch.equal(path[-1], y)  # the endpoints bit for bit
    with pytest.raises(GenbenchError, match="n_steps >= 2"):
        interpolate(x, y, 1)
    with pytest.raises(GenbenchError, match="slerp, linear"):
        interpolate(x, y, 3, "cubic")


@pytest.mark.parametrize("family", ["gan", "vae", "ddpm", "flow_matching"])
def test_interpolation_endpoints_are_the_samples_of_the_endpoint_latents(family: str) -> None:
    model = tiny_model(family)
    rows, steps = 2, 4
    z = interpolation_latents(model, rows, steps, torch.Generator().manual_seed(5))
    assert z.shape == (rows * steps, *model.latent_shape)
    # the start latents are exactly what sample() draws from the same generator, the ends the next draw
    g = torch.Generator().manual_seed(5)
    starts, ends = (
        model.randn(rows, *model.latent_shape, generator=g),
        model.randn(rows, *model.latent_shape, generator=g),
    )
    assert torch.equal(z[::steps], starts) and torch.equal(z[steps - 1 :: steps], ends)

    # the DDPM: x_T decoded by a 1-step DDIM with eta=0 (the same one draws its samples)
    kw = {"sampler": DDIMSampler(steps=1, eta=0.0)} if family == "ddpm" else {}
    images = interpolation_images(model, rows, steps, torch.Generator().manual_seed(5), **kw)
    assert images.shape == (rows * steps, *model.image_shape) and images.dtype == torch.float32
    # Images are compared only between batches of one shape, and then bit for bit: a batch of 8 and
    # one of 2 run different CPU kernels (blocking, vectorisation), whose float32 sums differ by a
    # CPU-dependent amount (measured up to 3e-6 for the VAE, 1e-4 for the DDPM's UNet), while the
    # same shapes run the same kernels. The endpoint latents are the sampled ones bit for bit (above)
    # and decoding is a function of each latent alone, so what is left to check is that the grid,
    # sample() and (DDPM) DDIM with eta=0 all decode a latent the same way.
    exact = {"atol": 0, "rtol": 0}
    torch.testing.assert_close(images, model.decode_latents(z, **kw), **exact)  # the grid decodes exactly z
    sampled = model.sample(rows, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(sampled, model.decode_latents(starts, **kw), **exact)  # sample() decodes the starts
    if family == "ddpm":  # decoding x_T is DDIM with eta=0 on the EMA network, here run by hand
        by_hand = DDIMSampler(model.schedule, steps=1)(model.ema.shadow, ends)
        torch.testing.assert_close(model.decode_latents(ends, **kw), by_hand, **exact)
    assert images.std() > 0.1 and (images[1] - images[0]).abs().max() > 0.05  # images, and a path that moves

    grid = interpolation_grid(model, rows, steps, torch.Generator().manual_seed(5), **kw)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 + rows * 34, 2 + steps * 34)
    first = ((images[0, 0].clamp(-1, 1) * 0.5 + 0.5) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    assert torch.equal(grid[0, 2:34, 2:34], first)  # the top-left cell is the first image


def test_ddpm_decodes_x_t_only_with_a_deterministic_sampler() -> None:
    model = tiny_model("ddpm")
    with pytest.raises(GenbenchError, match="sampler=ddim sampler.eta=0"):
        interpolation_grid(model, 1, 2, sampler=AncestralSampler())
    with pytest.raises(GenbenchError, match="eta=1"):
        interpolation_grid(model, 1, 2, sampler=DDIMSampler(steps=3, eta=1.0))


def test_vae_encode_contract_and_reconstruction_grid() -> None:
    model = tiny_model("vae")
    real = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    x = real.float() / 127.5 - 1
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, model.latent_dim)
    # eval mode: each image's code is its own (BatchNorm uses running statistics), whatever the other
    # images of the batch; compared within one batch shape, bit for bit (another batch size would
    # run other CPU kernels, with other float32 rounding)
    others = torch.cat([x[:2], -x[2:]])
    torch.testing.assert_close(model.encode(others)[0][:2], mu[:2], atol=0, rtol=0)
    torch.testing.assert_close(model.reconstruct(x), model.decode_mean(mu).clamp(-1, 1), atol=1e-6, rtol=0)
    with pytest.raises(GenbenchError, match=r"images shaped \(n, 1, 32, 32\)"):
        model.encode(torch.zeros(2, 3, 32, 32))
    grid = reconstruction_grid(model, real)
    assert grid.shape == (3, 2 + 2 * 34, 2 + 5 * 34) and grid.dtype == torch.uint8
    for i in range(5):  # the top row is the originals, exactly
        assert torch.equal(grid[0, 2:34, 2 + 34 * i : 34 + 34 * i], real[i, 0])
    with pytest.raises(GenbenchError, match="Reconstructions need an encoder: a gan has none"):
        reconstruction_grid(tiny_model("gan"), real)


def test_write_latent_grids_for_genbench_eval(tmp_path: Path) -> None:
    model = tiny_model("vae")
    real = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    paths = write_latent_grids(model, tmp_path, real=real, tag="step10", n_rows=3, n_steps=5, seed=1)
    assert {k: p.name for k, p in paths.items()} == {"interp": "interp_step10.png", "recon": "recon_step10.png"}
    assert torch.equal(
        read_image(str(paths["interp"])), interpolation_grid(model, 3, 5, torch.Generator().manual_seed(1))
    )
    assert read_image(str(paths["recon"])).shape == (3, 2 + 2 * 34, 2 + 8 * 34)


def test_training_writes_reconstruction_and_interpolation_grids(train_cfg, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = train_cfg(
        "model=vae",
        "logger=[csv,tensorboard]",
        "callbacks.sample_grid.reconstructions=3",
        "callbacks.sample_grid.interpolation_rows=2",
        "callbacks.sample_grid.interpolation_steps=5",
    )
    train(cfg)
    samples = tmp_path / "run" / "samples"
    recon = read_image(str(samples / "recon_final.png"))
    assert recon.shape == (3, 2 + 2 * 34, 2 + 3 * 34)
    assert torch.equal(read_image(str(samples / "recon_epoch000_step0000006.png")), recon)
    assert read_image(str(samples / "interp_final.png")).shape == (3, 2 + 2 * 34, 2 + 5 * 34)
    events = next((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent), size_guidance={"images": 0})
    acc.Reload()
    assert {"samples", "reconstructions", "interpolations"} <= set(acc.Tags()["images"])


def test_an_interrupted_sweep_resumes_with_the_same_command(tmp_path: Path) -> None:
    """The README's resumption: a 2-job sweep stopped by SIGTERM in its second job (batch 3), then
    the same command again: job 0 (finished) is skipped untouched, job 1 resumes and finishes."""
    sweep = tmp_path / "sweep"
    # seed=7 never reaches batch 7 (6 steps); seed=3 gets SIGTERM at batch 3: the sweep stops there
    command = [
        "-m",
        "model=vae",
        *QUIET,
        *TINY["vae"],
        "seed=7,3",
        "tags=[resume]",
        f"hydra.sweep.dir={sweep}",
        "ckpt_path=auto",
    ]
    stop = "+callbacks.stop={_target_: signal_helpers.SignalAt, batch: ${seed}, signal_name: SIGTERM}"
    env = {"PYTHONPATH": f"{PROJECT_ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    first = run_cli("genbench.train", *command, stop, env=env)
    assert first.returncode == 143, first.stderr[-3000:]
    done = (sweep / "0" / "metrics.json").read_bytes()
    assert json.loads(done)["global_step"] == 6
    assert not (sweep / "1" / "metrics.json").exists() and (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    ckpt0 = (sweep / "0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    second = run_cli("genbench.train", *command, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").read_bytes() == done  # skipped: nothing rewritten
    assert (sweep / "0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt0
    assert "finished training already" in (sweep / "0" / "train.log").read_text()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["global_step"] == 6
    steps = [line.split(",") for line in (sweep / "1" / "csv" / "metrics.csv").read_text().splitlines()]
    logged = [int(row[steps[0].index("step")]) for row in steps[1:] if row[steps[0].index("train/loss")]]
    assert logged == sorted(set(logged)) and len(logged) == 6  # every step once, across the interruption
