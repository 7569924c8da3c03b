"""Checkpoint comparison — the library behind
``python -m experiments.compare ckpts=[A.ckpt,B.ckpt] eval_protocol=NAME`` (the CLI lives with the entry points).

Evaluates every checkpoint under the same protocol (``eval.runner``, resumable, one sub-folder each), then pairs
the per-video results on video id and reports, for each later checkpoint against the first (the baseline),

    Δ_m = mean_v (m_B(v) − m_A(v))  with a paired bootstrap 95% CI (``scipy.stats.bootstrap``, paired=True: videos
    resampled with replacement, the same draw for A and B; B = 10 000, fixed seed; percentile interval),

the share of videos on which B is better, and whether the CI excludes 0. Writes into ``out``: ``report.md``
(table + plots), ``paired_<metric>.png``, ``paired_differences.csv``, ``compare_grid.mp4`` / ``.png`` (source |
driving | A | B … | target, the first videos), ``report.html`` (the same as one self-contained page, ``eval.report``), and logs one W&B run (job type
``compare``, ``logger.wandb.project`` / ``logger.wandb.entity``; in the checkpoints' sweep group when they share
one) with the deltas and CIs as a ``wandb.Table``, the per-video results, the plots and the side-by-side video.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from eval.metrics import higher_is_better

log = logging.getLogger("portraitlab.compare")


def paired_ci(a, b, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of Δ = mean_v (b_v − a_v): ``scipy.stats.bootstrap`` with paired resampling (the same videos
    are drawn for a and b), percentile interval. Pairs with a NaN on either side are left out."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size == 0:
        return math.nan, math.nan, math.nan
    mean = float((b - a).mean())
    if a.size == 1 or np.all(b - a == (b - a)[0]):   # no spread: the interval is the point (scipy warns, gives NaN)
        return mean, mean, mean
    res = bootstrap((a, b), lambda x, y, axis: np.mean(y - x, axis=axis), paired=True, vectorized=True,
                    n_resamples=num_resamples, confidence_level=confidence, method="percentile",
                    random_state=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap(diffs, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean of paired differences (resampling the pairs)."""
    d = np.asarray(diffs, dtype=np.float64)
    return paired_ci(np.zeros_like(d), d, num_resamples=num_resamples, confidence=confidence, seed=seed)


def paired_differences(per_video: dict[str, "Any"], baseline: str, num_resamples: int = 10_000, seed: int = 0):
    """``per_video``: label -> DataFrame (video_id, metrics...). Returns (summary rows, long per-video diffs)."""
    import pandas as pd

    base = per_video[baseline].set_index("video_id")
    rows, long = [], []
    for label, df in per_video.items():
        if label == baseline:
            continue
        other = df.set_index("video_id")
        common = base.index.intersection(other.index)
        if len(common) == 0:
            raise ValueError(f"{label} and {baseline} share no video ids: not the same protocol/test set")
        metrics = [c for c in base.columns if c in other.columns and c not in ("num_frames", "nonfinite_frames")]
        for m in metrics:
            a = base.loc[common, m].astype(float).to_numpy()
            b = other.loc[common, m].astype(float).to_numpy()
            diff = b - a
            mean, lo, hi = paired_ci(a, b, num_resamples=num_resamples, seed=seed)
            hib = higher_is_better(m)
            ok = ~np.isnan(diff)
            better = float(np.mean(diff[ok] > 0 if hib else diff[ok] < 0)) if hib is not None and ok.any() else math.nan
            if math.isnan(lo) or hib is None or (lo <= 0 <= hi):
                verdict = "no significant difference"
            else:
                verdict = f"{label} better" if (lo > 0) == hib else f"{baseline} better"
            rows.append({"model": label, "baseline": baseline, "metric": m, "num_videos": int(ok.sum()),
                         "baseline_mean": float(np.nanmean(a)), "model_mean": float(np.nanmean(b)),
                         "diff_mean": mean, "ci_low": lo, "ci_high": hi, "share_better": better, "verdict": verdict})
            long.extend({"model": label, "metric": m, "video_id": v, "diff": d} for v, d in zip(common, diff))
    return pd.DataFrame(rows), pd.DataFrame(long)


