"""The report: one results path (the training callback's and genbench-eval's records merged, the
newest of the final model winning), the missing-metric hints, the HTML rendered from data by
jinja2 (escaping, styling by status), number formatting, readable grids and plain plot axes.

The end-to-end test is the failure of issue #10.2 reproduced: a run trained without evaluation,
evaluated afterwards with genbench-eval, then compared."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import QUIET, TINY, run_cli
from genbench.report.build import eval_command, missing_metric_hints, write_report
from genbench.report.build import protocol as build_protocol
from genbench.report.collect import CALLBACK_SOURCE, EVAL_SOURCE, RunResult, load_run, merge_evaluations
from genbench.report.figures import readable_factor, upscale
from genbench.report.floor import floor_protocol
from genbench.report.leaderboard import format_value
from genbench.report.plots import tidy_axis

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# --- reading both evaluation paths ----------------------------------------------------------------


def _write_run(
    run: Path,
    callback: list[dict] | None = None,
    cli: list[dict] | None = None,
    callback_mtime: float | None = None,
) -> Path:
    """A finished run directory as genbench-train, its evaluation callback and genbench-eval leave
    it (the same file names and layouts, see genbench.rundir and genbench.evaluate.append_result)."""
    (run / "eval").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "config_resolved.yaml").write_text(
        yaml.safe_dump({"seed": 0, "data": {"_target_": "genbench.data.SyntheticDataModule", "image_size": 32}})
    )
    (run / "metrics.json").write_text(json.dumps({"family": "vae", "num_parameters": 1234}))
    if callback:
        (run / "eval" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in callback))
        (run / "eval" / "final.json").write_text(json.dumps({**callback[-1], "final": True}))
        if callback_mtime is not None:
            for name in ("metrics.jsonl", "final.json"):
                os.utime(run / "eval" / name, (callback_mtime, callback_mtime))
    if cli:
        (run / "checkpoints" / "metrics.json").write_text(json.dumps({"latest": cli[-1], "history": cli}))
    return run


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds))


def test_the_newest_evaluation_of_the_final_model_is_the_result(tmp_path: Path) -> None:
    now = time.time()
    callback = [{"step": 10, "fid": 50.0}, {"step": 20, "fid": 40.0}]
    later = [{"global_step": 20, "fid": 30.0, "evaluated_at": _stamp(now), "ckpt": "last.ckpt"}]
    run = load_run(_write_run(tmp_path / "a", callback, later, callback_mtime=now - 3600))
    assert run.final["fid"] == 30.0 and run.final_source == EVAL_SOURCE
    assert run.describe_source() == "genbench-eval (checkpoints/metrics.json)"
    # one history, by step, each record saying who wrote it
    assert [(h["step"], h["source"]) for h in run.history] == [(10, "callback"), (20, "callback"), (20, EVAL_SOURCE)]

    # the callback's final evaluation written after genbench-eval's: the callback's wins
    earlier = [{**later[0], "evaluated_at": _stamp(now - 3600)}]
    run = load_run(_write_run(tmp_path / "b", callback, earlier, callback_mtime=now))
    assert run.final["fid"] == 40.0 and run.final_source == CALLBACK_SOURCE

    # a later genbench-eval of an *earlier* checkpoint (step 10) does not replace the final model's result
    early_ckpt = [{"global_step": 10, "fid": 5.0, "evaluated_at": _stamp(now), "ckpt": "epoch000-step10.ckpt"}]
    run = load_run(_write_run(tmp_path / "c", callback, early_ckpt, callback_mtime=now - 3600))
    assert run.final["fid"] == 40.0 and run.final_source == CALLBACK_SOURCE

    # genbench-eval only (training evaluated nothing): its newest record
    two = [{**later[0], "fid": 33.0, "evaluated_at": _stamp(now - 60)}, later[0]]
    run = load_run(_write_run(tmp_path / "d", None, two))
    assert run.final["fid"] == 30.0 and run.final_source == EVAL_SOURCE

    # neither: no final result, no source
    run = load_run(_write_run(tmp_path / "e"))
    assert run.final == {} and run.final_source is None and run.history == []


def test_merge_ignores_failed_evaluations() -> None:
    history, final, source = merge_evaluations([], None, None, [{"error": "boom", "global_step": 5}])
    assert (history, final, source) == ([], {}, None)


# --- hints and the floor's protocol ---------------------------------------------------------------


def _result(run_dir: Path, family: str = "vae", final: dict | None = None, **kw) -> RunResult:
    defaults = {"seed": 0, "status": "ok", "config": {}, "train": {"num_parameters": 1000}}
    return RunResult(run_dir=run_dir, family=family, final=final or {}, **{**defaults, **kw})


def test_a_missing_metric_names_the_command_that_computes_it(tmp_path: Path) -> None:
    unevaluated = _result(tmp_path / "vae_run")
    (tmp_path / "vae_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "vae_run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    gan = _result(tmp_path / "gan_run", "gan", {"fid": 3.0, "likelihood": "none (implicit model: no likelihood)"})
    hints = missing_metric_hints([unevaluated, gan], ["fid", "bpd"])
    # the GAN states it has no likelihood: no hint for its bpd; the unevaluated VAE gets its command
    assert len(hints) == 1
    assert hints[0]["command"] == f"genbench-eval ckpt_path={tmp_path / 'vae_run' / 'checkpoints' / 'last.ckpt'}"
    assert "never evaluated" in hints[0]["text"] and "vae" in hints[0]["text"]
    # a partly evaluated run: the missing names are listed
    partial = _result(tmp_path / "vae_run", final={"fid": 1.0})
    assert "no bpd" in missing_metric_hints([partial], ["fid", "bpd"])[0]["text"]
    assert eval_command(partial) == hints[0]["command"]


def test_the_floor_protocol_comes_from_any_evaluated_run(tmp_path: Path) -> None:
    data = {"_target_": "genbench.data.SyntheticDataModule"}
    # two cached extractors (trained with other settings): the floor must use the runs' one
    cache = tmp_path / "cache"
    for name, content in (("synthetic_32px_1ch-aaaa", b"other weights"), ("synthetic_32px_1ch-bbbb", b"the runs'")):
        (cache / "extractors" / name).mkdir(parents=True)
        (cache / "extractors" / name / "extractor.pt").write_bytes(content)
    used = cache / "extractors" / "synthetic_32px_1ch-bbbb" / "extractor.pt"
    # evaluated by genbench-eval only (no evaluation callback in the config)
    final = {"num_samples": 200, "extractor": "in-domain:synthetic_32px_1ch", "real": "synthetic:test"}
    final["extractor_weights_sha256"] = hashlib.sha256(b"the runs'").hexdigest()[:16]
    run = _result(tmp_path, config={"data": data, "paths": {"cache_dir": str(cache)}}, final=final)
    protocol, why = floor_protocol([run])
    assert why is None and protocol.data == data and protocol.cache_dir == str(cache)
    assert protocol.metrics == {
        "num_samples": 200,
        "extractor": "in-domain",
        "split": "test",
        "extractor_path": str(used),
    }
    # never evaluated: no protocol, and the reason names the command
    protocol, why = floor_protocol([_result(tmp_path, config={"data": data})])
    assert protocol is None and f"genbench-eval ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}" in why


# --- the HTML -------------------------------------------------------------------------------------


class _Rows(HTMLParser):
    """The rows of the report's tables: (class attribute, [cell texts])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_escapes_cells_and_styles_rows_by_status(tmp_path: Path) -> None:
    final = {"fid": 12.345, "kid_mean": 201.36, "is_mean": 1.0000004, "precision": 0.5, "recall": 0.25}
    runs = [
        _result(tmp_path / "a", "vae|<script>alert(1)</script>", final),
        _result(tmp_path / "b", "failed-ideas", final),  # a successful family whose *name* says failed
        _result(tmp_path / "c", "gan", status="failed", error="ValueError: bad | value <b>"),
    ]
    report = write_report(runs, tmp_path / "out", title="t <i>")
    html = report["paths"]["html"].read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>" not in html and "<i>" not in html
    parser = _Rows()
    parser.feed(html)
    rows: dict[str, tuple[str, list[str]]] = {}
    for cls, cells in parser.rows:  # the first table's rows (the leaderboard)
        rows.setdefault(cells[0], (cls, cells))
    head = next(cells for cls, cells in parser.rows if cells and cells[0] == "family")
    vae_cls, vae = rows["vae|<script>alert(1)</script>"]  # the "|" stayed inside its one cell
    assert len(vae) == len(head) and vae_cls == ""
    assert rows["failed-ideas"][0] == "" and rows["gan"][0] == "failed"
    assert "bad | value <b>" in rows["gan"][1][-1]
    # numbers come from the leaderboard's format_value: IS is not "1", KID not "201"
    fid_col, kid_col, is_col = (head.index(t) for t in ("FID ↓", "KID ↓", "IS ↑"))
    assert vae[fid_col] == format_value("fid", 12.345) == "12.3"
    assert vae[kid_col] == format_value("kid_mean", 201.36) and vae[is_col] == format_value("is_mean", 1.0000004)
    assert vae[is_col] != "1"
    # the protocol is at the top, before the leaderboard
    assert html.index("<h2>Protocol</h2>") < html.index("<h2>Leaderboard</h2>")


