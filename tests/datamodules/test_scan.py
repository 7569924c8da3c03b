"""Bad files are skipped and counted per reason (never a crash); the probe is cached by path+size+mtime."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.layouts import discover
from datamodules.scan import probe_file, scan
from media import make_bad_files, write_video

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    d = root / "idbad" / "v"
    good = write_video(root / "idgood" / "v" / "good.mp4", num_frames=24)
    make_bad_files(d, good_source=good)
    return root


@pytest.mark.parametrize("name,reason", [("empty.mp4", "empty"), ("half.mp4", "truncated"),
                                         ("random.mp4", "corrupt"), ("notes.mp4", "not_video")])
def test_probe_reasons(bad_root, name, reason):
    pr = probe_file(bad_root / "idbad" / "v" / name)
    assert not pr.ok and pr.reason == reason


def test_truncated_faststart(tmp_path):
    """moov first (+faststart): the index promises packets the file no longer holds."""
    p = write_video(tmp_path / "fs.mp4", num_frames=24, faststart=True)
    data = p.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    assert probe_file(p).ok
    assert probe_file(tmp_path / "cut.mp4").reason == "truncated"


def test_scan_counts_and_cache(bad_root, tmp_path):
    cache = tmp_path / "scan.json"
    with pytest.warns(UserWarning, match="skipped 5 of 6"):
        res = scan(discover(bad_root), min_frames=4, cache_path=cache)
    assert [Path(r.path).name for r in res.usable] == ["good.mp4"] and res.usable[0].num_frames == 24
    assert dict(res.skipped) == {"empty": 1, "truncated": 1, "corrupt": 1, "not_video": 1, "too_short": 1}
    assert res.summary() == {"videos": 6, "usable": 1, "skipped": dict(sorted(res.skipped.items()))}
    # the cache answers the second scan (a poisoned entry proves it is read) ...
    data = json.loads(cache.read_text())
    key = next(k for k in data["probes"] if "good.mp4" in k)
    data["probes"][key]["num_frames"] = 99
    cache.write_text(json.dumps(data))
    assert scan(discover(bad_root), min_frames=4, cache_path=cache, warn=False).usable[0].num_frames == 99
    # ... until the file changes (mtime), then it is probed again
    good = Path(res.usable[0].path)
    os.utime(good, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns + 10**9))
    assert scan(discover(bad_root), min_frames=4, cache_path=cache, warn=False).usable[0].num_frames == 24


def test_cli(bad_root):
    out = subprocess.run([sys.executable, "-m", "datamodules.scan", str(bad_root), "--min-frames", "4", "--no-cache"],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"videos": 6, "usable": 1,
                   "skipped": {"corrupt": 1, "empty": 1, "not_video": 1, "too_short": 1, "truncated": 1}}


def test_scan_decodes_with_the_configured_decoder(tmp_path):
    """A 32×32 H.264 clip decodes with PyAV but not with decord (the default decoder): the scan probes with the
    configured decoder, so the clip is caught there (a PyAV-only probe would pass it, and the evaluation would crash
    on it after training)."""
    import av
    import numpy as np

    from datamodules.scan import probe_file

    p = tmp_path / "tiny.mp4"
    c = av.open(str(p), "w")
    s = c.add_stream("libx264", rate=25)
    s.width = s.height = 32
    s.pix_fmt = "yuv420p"
    for i in range(8):
        for pk in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    assert probe_file(p, "pyav").ok
    try:
        from datamodules.video import open_video

        open_video(p, "decord").get_frames([0, 7])
        pytest.skip("this decord build decodes 32×32 clips: nothing to tell apart")
    except ImportError:
        pytest.skip("decord not installed")
    except Exception:
        pass
    pr = probe_file(p, "decord")
    assert not pr.ok and pr.reason == "corrupt" and "decord" in pr.detail
