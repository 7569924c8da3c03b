"""A tiny in-test stand-in for ``VideoClipDataModule.eval_dataset`` (the runner's data interface)."""
from __future__ import annotations

import pytest
import torch


class FakeEvalData:
    """``n`` videos of ``T`` frames: a bright square moving right over a per-video colour; frame 0 is the source."""

    def __init__(self, n: int = 3, T: int = 4, size: int = 32, seed: int = 0):
        self.n, self.T, self.size, self.seed = n, T, size, seed
        self.decoded: list[str] = []
        self.calls: list[dict] = []

    def video(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        base = torch.rand(3, 1, 1, generator=g) * 0.5
        frames = base.expand(self.T, 3, self.size, self.size).clone()
        for t in range(self.T):
            x = 2 + 3 * t
            frames[t, :, 8:16, x:x + 8] = 0.9
        frames += 0.02 * torch.rand(frames.shape, generator=g)
        frames = frames.clamp(0, 1)
        self.decoded.append(f"vid{i}")
        return {"source": frames[0].clone(), "driving": frames, "target": frames,
                "meta": {"video_id": f"vid{i}", "frame_indices": list(range(self.T))}}

    def eval_dataset(self, split, mode, num_frames, stride, max_videos, pairs_csv):
        self.calls.append(dict(split=split, mode=mode, num_frames=num_frames, stride=stride, max_videos=max_videos))
        n = self.n if not max_videos else min(self.n, max_videos)
        return (self.video(i) for i in range(n))


@pytest.fixture
def fake_data():
    return FakeEvalData
