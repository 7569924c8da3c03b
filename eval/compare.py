"""Checkpoint comparison — the library behind
``python -m experiments.compare ckpts=[A.ckpt,B.ckpt] eval_protocol=NAME`` (the CLI lives with the entry points).

Evaluates every checkpoint under the same protocol (``eval.runner``, resumable, one sub-folder each; an existing
evaluation with the same model identity, protocol hash and data fingerprint is reused, ``eval.reuse``; one model in
memory at a time), then pairs the per-video results on video id and reports, for each later checkpoint against the
first (the baseline), the difference of the headline numbers of ``metrics.json``:

    Δ_m = Σ_v s_B(v) / Σ_v n_B(v) − Σ_v s_A(v) / Σ_v n_A(v)

(s = the sum of metric m over a video's scored frames, n = their count: the frame-weighted mean over all frames that
``metrics.json`` reports, over the videos both evaluations scored) with a paired bootstrap 95% CI
(``scipy.stats.bootstrap``, paired=True: videos resampled with replacement — the same draw for A and B, a video's
frames stay together — B = 10 000, fixed seed; percentile interval). Dataset metrics (FID, FVD, computed once over
all frames) get Δ of their ``metrics.json`` values and no interval (``interval`` column says so). Also the share of
videos on which B is better and whether the CI excludes 0. Writes into ``out``: ``report.md``
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
from typing import Any, Callable, Iterable, Optional

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


BOOTSTRAP_INTERVAL = "paired bootstrap over videos (frame-weighted, as metrics.json)"
NO_INTERVAL = "none: dataset metric (computed once over all frames)"


def video_sums(df, metrics: list[str]):
    """Per video and metric: (sum over scored frames, number of scored frames). ``df``: a ``per_frame.csv``
    (``video_id``, ``frame``, metrics; NaN = a frame the metric is undefined on, left out as ``metrics.json`` does)
    or a ``per_video.csv`` (per-video means with ``num_frames`` − ``nonfinite_frames`` frames each). Returns two
    DataFrames indexed by video id, columns = metrics."""
    import pandas as pd

    if "frame" in df.columns:
        vals = df[["video_id"] + metrics].copy()
        counts = vals[metrics].notna().astype(np.int64)
        counts.insert(0, "video_id", vals["video_id"])
        g = vals.groupby("video_id", sort=False)
        return g[metrics].sum(min_count=1).fillna(0.0), counts.groupby("video_id", sort=False)[metrics].sum()
    n = df["num_frames"].astype(float) - (df["nonfinite_frames"].astype(float) if "nonfinite_frames" in df else 0.0)
    means = df.set_index("video_id")[metrics].astype(float)
    n = pd.Series(n.to_numpy(), index=means.index)
    counts = means.notna().mul(n, axis=0)
    return means.fillna(0.0).mul(n, axis=0), counts


def weighted_paired_ci(sa, na, sb, nb, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                       ) -> tuple[float, float, float]:
    """(Δ, low, high) of Δ = Σ sb / Σ nb − Σ sa / Σ na over videos (frame-weighted means), with a paired percentile
    bootstrap over videos (``scipy.stats.bootstrap``, paired=True: one draw of videos for both sides). Videos with
    no scored frame on either side are left out."""
    from scipy.stats import bootstrap

    sa, na, sb, nb = (np.asarray(x, dtype=np.float64) for x in (sa, na, sb, nb))
    ok = (na > 0) & (nb > 0)
    sa, na, sb, nb = sa[ok], na[ok], sb[ok], nb[ok]
    if sa.size == 0:
        return math.nan, math.nan, math.nan

    def stat(xa, ya, xb, yb, axis=-1):
        return xb.sum(axis) / yb.sum(axis) - xa.sum(axis) / ya.sum(axis)

    delta = float(stat(sa, na, sb, nb))
    per_video = sb / nb - sa / na
    if sa.size == 1 or (np.allclose(per_video, per_video[0], rtol=0, atol=1e-12) and np.allclose(na, nb)
                        and np.allclose(na, na[0])):
        return delta, delta, delta   # no spread: the interval is the point (scipy warns, gives NaN)
    res = bootstrap((sa, na, sb, nb), stat, paired=True, vectorized=True, n_resamples=num_resamples,
                    confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed))
    return delta, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _verdict(lo, hi, hib, label, baseline) -> str:
    if lo is None or math.isnan(lo) or hib is None or (lo <= 0 <= hi):
        return "no significant difference"
    return f"{label} better" if (lo > 0) == hib else f"{baseline} better"


def paired_differences(per_video: dict[str, "Any"], baseline: str, num_resamples: int = 10_000, seed: int = 0,
                       dataset_metrics: Optional[dict[str, dict[str, float]]] = None):
    """``per_video``: label -> DataFrame — a ``per_frame.csv`` (exact frame weights) or a ``per_video.csv`` (weights
    from ``num_frames``). ``dataset_metrics``: label -> {metric: value} of metrics with no per-frame values (FID,
    FVD), compared without an interval. Returns (summary rows, long per-video diffs of the per-video means)."""
    import pandas as pd

    dataset_metrics = dataset_metrics or {}
    skip = ("frame", "num_frames", "nonfinite_frames", "video_id")
    base_df = per_video[baseline]
    rows, long = [], []
    for label, df in per_video.items():
        if label == baseline:
            continue
        metrics = [c for c in base_df.columns if c in df.columns and c not in skip]
        sa, na = video_sums(base_df, metrics)
        sb, nb = video_sums(df, metrics)
        common = sa.index.intersection(sb.index)
        if len(common) == 0:
            raise ValueError(f"{label} and {baseline} share no video ids: not the same protocol/test set")
        for m in metrics:
            a_s, a_n = sa.loc[common, m].to_numpy(float), na.loc[common, m].to_numpy(float)
            b_s, b_n = sb.loc[common, m].to_numpy(float), nb.loc[common, m].to_numpy(float)
            mean, lo, hi = weighted_paired_ci(a_s, a_n, b_s, b_n, num_resamples=num_resamples, seed=seed)
            ok = (a_n > 0) & (b_n > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                diff = np.where(ok, b_s / np.where(b_n > 0, b_n, 1) - a_s / np.where(a_n > 0, a_n, 1), np.nan)
            hib = higher_is_better(m)
            better = float(np.mean(diff[ok] > 0 if hib else diff[ok] < 0)) if hib is not None and ok.any() else math.nan
            rows.append({"model": label, "baseline": baseline, "metric": m, "num_videos": int(ok.sum()),
                         "num_frames_baseline": int(a_n[ok].sum()), "num_frames_model": int(b_n[ok].sum()),
                         "baseline_mean": float(a_s[ok].sum() / a_n[ok].sum()) if ok.any() else math.nan,
                         "model_mean": float(b_s[ok].sum() / b_n[ok].sum()) if ok.any() else math.nan,
                         "diff_mean": mean, "ci_low": lo, "ci_high": hi, "interval": BOOTSTRAP_INTERVAL,
                         "share_better": better, "verdict": _verdict(lo, hi, hib, label, baseline)})
            long.extend({"model": label, "metric": m, "video_id": v, "diff": d} for v, d in zip(common, diff))
        for m, a in (dataset_metrics.get(baseline) or {}).items():
            b = (dataset_metrics.get(label) or {}).get(m)
            if b is None or a is None:
                continue
            rows.append({"model": label, "baseline": baseline, "metric": m, "num_videos": len(common),
                         "num_frames_baseline": math.nan, "num_frames_model": math.nan,
                         "baseline_mean": float(a), "model_mean": float(b), "diff_mean": float(b) - float(a),
                         "ci_low": math.nan, "ci_high": math.nan, "interval": NO_INTERVAL,
                         "share_better": math.nan, "verdict": "no interval"})
    return pd.DataFrame(rows), pd.DataFrame(long, columns=["model", "metric", "video_id", "diff"])


def _plots(summary, long, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    summary = summary[summary["interval"] == BOOTSTRAP_INTERVAL] if "interval" in summary else summary
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
    lines += ["", "Δ = model − baseline of the headline numbers (`metrics.json`: the mean over all scored frames, "
              "frame-weighted), over the videos both scored; 95% CI from a paired bootstrap over videos (a video's "
              "frames resampled together, 10 000 resamples). Dataset metrics (FID, FVD) are computed once over all "
              "frames: Δ without an interval. ↑ higher is better, ↓ lower is better.", "",
              "| model | metric | baseline | model | Δ | 95% CI | videos better | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        hib = higher_is_better(r.metric)
        arrow = "" if hib is None else (" ↑" if hib else " ↓")
        ci = "no interval" if math.isnan(r.ci_low) else f"[{r.ci_low:+.4g}, {r.ci_high:+.4g}]"
        lines.append(f"| {r.model} | {r.metric}{arrow} | {r.baseline_mean:.4g} | {r.model_mean:.4g} | "
                     f"{r.diff_mean:+.4g} | {ci} | "
                     f"{'' if math.isnan(r.share_better) else f'{100 * r.share_better:.0f}%'} | {r.verdict} |")
    lines.append("")
    if grid is not None:
        lines += [f"Side-by-side video: `{grid.name}` (columns: source | driving | "
                  + " | ".join(labels) + " | target).", f"![grid]({grid.with_suffix('.png').name})", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def grid_base(datamodule, protocol, num_videos: int = 4) -> list[dict]:
    """The first videos of the protocol's test set at its resolution: source, driving, target columns and the
    native-size inputs every model animates (``grid_column``)."""
    import torch

    from eval.resize import resize_frames
    from eval.samples import eval_samples

    samples, _ = eval_samples(datamodule, protocol, skip=set())
    size, method = int(protocol.resolution), str(protocol.resize)
    out = []
    for _, (vid, s) in zip(range(num_videos), samples):
        if "_error" in s:
            continue
        drv = s["driving"]
        tgt = s.get("target")
        out.append({"video_id": vid, "source": s["source"], "driving": drv,
                    "cols": [resize_frames(s["source"][None], size, method).expand(drv.shape[0], -1, -1, -1),
                             resize_frames(drv, size, method)],
                    "target": resize_frames(tgt, size, method) if tgt is not None else torch.zeros_like(
                        resize_frames(drv, size, method))})
    return out


def grid_column(model, base: list[dict], protocol) -> list:
    """``model``'s frames for each ``grid_base`` video (CPU tensors), so the grid needs one model at a time."""
    import torch

    from eval.resize import animate_at_model_resolution, model_resolution

    size, method = int(protocol.resolution), str(protocol.resize)
    cols = []
    with torch.no_grad():
        for b in base:
            dev = next(iter(model.parameters()), torch.empty(0)).device
            cols.append(animate_at_model_resolution(model, b["source"][None].to(dev), b["driving"][None].to(dev), size,
                                                    method, model_resolution(model))[2][0].cpu())
    return cols


