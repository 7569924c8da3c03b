"""eval.report: a self-contained report page, checked in a real headless Chromium (Debian's, driven by Playwright).

The input is a tiny fake sweep written here (3 axis values × 2 seeds: config.yaml, metrics.json, CSV logs, an
H.264 eval grid per run). The browser test installs Chromium from the system packages when it is absent and this
process is root (as CI is); otherwise it skips and prints the install command.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval.report import build_report, main
from helpers import assert_clean_screenshot, headless_page

AXIS_VALUES = (0, 1, 4)
SEEDS = (0, 1)


def write_fake_sweep(root: Path, video: bool = True) -> Path:
    """A sweep directory as `experiments.train sweep=…` leaves it, with tiny contents."""
    from lit_models.common.visual import write_video

    rng = np.random.default_rng(0)
    for j, (k, seed) in enumerate((k, s) for k in AXIS_VALUES for s in SEEDS):
        d = root / f"{j}_model.refine_iters-{k}+seed-{seed}"
        (d / "csv" / "version_0").mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump({"name": "mrfa_refine_iters", "axes": ["model.refine_iters"],
                                                       "seed": seed, "model": {"name": "mrfa", "refine_iters": k}}))
        metrics = {"l1": 0.1 - 0.01 * k + 0.002 * seed, "psnr": 20 + k + seed * 0.1, "ssim": 0.6 + 0.01 * k,
                   "akd_synthlm": 2.0 - 0.1 * k, "motion_err_prior": 1.2, "motion_err_refined": 1.1 - 0.01 * k,
                   "synthfaces_cross/l1": 0.12 - 0.01 * k}
        (d / "metrics.json").write_text(json.dumps({
            "protocol": "synthfaces_self", "protocol_hash": "0123456789abcdef", "metrics": metrics, "ckpt": str(d / "x.ckpt"),
            "extra_protocols": {"synthfaces_cross": {"protocol": "synthfaces_cross", "protocol_hash": "fedcba"}},
            "model_diagnostics": {"names": ["motion_err_prior", "motion_err_refined"], "source": "MRFA"},
            "protocol_config": {"metrics": ["l1", "psnr", "ssim", "akd_synthlm"]}}))
        steps = np.arange(0, 60, 10)
        lines = ["train/loss,train/loss_perceptual,lr-Adam,epoch,step"]
        lines += [f"{1.0 / (1 + s / 20) + 0.01 * k:.5f},{0.5 / (1 + s / 30):.5f},{2e-4:.6f},0,{s}" for s in steps]
        (d / "csv" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")
        if video:
            frames = np.zeros((8, 32, 64, 3), np.uint8)     # a bar moving right, coloured by K
            for t in range(8):
                frames[t, 8:24, 4 + 6 * t:12 + 6 * t] = (255, 60 * k, 255 - 50 * seed)
            frames += (rng.random(frames.shape) * 30).astype(np.uint8)
            write_video(frames, d / "eval_grid.mp4")
    return root


def test_report_is_self_contained_with_every_section(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = write_fake_sweep(tmp_path / "mrfa_refine_iters" / "2026-01-01_00-00-00")
    assert main([str(sweep)]) == 0
    page = (sweep / "report.html").read_text()
    # no network: every src is inline, nothing is fetched from elsewhere
    import re

    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:") for s in srcs)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("<video") == len(AXIS_VALUES) * len(SEEDS)
    assert page.count("data:video/mp4;base64,") == len(AXIS_VALUES) * len(SEEDS)
    assert page.count('alt="plot_model_refine_iters"') == 1 and 'alt=loss_curves' in page
    assert page.count("0123456789abcdef") >= len(AXIS_VALUES) * len(SEEDS)    # every run's protocol hash
    assert page.count("<details class=run>") == 6 and "refine_iters: 4" in page    # every run's config
    # the table: one row per axis value, mean ± std over the two seeds, best value in bold
    body = page.split("<table class=ablation")[1].split("</table>")[0]
    assert body.count("<tr>") == 1 + len(AXIS_VALUES)
    assert "<td class=best>24.05 ± 0.07</td>" in body        # psnr at K=4: mean of 24.0 and 24.1


def test_report_loss_curves_follow_the_csv_logs(tmp_path):
    """The curve panel plots the CSV's values: changing the logged losses changes the image."""
    from eval.report import plot_loss_curves, read_csv_logs

    sweep = write_fake_sweep(tmp_path / "s", video=False)
    run = sorted(sweep.iterdir())[0]
    df = read_csv_logs(run)
    assert list(df["step"]) == list(range(0, 60, 10)) and df["train/loss"].iloc[0] == pytest.approx(1.0)
    a = plot_loss_curves({"r": df})
    df2 = df.copy()
    df2["train/loss"] = df2["train/loss"] * 3
    assert a is not None and a != plot_loss_curves({"r": df2})


def test_report_rejects_a_directory_without_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        build_report(tmp_path)


# ---- the page in a real browser ---------------------------------------------------------------------------------
def test_report_renders_in_headless_chromium(tmp_path, chromium, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = write_fake_sweep(tmp_path / "mrfa_refine_iters" / "2026-01-01_00-00-00")
    page_path = build_report(sweep)
    errors: list[str] = []
    with headless_page(chromium, tmp_path, errors, console_errors=True) as page:
        page.goto(page_path.as_uri(), wait_until="load")
        rows = page.locator("table.ablation tbody tr")
        assert rows.count() == len(AXIS_VALUES)
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == \
            [str(v) for v in AXIS_VALUES]
        # every video decodes: metadata loads (H.264 from the data URI) and its duration is > 0
        durations = page.evaluate("""async () => Promise.all([...document.querySelectorAll('video')].map(v =>
            new Promise(ok => { const done = () => ok(v.duration);
              if (v.readyState >= 2) done(); else { v.addEventListener('loadeddata', done);
                v.addEventListener('error', () => ok(-1)); setTimeout(() => ok(-2), 15000); } })))""")
        assert len(durations) == len(AXIS_VALUES) * len(SEEDS)
        assert all(d > 0 for d in durations), durations
        # every image decoded
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert_clean_screenshot(errors, shot, 20_000, "PORTRAITLAB_REPORT_SCREENSHOT")


def test_demo_writes_the_report_and_prints_its_path(tmp_path, monkeypatch, capsys):
    """experiments.demo after its sweep: the report page in the new sweep directory, its path printed (the sweep
    itself is replaced by a fake one here; the real one is `make demo`)."""
    from experiments import demo

    runs = tmp_path / "runs"
    monkeypatch.setenv("PORTRAITLAB_RUNS", str(runs))
    monkeypatch.setenv("DEMO_SWEEP", "mrfa_refine_iters")
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def fake_sweep(cmd, check):
        assert "sweep=mrfa_refine_iters" in cmd
        sweep = write_fake_sweep(runs / "sweeps" / "mrfa_refine_iters" / "2026-01-01_00-00-00", video=False)
        (sweep / "table.md").write_text("| table |\n")

    monkeypatch.setattr(demo.subprocess, "run", fake_sweep)
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    page = runs / "sweeps" / "mrfa_refine_iters" / "2026-01-01_00-00-00" / "report.html"
    assert f"report:    {page.absolute()}" in out and page.is_file()
    assert page.read_text().count("<table class=ablation") == 1
