"""experiments.leaderboard: every checkpoint under every protocol, finished evaluations reused (same model identity,
protocol hash, data fingerprint), paired CIs against the reference that are the CIs of the headline numbers, the
protocol hash and weights sha256 on one self-contained page (rendered in headless Chromium), one W&B table."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import assert_clean_screenshot, headless_page

PROTOCOLS = ("synthfaces_self", "synthfaces_self_motion")


def make_checkpoints(root: Path) -> list[str]:
    """copy_source and an (untrained) direct-regression baseline as run checkpoints (`<run>/checkpoints/last.ckpt`)."""
    from experiments.compose import compose
    from experiments.train import save_untrained_checkpoint
    from lit_models.registry import build_model

    import lightning as L

    out = []
    for name in ("copy_source", "direct"):
        L.seed_everything(0, verbose=False)
        model = build_model(compose("train", [f"model={name}"]).model)
        out.append(str(save_untrained_checkpoint(model, root / name / "checkpoints" / "last.ckpt")))
    return out


def args(ckpts, synth_root, out, *extra):
    return [f"ckpts=[{','.join(ckpts)}]", f"protocols=[{','.join(PROTOCOLS)}]", f"out={out}",
            f"data.root={synth_root}", "data.synth=null", "eval_protocol.max_videos=4", "eval_protocol.num_frames=4",
            *extra]


@pytest.fixture(scope="module")
def board(synth_root, tmp_path_factory):
    from experiments.leaderboard import leaderboard

    tmp = tmp_path_factory.mktemp("leaderboard")
    ckpts = make_checkpoints(tmp / "runs")
    res = leaderboard(args(ckpts, synth_root, tmp / "board", "reference=copy_source"))
    return res, ckpts, tmp


def test_every_checkpoint_under_every_protocol_with_ci_of_the_headline(board):
    from toolbox.io import sha256_file

    res, ckpts, tmp = board
    t = res["table"]
    assert set(zip(t.checkpoint, t.protocol)) == {(c, p) for c in ("copy_source", "direct") for p in PROTOCOLS}
    assert not any(res["reused"].values())
    for p in PROTOCOLS:
        m = {c: json.loads((tmp / "board" / c / p / "metrics.json").read_text()) for c in ("copy_source", "direct")}
        row = t[(t.protocol == p) & (t.checkpoint == "direct") & (t.metric == "l1")].iloc[0]
        assert row.value == pytest.approx(m["direct"]["metrics"]["l1"])
        assert row.delta == pytest.approx(m["direct"]["metrics"]["l1"] - m["copy_source"]["metrics"]["l1"], rel=1e-9)
        assert row.ci_low <= row.delta <= row.ci_high and row.ci_low < row.ci_high
        assert row.protocol_hash == m["direct"]["protocol_hash"] and row.weights_sha256 == sha256_file(ckpts[1])
        ref = t[(t.protocol == p) & (t.checkpoint == "copy_source")]
        assert ref.delta.isna().all()                                     # the reference has no Δ to itself
    page = res["page"].read_text()
    for p in PROTOCOLS:
        assert t[t.protocol == p].protocol_hash.iloc[0] in page            # full protocol hash on the page
    for c in ckpts:
        assert sha256_file(c) in page                                      # full weights sha256 on the page
    assert page.count("<table class=leaderboard>") == len(PROTOCOLS)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_second_run_reuses_every_evaluation(board, synth_root, monkeypatch):
    import eval.runner
    from experiments.leaderboard import leaderboard

    res, ckpts, tmp = board

    def no_eval(*a, **k):
        raise AssertionError("evaluated again although a matching evaluation exists")

    monkeypatch.setattr(eval.runner, "run_evaluation", no_eval)
    again = leaderboard(args(ckpts, synth_root, tmp / "board2", "reference=copy_source", "wandb=disabled",
                             f"reuse=[{tmp / 'board'}]"))
    assert all(again["reused"].values()) and len(again["reused"]) == 2 * len(PROTOCOLS)
    cols = ["checkpoint", "protocol", "metric", "value", "delta", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(res["table"][cols], again["table"][cols])
    # a protocol change (another frame count → another hash) is not reused
    with pytest.raises(AssertionError, match="evaluated again"):
        leaderboard(args(ckpts, synth_root, tmp / "board3", "wandb=disabled", f"reuse=[{tmp / 'board'}]",
                         "eval_protocol.num_frames=3"))


def test_one_wandb_table_offline(board):
    from experiments.wandb_offline import read_config, read_history, read_run, run_files

    res, _, _ = board
    files = run_files(res["out"])
    assert len(files) == 1
    assert read_run(files[0])["job_type"] == "leaderboard"
    row = read_history(files[0])[0]
    assert row["leaderboard/_type"] == "table-file" and row["leaderboard/nrows"] == len(res["table"])
    assert read_config(files[0])["reference"] == "copy_source"


def test_bad_arguments_fail_before_any_work(tmp_path, synth_root):
    from experiments.leaderboard import leaderboard
    from experiments.runtime import ConfigError

    with pytest.raises(ConfigError, match="no such checkpoint"):
        leaderboard(["ckpts=[nope.ckpt]", "protocols=[synthfaces_self]", f"out={tmp_path / 'o'}"])
    ckpts = make_checkpoints(tmp_path)
    with pytest.raises(ConfigError, match="reference='x'"):
        leaderboard(args(ckpts, synth_root, tmp_path / "o", "reference=x"))
    with pytest.raises(ConfigError, match="protocols: nope"):
        leaderboard([f"ckpts=[{ckpts[0]}]", "protocols=[nope]", f"out={tmp_path / 'o'}"])
    assert not (tmp_path / "o").exists()


def test_leaderboard_page_renders_in_headless_chromium(chromium, board, tmp_path):
    res, ckpts, _ = board
    errors: list[str] = []
    with headless_page(chromium, tmp_path, errors) as page:
        page.goto(res["page"].as_uri(), wait_until="load")
        tables = page.locator("table.leaderboard")
        assert tables.count() == len(PROTOCOLS)
        for i in range(tables.count()):
            names = [r.locator("td").first.inner_text().split("\n")[0]
                     for r in tables.nth(i).locator("tbody tr").all()]
            assert names == ["copy_source (reference)", "direct"]
            assert "Δ" in tables.nth(i).locator("tbody tr").nth(1).inner_text()
        shot = tmp_path / "leaderboard.png"
        page.screenshot(path=str(shot), full_page=True)
    assert_clean_screenshot(errors, shot, 10_000, "PORTRAITLAB_LEADERBOARD_SCREENSHOT")


def test_a_trained_runs_own_evaluation_is_reused_and_its_last_ckpt_is_the_final_state(synth_root, tmp_path, monkeypatch):
    """experiments.train evaluates the final weights into the run directory; last.ckpt must hold those same weights
    (also when max_steps is not a multiple of the checkpoint interval: 3 steps, a checkpoint every 2), so that the
    leaderboard finds the run's own evaluation by model identity instead of evaluating again."""
    import torch

    import eval.runner
    from experiments.compose import compose
    from experiments.leaderboard import leaderboard
    from experiments.train import train

    run = tmp_path / "run"
    train(compose("train", ["experiment=baseline_direct", "debug=fast", f"data.root={synth_root}", "data.synth=null",
                            "logger=csv", "trainer.max_steps=3", "trainer.checkpoint_every_n_steps=2",
                            "eval_protocol.max_videos=2", "eval_protocol.num_frames=4", f"run_dir={run}"]))
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3

    def no_eval(*a, **k):
        raise AssertionError("evaluated again although the training run's evaluation matches")

    monkeypatch.setattr(eval.runner, "run_evaluation", no_eval)
    res = leaderboard([f"ckpts=[{last}]", "protocols=[synthfaces_self]", f"out={tmp_path / 'board'}", "wandb=disabled",
                       f"data.root={synth_root}", "data.synth=null", "eval_protocol.max_videos=2",
                       "eval_protocol.num_frames=4"])
    assert res["reused"] == {("run", "synthfaces_self"): True}
    assert set(res["table"].eval_dir) == {str(run)}
