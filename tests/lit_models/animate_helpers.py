"""Helpers shared by the methods' animate-entry-point tests (imported like tests/datamodules/media.py)."""
from __future__ import annotations

import torch


def luma_blocks(x: torch.Tensor) -> torch.Tensor:
    """T×H×W×3 → 2×2-block luma means: what H.264 4:2:0 keeps well (compare written clips with direct outputs)."""
    y = x @ torch.tensor([0.299, 0.587, 0.114])
    return torch.nn.functional.avg_pool2d(y[:, None], 2)[:, 0]


def animate_entry_point(model, compose_cfg, real_fixtures, tmp_path, size: int = 32, frames: int = 3):
    """Run `experiments.animate` with a freshly saved checkpoint of ``model`` on the real portrait and clip (face
    crops); returns (written clip T×size×size×3, the same source / driving crops for calling ``animate`` directly)."""
    import av
    import numpy as np

    from experiments.animate import animate, crop_resize, read_image, read_video, square_box
    from experiments.train import save_untrained_checkpoint

    ckpt = save_untrained_checkpoint(model, tmp_path / "tiny.ckpt")
    out = tmp_path / "x.mp4"
    src_path, drv_path = real_fixtures / "portraits/astronaut.png", real_fixtures / "clips/single_face.mp4"
    cfg = compose_cfg("animate", [f"ckpt={ckpt}", f"source={src_path}", f"driving={drv_path}", f"out={out}",
                                  "animate_crop=face", f"max_frames={frames}", f"run_dir={tmp_path}",
                                  "preprocess=none"])     # the face crops below (X-Portrait's official one needs FAN)
    animate(cfg)
    with av.open(str(out)) as c:
        written = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])).float() / 255
    img = read_image(src_path)[None]
    drv, _ = read_video(drv_path, frames)
    source = crop_resize(img, square_box(img, "face"), size)
    driving = crop_resize(drv, square_box(drv, "face"), size)[None]
    return written, source, driving
