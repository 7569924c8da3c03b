"""An evaluation's files in ``run_dir`` and the state that makes them resumable.

* ``per_frame.csv`` — one row per scored frame (video, frame index, every per-frame metric);
* ``per_video.csv`` — one row per video (NaN-aware means over its frames, the frame count, non-finite frames);
* ``eval_state.pt`` — the finished videos and the dataset metrics' running state, saved after each video (tensors +
  plain types, read with ``weights_only=True``);
* ``metrics.json`` — the aggregate, written atomically (``eval.runner.write_metrics``);
  ``merge_extra_protocols`` / ``merge_model_diagnostics`` add other protocols' metrics and a model's own
  diagnostics to it;
* ``eval_grid.mp4`` — source | driving | generated | target for the first videos.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from eval.metrics import nanmean
from toolbox.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from eval.suite import Suite

log = logging.getLogger("portraitlab.eval")

PER_FRAME, PER_VIDEO, STATE, METRICS, GRID = "per_frame.csv", "per_video.csv", "eval_state.pt", "metrics.json", "eval_grid.mp4"


class ResultFiles:
    """Per-frame / per-video CSVs appended (flushed, fsynced) as videos finish; the state file marks them done.

    The state is keyed by what produced it: protocol hash, model identity (``model_identity``) and data fingerprint
    (``data_fingerprint``). Another protocol is refused (evaluate into another run_dir); another model or data set
    — a run resumed to train longer, another checkpoint evaluated into a used run_dir — discards the old rows and
    recomputes everything: finished rows are reused only for exactly the same model, protocol and data."""

    def __init__(self, run_dir: Path, phash: str, metric_names: list[str], model_id: str = "", data_id: str = ""):
        self.run_dir = run_dir
        self.phash = phash
        self.model_id, self.data_id = model_id, data_id
        self.names = metric_names
        self.frame_cols = ["video_id", "frame"] + metric_names
        self.video_cols = ["video_id", "num_frames", "nonfinite_frames"] + [n for n in metric_names]
        self.skipped: dict[str, str] = {}          # video id -> why it could not be evaluated (decode error)
        self.nonfinite: dict[str, int] = {}        # video id -> generated frames with a non-finite value
        self.upscaled: list[str] = []              # videos whose frames are smaller than the protocol's resolution

    def _read(self, name: str) -> list[dict]:
        path = self.run_dir / name
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def _load_state(self) -> Optional[dict]:
        state_path = self.run_dir / STATE
        if not state_path.is_file():
            return None
        # tensors + plain types only: loads without unpickling code (weights_only=True)
        return torch.load(state_path, map_location="cpu", weights_only=True)

    def load_done(self, dataset_state_ok=True) -> tuple[list[str], dict | None]:
        """Finished videos (in order) and the saved dataset-metric state; files rewritten to the finished set."""
        state = self._load_state()
        if state is not None and state.get("protocol_hash") != self.phash:
            raise RuntimeError(f"{self.run_dir} holds an evaluation under protocol hash {state.get('protocol_hash')}, "
                               f"not {self.phash}; evaluate into a new run_dir (results of two protocols never mix)")
        if state is not None:
            changed = [what for what, key, now in (("the model (weights or hyper-parameters)", "model_id", self.model_id),
                                                   ("the evaluation data", "data_id", self.data_id),
                                                   ("the metric list", "metrics", self.names))
                       if state.get(key) != now]
            if changed:
                log.warning("%s: the saved evaluation was made with different %s: recomputing every video",
                            self.run_dir, " and ".join(changed))
                state = None
        if state is None:   # nothing reusable: start from empty files (never relabel another model's rows)
            self._rewrite(PER_FRAME, self.frame_cols, [])
            self._rewrite(PER_VIDEO, self.video_cols, [])
            (self.run_dir / STATE).unlink(missing_ok=True)
            return [], None
        self.skipped = dict(state.get("skipped", {}))
        self.nonfinite = {k: int(v) for k, v in state.get("nonfinite", {}).items()}
        self.upscaled = list(state.get("upscaled", []))
        videos = self._read(PER_VIDEO)
        done_state = set(state["done"])
        # a video counts as done when its per-video row is written and the state saved after it
        done = [r["video_id"] for r in videos if r["video_id"] in done_state]
        keep = set(done)
        frames = [r for r in self._read(PER_FRAME) if r["video_id"] in keep]
        videos = [r for r in videos if r["video_id"] in keep]
        self._rewrite(PER_FRAME, self.frame_cols, frames)
        self._rewrite(PER_VIDEO, self.video_cols, videos)
        return done, state

    def _rewrite(self, name, cols, rows) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.run_dir / name, buf.getvalue())

    def append(self, video_id: str, per_frame: dict[str, np.ndarray], frame_idx: list[int],
               nonfinite_frames: int = 0) -> dict:
        row_v = {"video_id": video_id, "num_frames": len(frame_idx), "nonfinite_frames": int(nonfinite_frames)}
        row_v.update({n: nanmean(per_frame[n]) for n in per_frame})
        with open(self.run_dir / PER_FRAME, "a", newline="") as f:
            w = csv.writer(f)
            for i, t in enumerate(frame_idx):
                w.writerow([video_id, t] + [f"{float(per_frame[n][i]):.8g}" for n in self.names if n in per_frame])
            f.flush()
            os.fsync(f.fileno())
        with open(self.run_dir / PER_VIDEO, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.video_cols, extrasaction="ignore").writerow(
                {k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row_v.items()})
            f.flush()
            os.fsync(f.fileno())
        return row_v

    def save_state(self, done: list[str], suite: "Suite") -> None:
        path = self.run_dir / STATE
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"protocol_hash": self.phash, "model_id": self.model_id, "data_id": self.data_id,
                    "metrics": self.names, "done": list(done), "skipped": dict(self.skipped),
                    "nonfinite": dict(self.nonfinite), "upscaled": list(self.upscaled),
                    "dataset_metrics": {m.name: m.state_dict() for m in suite.dataset_metrics}}, tmp)
        os.replace(tmp, path)


def merge_extra_protocols(run_dir, extra: dict[str, dict]) -> dict:
    """Add extra protocols' results (``run_evaluation`` returns, keyed by a name) to ``run_dir/metrics.json``.

    Their metrics become ``<name>/<metric>``; ``extra_protocols[name]`` records the protocol, its hash, where its
    files are and its video / frame counts; ``standin`` is true when any protocol used a stand-in network. Tables
    only group runs whose main and extra protocol hashes all agree (``eval.table``)."""
    run_dir = Path(run_dir)
    main = json.loads((run_dir / METRICS).read_text())
    main.setdefault("extra_protocols", {})
    for name, res in extra.items():
        if "/" in name:
            raise ValueError(f"extra protocol name {name!r} must not contain '/'")
        main["metrics"] = {k: v for k, v in main["metrics"].items() if not k.startswith(f"{name}/")}
        main["metrics"].update({f"{name}/{k}": v for k, v in res["metrics"].items()})
        main["extra_protocols"][name] = {
            "protocol": res["protocol"], "protocol_hash": res["protocol_hash"], "dir": f"eval/{name}",
            "num_videos": res.get("num_videos"), "num_frames": res.get("num_frames"),
            "standin": bool(res.get("standin", False))}
        main["standin"] = bool(main.get("standin", False)) or bool(res.get("standin", False))
    atomic_write_json(run_dir / METRICS, main, strict=True)
    return main


def merge_model_diagnostics(run_dir, diagnostics: dict[str, float], source: str) -> dict:
    """Add a model's own evaluation diagnostics (e.g. MRFA's keypoint-motion errors) to ``run_dir/metrics.json``:
    they join ``metrics`` (table columns) and are listed under ``model_diagnostics`` with where they come from."""
    run_dir = Path(run_dir)
    main = json.loads((run_dir / METRICS).read_text())
    clash = sorted(set(diagnostics) & set(main["metrics"]) - set(main.get("model_diagnostics", {}).get("names", [])))
    if clash:
        raise ValueError(f"model diagnostics {clash} would overwrite protocol metrics of the same name")
    main["metrics"].update({k: float(v) for k, v in diagnostics.items()})
    main["model_diagnostics"] = {"names": sorted(diagnostics), "source": source}
    atomic_write_json(run_dir / METRICS, main, strict=True)
    return main
