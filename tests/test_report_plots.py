"""The report's plots name their lines as the leaderboard names its rows.

A learning-rate sweep of one family is several models: drawn in one colour with one legend entry,
the user cannot tell which curve is which rate. These tests build runs by hand (no training) and
read the drawn figures back: one legend entry per row, a family's configurations in its colour but
each with its own line style or marker, and a benchmark of one configuration per family drawn as
it always was (family colours, solid lines, round markers, the family names as legend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from genbench.metrics.conditional import GUIDANCE
from genbench.registry import find_family
from genbench.report.build import write_report
from genbench.report.collect import RunResult
from genbench.report.leaderboard import group_runs, named_runs
from genbench.report.plots import (
    guidance_curves,
    metrics_during_training,
    quality_vs_cost,
    quality_vs_steps,
    row_styles,
)

LR = "model.optimizer.lr"


def _run(root: Path, family: str, seed: int, lr: float | None = None, **kw) -> RunResult:
    """A finished run of ``family`` at learning rate ``lr`` (None: the family's one configuration)
    with two evaluations during training, its FID falling from a value set by seed and rate."""
    run_dir = root / f"{family}-{lr}-{seed}"
    run_dir.mkdir(parents=True)
    overrides = [f"model={family}", f"seed={seed}"] + ([f"{LR}={lr}"] if lr is not None else [])
    fid = 50.0 + seed + (1000 * lr if lr else 0.0)
    history = [
        {"step": 10 * i, "train_seconds": 5.0 * i, "images_seen": 640 * i, "fid": fid / i, "inception_score": 1.0 + i}
        for i in (1, 2)
    ]
    return RunResult(
        run_dir=run_dir,
        family=family,
        seed=seed,
        status="ok",
        config={"seed": seed, "model": {"optimizer": {"lr": lr if lr is not None else 1e-3}}},
        overrides=overrides,
        train={"num_parameters": 1000},
        final={"fid": fid / 2, "num_samples": 100},
        history=history,
        **kw,
    )


def _colour(family: str) -> str:
    spec = find_family(family)
    assert spec is not None
    return spec.colour


def _legend(ax) -> dict[str, Line2D]:
    legend = ax.get_legend()
    return {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)}


def _look(line: Line2D) -> tuple[str, str, str]:
    return (str(line.get_color()), str(line.get_linestyle()), str(line.get_marker()))


def _sweep(root: Path) -> list[RunResult]:
    """A VAE at two learning rates x two seeds, and a GAN (one configuration, two seeds)."""
    runs = [_run(root, "vae", seed, lr) for lr in (0.01, 0.001) for seed in (0, 1)]
    return runs + [_run(root, "gan", seed) for seed in (0, 1)]


def test_a_sweeps_configurations_get_a_legend_entry_and_a_style_each(tmp_path: Path) -> None:
    runs = _sweep(tmp_path)
    groups = group_runs(runs)
    fig = Figure()
    path = metrics_during_training(named_runs(runs), tmp_path / "m.png", styles=row_styles(groups), fig=fig)
    assert path == tmp_path / "m.png" and path.is_file()
    slow, fast = f"vae ({LR}=0.001)", f"vae ({LR}=0.01)"
    legend = _legend(fig.axes[0])
    assert list(legend) == ["gan", slow, fast]  # the leaderboard's rows, in its order
    assert _look(legend["gan"])[0] == _colour("gan") != _colour("vae")
    assert _look(legend[slow])[0] == _look(legend[fast])[0] == _colour("vae")
    assert _look(legend[slow])[1:] != _look(legend[fast])[1:]  # line style or marker tells them apart
    assert _look(legend["gan"])[1:] == _look(legend[slow])[1:] == ("-", "o")  # a family's first: as before
    for ax in fig.axes:  # every panel: each row's seeds drawn in the row's style, nothing else
        looks = [_look(line) for line in ax.get_lines()]
        assert sorted(looks) == sorted(_look(h) for h in legend.values() for _ in range(2))


def test_a_benchmark_of_one_configuration_per_family_looks_as_before(tmp_path: Path) -> None:
    runs = [_run(tmp_path, family, seed) for family in ("gan", "vae") for seed in (0, 1)]
    assert named_runs(runs) == runs  # rows named by the family alone
    styled, plain = Figure(), Figure()
    metrics_during_training(runs, tmp_path / "a.png", styles=row_styles(group_runs(runs)), fig=styled)
    metrics_during_training(runs, tmp_path / "b.png", fig=plain)  # no styles: every name a family
    legend = _legend(styled.axes[0])
    assert list(legend) == ["gan", "vae"]
    assert {f: _look(h) for f, h in legend.items()} == {f: (_colour(f), "-", "o") for f in ("gan", "vae")}
    for a, b in zip(styled.axes, plain.axes, strict=True):
        assert [_look(line) for line in a.get_lines()] == [_look(line) for line in b.get_lines()]
    pixels = [np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png")]
    assert np.array_equal(*pixels)


def test_the_reports_plots_are_drawn_from_the_named_runs(tmp_path: Path) -> None:
    runs = _sweep(tmp_path / "runs")
    report = write_report(runs, tmp_path / "report")
    drawn = report["figures"]["Metrics against training time"]
    styled = metrics_during_training(
        named_runs(runs), tmp_path / "styled.png", styles=row_styles(group_runs(runs)), fig=Figure()
    )
    by_family = metrics_during_training(runs, tmp_path / "by_family.png", fig=Figure())
    image = {p: np.asarray(Image.open(p)) for p in (drawn, styled, by_family)}
    assert np.array_equal(image[drawn], image[styled])
    assert image[drawn].shape != image[by_family].shape or not np.array_equal(image[drawn], image[by_family])


def _sampling(fid: float) -> list[dict]:
    """Two DDIM samplers (the second recommended) and their FIDs."""
    return [
        {"sampler": "ddim-10", "nfe": 10, "images_per_second": 200.0, "metrics": {"eval/fid": fid + 5}},
        {
            "sampler": "ddim-20",
            "nfe": 20,
            "images_per_second": 100.0,
            "metrics": {"eval/fid": fid},
            "recommended": True,
        },
    ]


def test_sampler_plots_tell_configurations_apart(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "ddpm", 0, lr, sampling=_sampling(100 * lr)) for lr in (0.001, 0.01)]
    styles, named = row_styles(group_runs(runs)), named_runs(runs)
    slow, fast = f"ddpm ({LR}=0.001)", f"ddpm ({LR}=0.01)"

    steps = Figure()
    assert quality_vs_steps(named, tmp_path / "steps.png", styles=styles, fig=steps) is not None
    legend = _legend(steps.axes[0])
    assert list(legend) == [f"{slow} ddim", f"{fast} ddim"]
    looks = [_look(legend[f"{name} ddim"]) for name in (slow, fast)]
    assert looks[0][0] == looks[1][0] == _colour("ddpm") and looks[0][1:] != looks[1][1:]

    cost = Figure()
    assert quality_vs_cost(named, tmp_path / "cost.png", styles=styles, fig=cost) is not None
    legend = cost.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [slow, fast]
    scatters = cost.axes[0].collections
    assert len(scatters) == 4  # two samplers of each configuration
    shapes = {tuple(map(tuple, s.get_paths()[0].vertices.round(3))) for s in scatters}
    assert len(shapes) == 2  # one marker per configuration


def test_guidance_curves_keep_solid_and_dashed_and_mark_configurations(tmp_path: Path) -> None:
    def sweep(offset: float) -> dict:
        points = [
            {GUIDANCE: w, "fid": 30 - w + offset, "intra_fid": 40 - w + offset, "cond_accuracy": 0.5 + 0.1 * w}
            for w in (0.0, 1.0, 2.0)
        ]
        return {"fid": 30.0, GUIDANCE: points}

    runs = [_run(tmp_path, "ddpm", 0, lr) for lr in (0.001, 0.01)]
    for run, offset in zip(runs, (0.0, 5.0), strict=True):
        run.final.update(sweep(offset))
    fig = Figure()
    assert guidance_curves(named_runs(runs), tmp_path / "g.png", row_styles(group_runs(runs)), fig=fig) is not None
    fid_panel = fig.axes[0]
    assert [t.get_text() for t in fid_panel.get_legend().get_texts()] == [f"ddpm ({LR}=0.001)", f"ddpm ({LR}=0.01)"]
    looks = [_look(line) for line in fid_panel.get_lines()]
    # per configuration a solid FID and a dashed intra-class FID line, in one marker of its own
    assert [look[1] for look in looks] == ["-", "--", "-", "--"]
    assert {look[0] for look in looks} == {_colour("ddpm")}
    assert looks[0][2] == looks[1][2] != looks[2][2] == looks[3][2]