def _plots(summary, long, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for m, grp in summary.groupby("metric", sort=False):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 2.8))
        for _, r in grp.iterrows():
            d = long[(long.metric == m) & (long.model == r.model)]["diff"].dropna()
            ax1.hist(d, bins=min(30, max(5, len(d) // 2)), alpha=0.6, label=r.model)
        ax1.axvline(0, color="k", lw=0.8)
        ax1.set_title(f"per-video Δ {m} (model − {grp.baseline.iloc[0]})", fontsize=9)
        ax1.legend(fontsize=7)
        y = np.arange(len(grp))
        ax2.errorbar(grp.diff_mean, y, xerr=[grp.diff_mean - grp.ci_low, grp.ci_high - grp.diff_mean], fmt="o",
                     capsize=4)
        ax2.axvline(0, color="k", lw=0.8)
        ax2.set_yticks(y, list(grp.model))
        ax2.set_title(f"mean Δ {m}, 95% paired bootstrap CI", fontsize=9)
        fig.tight_layout()
        p = out / f"paired_{m}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def report_markdown(summary, labels: dict[str, str], protocol: str, phash: str, plots: list[Path], grid: Optional[Path]) -> str:
    lines = [f"# Checkpoint comparison — protocol `{protocol}` (hash `{phash[:12]}`)", ""]
    for label, src in labels.items():
        lines.append(f"- **{label}**: `{src}`")
    lines += ["", "Δ = model − baseline per video, mean over videos; 95% CI from a paired bootstrap over videos "
              "(10 000 resamples). ↑ higher is better, ↓ lower is better.", "",
              "| model | metric | baseline | model | Δ | 95% CI | videos better | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        hib = higher_is_better(r.metric)
        arrow = "" if hib is None else (" ↑" if hib else " ↓")
        lines.append(f"| {r.model} | {r.metric}{arrow} | {r.baseline_mean:.4g} | {r.model_mean:.4g} | "
                     f"{r.diff_mean:+.4g} | [{r.ci_low:+.4g}, {r.ci_high:+.4g}] | "
                     f"{'' if math.isnan(r.share_better) else f'{100 * r.share_better:.0f}%'} | {r.verdict} |")
    lines.append("")
    if grid is not None:
        lines += [f"Side-by-side video: `{grid.name}` (columns: source | driving | "
                  + " | ".join(labels) + " | target).", f"![grid]({grid.with_suffix('.png').name})", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def side_by_side(models: dict[str, Any], datamodule, protocol, out: Path, num_videos: int = 4) -> Optional[Path]:
    """Animate the first videos with every model: rows = videos, columns source | driving | each model | target."""
    import torch
    from PIL import Image

    from eval.runner import animate_at_model_resolution, eval_samples, model_resolution, resize_frames
    from lit_models.common.visual import write_video

    samples, _ = eval_samples(datamodule, protocol, skip=set())
    rows = []
    size, method = int(protocol.resolution), str(protocol.resize)
    with torch.no_grad():
        for _, (vid, s) in zip(range(num_videos), samples):
            if "_error" in s:
                continue
            drv = s["driving"]
            cols = [resize_frames(s["source"][None], size, method).expand(drv.shape[0], -1, -1, -1),
                    resize_frames(drv, size, method)]
            for model in models.values():
                dev = next(iter(model.parameters()), torch.empty(0)).device
                pred = animate_at_model_resolution(model, s["source"][None].to(dev), drv[None].to(dev), size, method,
                                                   model_resolution(model))[2][0].cpu()
                cols.append(pred)
            tgt = s.get("target")
            cols.append(resize_frames(tgt, size, method) if tgt is not None else torch.zeros_like(cols[1]))
            rows.append(torch.cat(cols, dim=-1))
    if not rows:
        return None
    T = min(r.shape[0] for r in rows)
    grid = torch.cat([r[:T] for r in rows], dim=-2)
    frames = (grid.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    path = write_video(frames, out / "compare_grid.mp4")
    Image.fromarray(np.concatenate(list(frames[: min(4, T)]), axis=0)).save(out / "compare_grid.png")
    return path


def _labels(ckpts: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for c in ckpts:
        p = Path(c)
        base = p.parent.parent.name if p.parent.name == "checkpoints" else p.stem
        label, k = base, 1
        while label in labels:
            k += 1
            label = f"{base}_{k}"
        labels[label] = c
    return labels


def compare(ckpts: list[str], protocol, datamodule, out: str | Path, use_wandb: bool = False,
            wandb_mode: str = "offline", num_grid_videos: int = 4, models: Optional[dict] = None,
            num_resamples: int = 10_000, project: str = "portraitlab", entity: Optional[str] = None) -> dict:
    """Evaluate each checkpoint under ``protocol`` and compare them (first = baseline). ``models`` may pass
    already-built models keyed like the labels (tests); otherwise each checkpoint is loaded with ``load_model``."""
    import pandas as pd

    from datamodules.utils import atomic_write_text
    from eval.protocol import protocol_hash
    from eval.runner import PER_VIDEO, run_evaluation

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(ckpts)
    if models is None:
        from lit_models.registry import load_model

        from eval.faces import attach_identity_encoder

        models = {label: attach_identity_encoder(load_model(path)) for label, path in labels.items()}
    results, per_video = {}, {}
    for label, model in models.items():
        results[label] = run_evaluation(model, datamodule, protocol, out / label, loggers=[],
                                        ckpt=labels.get(label), progress=True)
        per_video[label] = pd.read_csv(out / label / PER_VIDEO)
    baseline = next(iter(models))
    summary, long = paired_differences(per_video, baseline, num_resamples=num_resamples)
    atomic_write_text(out / "paired_differences.csv", long.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    plots = _plots(summary, long, out)
    grid = side_by_side(models, datamodule, protocol, out, num_grid_videos) if num_grid_videos else None
    phash = protocol_hash(protocol)
    report = atomic_write_text(out / "report.md", report_markdown(summary, labels, str(protocol.name), phash, plots, grid))
    try:   # the same content as a self-contained page (eval.report)
        from eval.report import build_report

        build_report(out, title=f"comparison — {protocol.name}")
    except Exception as err:  # report.md and the CSVs above are the results
        log.warning("report.html not written: %s", err)
    if use_wandb:
        from eval.dashboard import log_compare_run

        log_compare_run(out, summary, per_video, labels, grid, plots, protocol_name=str(protocol.name),
                        protocol_hash=phash, project=project, entity=entity, mode=wandb_mode)
    return {"report": report, "summary": summary, "results": results, "grid": grid}


def new_command(argv: list[str]) -> str:
    """The ``experiments.compare`` command line for an old-style ``eval.compare CKPT_A CKPT_B [overrides]`` one."""
    ckpts = [a for a in argv if "=" not in a and not a.startswith("-")]
    overrides = [a for a in argv if "=" in a]
    head = f"ckpts=[{','.join(ckpts)}]" if ckpts else "ckpts=[A.ckpt,B.ckpt]"
    if not any(o.startswith("eval_protocol=") for o in overrides):
        overrides.insert(0, "eval_protocol=NAME")
    return " ".join(["python -m experiments.compare", head, *overrides])


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m eval.compare`` moved to ``python -m experiments.compare`` (a Hydra entry point; eval does not import
    the entry points' configs): print the equivalent command and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print("eval.compare is a library now; the command line is a Hydra entry point like train / evaluate:\n"
          f"  {new_command(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