def write_grid(base: list[dict], columns: list[list], out: Path) -> Optional[Path]:
    """Rows = videos, columns source | driving | each model | target → ``compare_grid.mp4`` / ``.png``."""
    import torch
    from PIL import Image

    from lit_models.common.visual import write_video

    if not base:
        return None
    rows = [torch.cat(b["cols"] + [c[i] for c in columns] + [b["target"]], dim=-1) for i, b in enumerate(base)]
    T = min(r.shape[0] for r in rows)
    grid = torch.cat([r[:T] for r in rows], dim=-2)
    frames = (grid.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    path = write_video(frames, out / "compare_grid.mp4")
    Image.fromarray(np.concatenate(list(frames[: min(4, T)]), axis=0)).save(out / "compare_grid.png")
    return path


def side_by_side(models: dict[str, Any], datamodule, protocol, out: Path, num_videos: int = 4) -> Optional[Path]:
    """Animate the first videos with every model: rows = videos, columns source | driving | each model | target."""
    base = grid_base(datamodule, protocol, num_videos)
    return write_grid(base, [grid_column(m, base, protocol) for m in models.values()], out)


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
            num_resamples: int = 10_000, project: str = "portraitlab", entity: Optional[str] = None,
            load: Optional[Callable[[str, str], Any]] = None, reuse_dirs: Iterable[str | Path] = (),
            run_kw: Optional[dict] = None) -> dict:
    """Evaluate each checkpoint under ``protocol`` and compare them (first = baseline).

    One model in memory at a time: ``load(label, path)`` builds each (default ``load_model`` + the identity
    encoder), it is evaluated — or an existing evaluation with the same model identity, protocol hash and data
    fingerprint is reused (``eval.reuse``: the checkpoint's run directory, ``out/<label>``, ``reuse_dirs``) — its
    grid column is rendered and it is freed before the next. ``models`` may pass already-built models keyed like the
    labels (tests). ``run_kw``: ``run_evaluation``'s sampling choices (seed, precision, preprocess)."""
    import gc

    import pandas as pd

    from datamodules.utils import atomic_write_text
    from eval.protocol import protocol_hash
    from eval.reuse import evaluate_or_reuse
    from eval.results import PER_FRAME

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(ckpts)
    if models is not None:
        load = lambda label, path: models[label]   # noqa: E731
    elif load is None:
        def load(label, path):
            from eval.faces import attach_identity_encoder
            from lit_models.registry import load_model

            return attach_identity_encoder(load_model(path))
    base = grid_base(datamodule, protocol, num_grid_videos) if num_grid_videos else []
    results, per_frame, columns, dataset_values, reused = {}, {}, [], {}, {}
    for label, path in labels.items():
        model = load(label, path)
        results[label], src, reused[label] = evaluate_or_reuse(model, datamodule, protocol, out / label, ckpt=path,
                                                               search=[*reuse_dirs, out / label], **(run_kw or {}))
        per_frame[label] = pd.read_csv(src / PER_FRAME)
        dataset_values[label] = dataset_metric_values(results[label], per_frame[label].columns)
        if base:
            columns.append(grid_column(model, base, protocol))
        del model
        gc.collect()
        _empty_cuda_cache()
    baseline = next(iter(labels))
    summary, long = paired_differences(per_frame, baseline, num_resamples=num_resamples, dataset_metrics=dataset_values)
    atomic_write_text(out / "paired_differences.csv", long.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    plots = _plots(summary, long, out)
    grid = write_grid(base, columns, out) if base else None
    phash = protocol_hash(protocol)
    report = atomic_write_text(out / "report.md", report_markdown(summary, labels, str(protocol.name), phash, plots, grid))
    try:   # the same content as a self-contained page (eval.report)
        from eval.report import build_report

        build_report(out, title=f"comparison — {protocol.name}")
    except Exception as err:  # report.md and the CSVs above are the results
        log.warning("report.html not written: %s", err)
    if use_wandb:
        from eval.dashboard import log_compare_run

        per_video = {label: pd.read_csv(Path(results[label].get("_dir", out / label)) / "per_video.csv")
                     for label in labels}
        log_compare_run(out, summary, per_video, labels, grid, plots, protocol_name=str(protocol.name),
                        protocol_hash=phash, project=project, entity=entity, mode=wandb_mode)
    return {"report": report, "summary": summary, "results": results, "grid": grid, "reused": reused}


def dataset_metric_values(result: dict, frame_columns) -> dict[str, float]:
    """The dataset metrics of a ``metrics.json`` (FID, FVD …: computed once over all frames, no per-frame values):
    its metrics that are the protocol's (``protocol_config.metrics``; with a backend or ``_STANDIN`` suffix, the
    family before the first ``_``) and have no ``per_frame.csv`` column."""
    declared = {str(m) for m in (result.get("protocol_config") or {}).get("metrics") or []}
    cols = set(frame_columns)
    return {k: float(v) for k, v in (result.get("metrics") or {}).items()
            if k not in cols and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k in declared or k.split("_")[0] in declared)}


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def new_command(argv: list[str]) -> str:
    """The ``experiments.compare`` command line for an old-style ``eval.compare CKPT_A CKPT_B [overrides]`` one."""
    ckpts = [a for a in argv if "=" not in a and not a.startswith("-")]
    overrides = [a for a in argv if "=" in a]
    head = f"ckpts=[{','.join(ckpts)}]" if ckpts else "ckpts=[A.ckpt,B.ckpt]"
    if not any(o.startswith("eval_protocol=") for o in overrides):
        overrides.insert(0, "eval_protocol=NAME")
    return " ".join(["python -m experiments.compare", head, *overrides])


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m eval.compare`` is not a command: the command line is ``python -m experiments.compare`` (a Hydra
    entry point; eval does not import the entry points' configs). Print the equivalent command and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    print("eval.compare is a library; the command line is a Hydra entry point like train / evaluate:\n"
          f"  {new_command(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