def test_plots_not_available_say_why_and_what_to_run(tmp_path: Path) -> None:
    final = {"fid": 1.0, "kid_mean": 1.0, "is_mean": 1.0, "precision": 1.0, "recall": 1.0}
    html = write_report([_result(tmp_path / "a", final=final)], tmp_path / "out")["paths"]["html"].read_text()
    reasons = re.findall(r'<p class="unavailable">Not available: (.*?)</p>', html, re.S)
    assert len(reasons) >= 4
    assert all("genbench-benchmark" in r for r in reasons[:4]), reasons


# --- pictures -------------------------------------------------------------------------------------


def test_grids_are_enlarged_with_nearest_neighbour(tmp_path: Path) -> None:
    assert (readable_factor(28), readable_factor(32), readable_factor(64)) == (3, 2, 1)
    pixels = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "g.png")
    big = torch.from_numpy(np.array(Image.open(upscale(tmp_path / "g.png", tmp_path / "b.png", 3))))
    assert big.shape == (15, 21, 3)
    # every 3x3 block is the source pixel, unblended
    assert torch.equal(big, pixels.repeat_interleave(3, 0).repeat_interleave(3, 1))


def test_plot_axes_have_no_offset_labels() -> None:
    ys = [1.0000001, 1.0000004, 1.0000002]
    fig, (plain, tidy) = plt.subplots(1, 2)
    for ax in (plain, tidy):
        ax.plot([0, 1, 2], ys)
    tidy_axis(tidy, ys)
    fig.canvas.draw()
    # matplotlib's default draws "1e-7+1"-style offsets here; the tidy axis none, with a readable range
    assert plain.yaxis.get_offset_text().get_text() != ""
    assert tidy.yaxis.get_offset_text().get_text() == ""
    low, high = tidy.get_ylim()
    assert high - low >= 0.02 and low < 1.0000001 < 1.0000004 < high
    labels = [t.get_text() for t in tidy.get_yticklabels() if t.get_text()]
    assert labels and all("e" not in t for t in labels)
    plt.close(fig)


