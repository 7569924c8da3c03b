"""experiments.reproduce: paper specs (published numbers only with a source; unreadable cells empty), the cell
logic (Δ, stated tolerance, flags, stand-ins never compared), errors before any work, and the whole pipeline end to
end on the reduced official MRFA checkpoint (imported with lit_models.mrfa.import_official, model=mrfa_reduced's
network) and real talking-head clips (numbers meaningless, pipeline real)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.reproduce import PAPER_DIR, SpecError, cell, load_spec, reproduce

REPO = Path(__file__).resolve().parents[1]
MRFA_FIX = REPO / ".." / "shared" / "fixtures" / "official" / "mrfa"


def test_every_paper_spec_loads_and_states_where_its_numbers_come_from():
    specs = sorted(PAPER_DIR.glob("*.yaml"))
    assert {p.stem for p in specs} >= {"mrfa_vox_reconstruction", "mrfa_vox_fomm", "xportrait_table1", "xnemo_table1"}
    for p in specs:
        spec = load_spec(p.stem)
        assert p.stem == f"{spec.method}_{spec.table}"
        for row in spec.rows:
            assert row.source and row.weights
    # MRFA's tables could not be read: every paper cell empty; X-Portrait's numbers are a third-party transcription
    for name in ("mrfa_vox_reconstruction", "mrfa_vox_fomm"):
        assert all(v is None for v in load_spec(name).rows[0].published.values())
    xp = load_spec("xportrait_table1").rows[0]
    assert xp.transcription == "third_party" and xp.published["self L1"] == 0.033 and xp.published["cross pose error"] == 3.37


def test_a_number_without_a_source_or_under_no_column_is_refused(tmp_path):
    base = (PAPER_DIR / "mrfa_vox_reconstruction.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(base.replace("published: {L1: null,", "published: {L1: 0.04,"))
    with pytest.raises(SpecError, match="published numbers but no source"):
        load_spec(str(bad))
    bad.write_text(base.replace("published: {L1: null,", "published: {L2: 0.04,"))
    with pytest.raises(SpecError, match="published.L2 is not a column"):
        load_spec(str(bad))
    bad.write_text(base.replace("tolerance: {abs: 0.001}", "tolerance: {}"))
    with pytest.raises(SpecError, match="tolerance"):
        load_spec(str(bad))


def test_cells_flag_outside_the_stated_tolerance_and_never_compare_stand_ins():
    assert cell(0.033, 0.034, {"abs": 0.002})["within"] is True
    c = cell(0.033, 0.040, {"abs": 0.002})
    assert c["within"] is False and c["delta"] == pytest.approx(0.007)
    assert cell(14.553, 15.0, {"rel": 0.05})["within"] is True            # 5 % of 14.553 = 0.73
    assert cell(14.553, 15.5, {"abs": 0.5, "rel": 0.05})["within"] is False
    assert cell(None, 0.04, {"abs": 0.002})["within"] is None               # nobody could read the paper cell
    assert cell(0.133, 0.133, {"abs": 0.005}, standin=True)["within"] is None


def test_missing_checkpoint_fails_naming_the_weights_before_any_work(tmp_path):
    from experiments.runtime import ConfigError
    from eval.weights import MissingWeightsError

    root = tmp_path / "vox" / "test"
    root.mkdir(parents=True)
    (root / "x.mp4").write_bytes(b"")
    with pytest.raises((ConfigError, MissingWeightsError), match="mrfa_vox"):
        reproduce(["paper=mrfa_vox_reconstruction", f"data.root={tmp_path / 'vox'}", f"out={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="ckpts.nope: not a row"):
        reproduce(["paper=mrfa_vox_reconstruction", f"data.root={tmp_path / 'vox'}", "ckpts.nope=x.ckpt"])


@pytest.fixture
def real_vox_root(real_fixtures, tmp_path) -> Path:
    """Two real talking-head clips as a FOMM VoxCeleb test split (symlinks)."""
    clips = sorted((real_fixtures / "clips").glob("talkinghead1kh_*.mp4"))[:2]
    if len(clips) < 2:
        pytest.skip(f"needs 2 talkinghead1kh clips in {real_fixtures / 'clips'}")
    root = tmp_path / "vox"
    for i, clip in enumerate(clips):
        dest = root / "test" / f"id{i:02d}#real#{i:06d}#{i + 1:06d}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(clip)
    return root


@pytest.mark.skipif(not (MRFA_FIX / "reduced_state_dict.pt").is_file(), reason=f"official MRFA fixtures absent ({MRFA_FIX})")
def test_reproduce_end_to_end_on_the_reduced_official_mrfa_and_real_clips(real_vox_root, tmp_path):
    from lit_models.mrfa.import_official import import_official

    ckpt = tmp_path / "mrfa_reduced.ckpt"
    import_official(MRFA_FIX / "reduced_state_dict.pt", ckpt, config=MRFA_FIX / "reduced_config.yaml")
    out = tmp_path / "repro"
    args = ["paper=mrfa_vox_reconstruction", f"ckpts.mrfa={ckpt}", f"data.root={real_vox_root}", f"out={out}",
            "eval_protocol.max_videos=2", "eval_protocol.num_frames=4", "eval_protocol.resolution=64",
            "eval_protocol.standin_metrics=[lpips]"]   # no ImageNet VGG here: LPIPS on the labelled stand-in
    res = reproduce(args)
    metrics = json.loads((out / "mrfa" / "self" / "metrics.json").read_text())
    assert metrics["protocol"] == "mrfa_reconstruction" and metrics["num_videos"] == 2
    assert metrics["num_frames"] == 2 * 4          # frame 0 scored too (the official reconstruction.py)
    rows = list(csv.DictReader((out / "reproduce.csv").open()))
    assert [r["column"] for r in rows] == ["L1", "LPIPS", "PSNR"]
    by = {r["column"]: r for r in rows}
    assert float(by["L1"]["ours"]) == pytest.approx(metrics["metrics"]["l1"])
    assert float(by["PSNR"]["ours"]) == pytest.approx(metrics["metrics"]["psnr"])
    assert by["LPIPS"]["metric"] == "lpips_vgg_STANDIN" and by["LPIPS"]["standin"] == "True"
    assert all(r["paper"] == "" and r["delta"] == "" for r in rows)     # MRFA's table could not be read
    md = (out / "reproduce.md").read_text()
    assert "| mrfa | L1 | `l1` |  | " in md and "no paper number" in md and "stand-in (not the metric)" in md
    page = (out / "reproduce.html").read_text()
    assert "<table class=reproduce>" in page and "http" not in page.split("<body>", 1)[1]
    assert metrics["model_id"] and res["table"][0]["protocol_hash"] == metrics["protocol_hash"]
    # a second run reuses the evaluation (same model identity, protocol hash, data fingerprint)
    stamp = (out / "mrfa" / "self" / "per_frame.csv").stat().st_mtime_ns
    reproduce(args)
    assert (out / "mrfa" / "self" / "per_frame.csv").stat().st_mtime_ns == stamp
    print((out / "reproduce.md").read_text())
