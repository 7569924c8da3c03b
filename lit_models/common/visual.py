"""Video grids a person would rather look at than read: source | driving | generated | target."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def grid_frames(source: torch.Tensor, driving: torch.Tensor, generated: torch.Tensor, target: torch.Tensor | None = None,
                max_frames: int | None = None) -> np.ndarray:
    """Return uint8 frames T×(B·H)×(k·W)×3: one row per video, columns source | driving | generated [| target]."""
    B, T = driving.shape[:2]
    T = min(T, max_frames) if max_frames else T
    cols = [source[:, None].expand(-1, T, -1, -1, -1), driving[:, :T], generated[:, :T]]
    if target is not None:
        cols.append(target[:, :T])
    row = torch.cat([c.detach().float().cpu().clamp(0, 1) for c in cols], dim=-1)  # B×T×3×H×kW
    grid = torch.cat(list(row), dim=-2)  # T×3×(B·H)×kW
    return (grid.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def write_video(frames: np.ndarray, path: str | Path, fps: int = 10) -> Path:
    """Write T×H×W×3 uint8 frames as H.264 mp4 with PyAV (even sizes padded)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T, H, W, _ = frames.shape
    ph, pw = H % 2, W % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def log_video_grid(trainer, key: str, source, driving, generated, target=None, step: int = 0, max_frames: int = 8,
                   fps: int = 10) -> None:
    """Log a grid to every attached logger that can show one (W&B video); always keep a PNG strip in the run dir."""
    frames = grid_frames(source, driving, generated, target, max_frames=max_frames)
    from PIL import Image

    log_dir = Path(trainer.default_root_dir) / "grids"
    log_dir.mkdir(parents=True, exist_ok=True)
    strip = np.concatenate(list(frames), axis=0) if frames.shape[0] <= 4 else np.concatenate(list(frames[:4]), axis=0)
    Image.fromarray(strip).save(log_dir / f"{key.replace('/', '_')}_step{step:07d}.png")
    wandb_loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
    if wandb_loggers:
        import wandb

        # encode once with PyAV and hand W&B the file (wandb.Video on arrays would need moviepy)
        video = write_video(frames, log_dir / f"{key.replace('/', '_')}_step{step:07d}.mp4", fps=fps)
        for logger in wandb_loggers:
            logger.experiment.log({key: wandb.Video(str(video), format="mp4"), "trainer/global_step": step})