# --- issue #10.2 reproduced: train, genbench-eval, genbench-compare --------------------------------

#: the smallest in-domain evaluation that still exercises every metric (as budget=tiny does)
SMALL_EVAL = [
    "metrics.num_samples=200",
    "metrics.kid_subsets=10",
    "metrics.kid_subset_size=100",
    "metrics.isc_splits=2",
    "metrics.extractor_training.epochs=1",
    "metrics.extractor_training.min_steps=20",  # the shapes are told apart within a few steps
    "metrics.extractor_training.feature_dim=16",
    "metrics.extractor_training.width=8",
    "metrics.extractor_training.batch_size=64",
    "metrics.likelihood.num_images=32",
    "metrics.likelihood.iwae_k=4",
]


@pytest.mark.slow
def test_compare_shows_what_genbench_eval_computed(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    r = run_cli(
        "genbench.train",
        "model=vae",
        *QUIET,
        *TINY["vae"],
        f"hydra.run.dir={run}",
        f"paths.cache_dir={cache}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # before any evaluation: "–" and, once below the table, the command that computes the metrics
    r = run_cli("genbench.compare", str(run), "--out", str(tmp_path / "cmp0"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    command = f"genbench-eval ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    vae_line = next(line for line in r.stdout.splitlines() if line.startswith("| vae"))
    assert vae_line.split("|")[2].strip() == "–"
    assert r.stdout.count(command) == 1
    html = (tmp_path / "cmp0" / "report.html").read_text()
    assert html.count(command) == 1

    r = run_cli(
        "genbench.evaluate",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        *SMALL_EVAL,
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        "print_config=false",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    latest = json.loads((run / "checkpoints" / "metrics.json").read_text())["latest"]

    r = run_cli("genbench.compare", str(run), "--out", str(tmp_path / "cmp"), "--floor", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    vae_line = next(line for line in r.stdout.splitlines() if line.startswith("| vae"))
    assert vae_line.split("|")[2].strip() == format_value("fid", latest["fid"])
    assert command not in r.stdout  # nothing missing any more
    assert "real vs real (floor)" in r.stdout  # --floor from genbench-eval's record: no benchmark needed
    rows = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert rows[0]["fid"] == pytest.approx(latest["fid"], rel=1e-12)
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "genbench-eval (checkpoints/metrics.json)" in html  # the report says where the result came from


def test_the_protocol_names_each_familys_sampler(tmp_path: Path) -> None:
    ddim = {"_target_": "genbench.diffusion.DDIMSampler", "steps": 25, "eta": 0.0}
    callbacks = {"evaluation": {"sampler": ddim, "num_samples": 200}}
    gan = _result(tmp_path, "gan", {"fid": 1.0}, config={"callbacks": callbacks, "model": {"z_dim": 8}})
    own = {"_target_": "genbench.diffusion.AncestralSampler"}
    ddpm = _result(tmp_path, "ddpm", {"fid": 1.0}, config={"callbacks": callbacks, "model": {"sampler": own}})
    evaluated = {"fid": 1.0, "sampler": {"name": "ddim", "steps": 50, "eta": 0.0}}  # genbench-eval's record
    ddpm_eval = _result(tmp_path, "ddpm2", evaluated, config={"model": {"sampler": own}})
    lines = dict(build_protocol([gan, ddpm, ddpm_eval], [], {"environment": {}}, None))
    assert lines["Sampler"] == "gan: one network pass (no sampler); ddpm: ddim 25 steps; ddpm2: ddim 50 steps (eta 0.0)"
    assert lines["Seeds"] == "0 (all families)"


def test_verdict_compares_families_at_equal_nfe_and_at_their_best(tmp_path: Path) -> None:
    """At each NFE two families were scored at, each one's best sampler there; then each at its best.
    An NFE only one family has is no comparison and is left out; FIDs average over a family's seeds."""
    from genbench.report.verdict import _nfe_sentence, sampler_quality

    def entry(label: str, nfe: int, fid: float) -> dict:
        return {"sampler": label, "nfe": nfe, "images_per_second": 10.0, "metrics": {"eval/fid": fid}}

    runs = [
        _result(tmp_path, "gan", sampling=[entry("default", 1, 30.0)]),
        _result(tmp_path, "vae", sampling=[entry("default", 1, 20.0)]),
        _result(
            tmp_path,
            "ddpm",
            sampling=[entry("ddim-10", 10, 80.0), entry("dpmpp_2m-10", 10, 50.0), entry("edm_heun-19", 19, 45.0)],
        ),  # fmt: skip
        _result(
            tmp_path,
            "ddpm",
            seed=1,
            sampling=[entry("ddim-10", 10, 70.0), entry("dpmpp_2m-10", 10, 54.0), entry("edm_heun-19", 19, 47.0)],
        ),  # fmt: skip
        _result(
            tmp_path,
            "flow_matching",
            sampling=[entry("euler-10", 10, 25.0), entry("heun-10", 10, 22.0), entry("euler-25", 25, 21.0)],
        ),  # fmt: skip
        _result(tmp_path, "broken", status="failed", sampling=[entry("x-10", 10, 1.0)]),
    ]
    q = sampler_quality(runs)
    assert q["ddpm"]["dpmpp_2m-10"] == (10, 52.0) and "broken" not in q
    text = _nfe_sentence(runs)
    assert "at 1 NFE vae 20.0 (default), gan 30.0 (default)" in text
    assert "at 10 NFE flow_matching 22.0 (heun-10), ddpm 52.0 (dpmpp_2m-10)" in text
    assert "at 19 NFE" not in text and "at 25 NFE" not in text  # one family each: no comparison
    assert "best sampler: vae 20.0 (default, 1 NFE), flow_matching 21.0 (euler-25, 25 NFE)" in text
    assert "ddpm 46.0 (edm_heun-19, 19 NFE)" in text
    assert _nfe_sentence(runs[:1]) is None


def test_the_protocol_names_a_sampler_by_its_own_short_name() -> None:
    from genbench.report.build import _sampler_name

    assert _sampler_name("genbench.diffusion.DPMSolverSampler") == "dpmpp_2m"  # the class's ``name``
    assert _sampler_name("genbench.flow.EulerSolver") == "euler"
    assert _sampler_name("not_installed.plugin.QuadSampler") == "quad"  # a class that cannot be imported here
