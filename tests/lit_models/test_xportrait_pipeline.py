"""X-Portrait's sampling pipeline against the official ``DDIMSampler_ReferenceOnly`` window loop
(tests/golden/xportrait/windows_official.json, made from the official code: tests/golden/xportrait/NOTES.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_models.xportrait.pipeline import draw_offset, last_occurrence, official_average, official_windows

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xportrait" / "windows_official.json"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("N", [10, 16, 41, 100])
def test_windows_and_averaging_equal_the_official_loop(golden, N):
    """Every offset: the windows' frame indices (in order) and the averaged model output when window w returns
    1000·(w + 1) + position — which write survives a frame repeated inside one window (N ≤ 16), and the counts."""
    size, overlap = golden["window_size"], golden["num_overlap"]
    cases = golden["cases"][str(N)]
    assert len(cases) == N
    for offset, want in cases.items():
        windows = official_windows(N, size, overlap, int(offset))
        assert [w.tolist() for w in windows] == want["windows"], (N, offset)
        calls = []

        def predict(idx):
            calls.append(idx)
            w = len(calls)
            return (1000.0 * w + torch.arange(len(idx), dtype=torch.float64)).view(1, -1)

        got = official_average(predict, windows, N)[0]
        assert got.tolist() == want["average"], (N, offset)


def test_window_counts_for_the_issue_lengths(golden):
    counts = {N: len(golden["cases"][str(N)]["0"]["windows"]) for N in (16, 41, 100)}
    assert counts == {16: 1, 41: 4, 100: 8}
    assert official_windows(16, 16, 4, 5)[0].tolist() == [*range(5, 16), *range(5)]     # N = 16: a rotated clip


def test_last_occurrence_and_short_clips():
    assert last_occurrence(torch.tensor([3, 4, 0, 3, 4])).tolist() == [2, 3, 4]
    # N ≤ overlap: the official range is empty; one repeating window here
    assert [w.tolist() for w in official_windows(3, 16, 4, 1)] == [[(1 + i) % 3 for i in range(16)]]
    with pytest.raises(ValueError, match="offset"):
        official_windows(10, 16, 4, 10)


def test_offsets_come_from_the_generator():
    a = [draw_offset(41, torch.Generator().manual_seed(0)) for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    b = [draw_offset(41, g) for _ in range(30)]
    assert a == [b[0]] * 3 and len(set(b)) > 5 and all(0 <= o < 41 for o in b)


def test_injected_offsets_drive_the_windows():
    """``offsets=`` (one per step) replaces the generator's draws: the same offsets give the same video whatever the
    generator; other offsets another one."""
    from experiments.compose import compose
    from lit_models.registry import build_model

    torch.manual_seed(0)
    m = build_model(compose("train", ["model=xportrait_tiny", "model.resolution=32", "model.unet.sample_size=8",
                                      "model.num_inference_steps=2", "model.use_local_control=false"]).model).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                p.normal_(0, 0.3)
    src = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    drv = torch.rand(1, 12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 12, 48, 8, 8, generator=torch.Generator().manual_seed(2))
    run = lambda offs, seed: m.animate(src, drv, noise=noise, offsets=offs,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))
    a, b, c = run([3, 7], 0), run([3, 7], 1), run([0, 7], 0)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-4
