"""The leaderboard's tables, page and W&B run (the library behind ``python -m experiments.leaderboard``).

Input: for each checkpoint (label) and protocol, one finished evaluation directory (``per_frame.csv``,
``metrics.json``) — ``eval.reuse.evaluate_or_reuse`` found or made it. Output:

* ``leaderboard_table(entries, reference)`` — long rows (checkpoint, protocol, protocol hash, weights sha256,
  model identity, metric, value, Δ vs the reference checkpoint with its paired 95% CI (``eval.compare``: videos
  resampled, frame-weighted as ``metrics.json``; dataset metrics: no interval), reused or evaluated);
* ``page_html(...)`` — one self-contained page: a table per protocol (its full hash in the heading), one row per
  checkpoint (weights sha256), each metric's value and its Δ [CI] against the reference, best value in bold;
* ``log_wandb(...)`` — one W&B run (job type ``leaderboard``) with the rows as one ``wandb.Table``.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Optional

from eval.metrics import higher_is_better

SKIP_COLS = ("video_id", "frame", "num_frames", "nonfinite_frames")


def leaderboard_table(entries: list[dict], reference: str, num_resamples: int = 10_000):
    """``entries``: dicts with ``label``, ``protocol``, ``dir`` (evaluation folder), ``result`` (its metrics.json),
    ``weights_sha256``, ``reused``. Returns a DataFrame of long rows (one per checkpoint × protocol × metric)."""
    import pandas as pd

    from eval.compare import dataset_metric_values, paired_differences
    from eval.results import PER_FRAME

    rows = []
    for proto in dict.fromkeys(e["protocol"] for e in entries):
        group = [e for e in entries if e["protocol"] == proto]
        labels = [e["label"] for e in group]
        if reference not in labels:
            raise ValueError(f"reference={reference!r} is not one of the checkpoints ({', '.join(labels)})")
        per_frame = {e["label"]: pd.read_csv(Path(e["dir"]) / PER_FRAME) for e in group}
        ref_first = {reference: per_frame[reference], **{k: v for k, v in per_frame.items() if k != reference}}
        dataset = {e["label"]: dataset_metric_values(e["result"], per_frame[e["label"]].columns) for e in group}
        summary, _ = paired_differences(ref_first, reference, num_resamples=num_resamples, dataset_metrics=dataset) \
            if len(group) > 1 else (pd.DataFrame(columns=["model", "metric"]), None)
        s = summary.set_index(["model", "metric"]) if len(summary) else None
        for e in group:
            for m, value in e["result"]["metrics"].items():
                if "/" in m or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                d = s.loc[(e["label"], m)] if s is not None and (e["label"], m) in s.index else None
                rows.append({"checkpoint": e["label"], "ckpt": e.get("ckpt"), "protocol": proto,
                             "protocol_hash": e["result"]["protocol_hash"], "weights_sha256": e["weights_sha256"],
                             "model_id": e["result"].get("model_id"), "metric": m, "value": float(value),
                             "reference": reference, "delta": None if d is None else float(d.diff_mean),
                             "ci_low": None if d is None else _nan_none(d.ci_low),
                             "ci_high": None if d is None else _nan_none(d.ci_high),
                             "interval": None if d is None else d.interval,
                             "num_videos": e["result"].get("num_videos"), "standin": bool(e["result"].get("standin")),
                             "reused": bool(e["reused"]), "eval_dir": str(e["dir"])})
    return pd.DataFrame(rows)


def _nan_none(v) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def page_html(table, reference: str, title: str = "leaderboard", note: str = "") -> str:
    """One self-contained page (no scripts, no external assets) of ``leaderboard_table``'s rows."""
    from eval.report import CSS

    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=muted>Every checkpoint under every protocol. Δ = checkpoint − reference "
             f"<b>{html.escape(reference)}</b> of the headline numbers (mean over all scored frames, as metrics.json) "
             f"with a paired bootstrap 95% CI over videos; dataset metrics (FID, FVD) have no interval. "
             f"{html.escape(note)}</p>"]
    for proto, grp in table.groupby("protocol", sort=False):
        phash = grp.protocol_hash.iloc[0]
        metrics = list(dict.fromkeys(grp.metric))
        labels = list(dict.fromkeys(grp.checkpoint))
        best = {}
        for m in metrics:
            hib = higher_is_better(m)
            vals = grp[grp.metric == m].set_index("checkpoint").value
            if hib is not None and len(vals) > 1:
                best[m] = vals.idxmax() if hib else vals.idxmin()
        head = "".join(f"<th>{html.escape(m)}{' ↑' if higher_is_better(m) else ' ↓' if higher_is_better(m) is False else ''}"
                       f"</th>" for m in metrics)
        parts.append(f"<h2>{html.escape(str(proto))}</h2><p class=muted>protocol hash <code class=phash>{phash}</code>"
                     f"</p><div class=scroll><table class=leaderboard><thead><tr><th class=axis>checkpoint</th>{head}"
                     f"</tr></thead><tbody>")
        for label in labels:
            r = grp[grp.checkpoint == label].set_index("metric")
            cells = []
            for m in metrics:
                if m not in r.index:
                    cells.append("<td></td>")
                    continue
                x = r.loc[m]
                txt = _fmt(x.value)
                if label != reference and x.delta is not None and not (isinstance(x.delta, float) and math.isnan(x.delta)):
                    ci = ("no interval" if x.ci_low is None or (isinstance(x.ci_low, float) and math.isnan(x.ci_low))
                          else f"[{x.ci_low:+.3g}, {x.ci_high:+.3g}]")
                    txt += f"<br><span class=delta>Δ {x.delta:+.3g} {ci}</span>"
                cls = " class=best" if best.get(m) == label else ""
                cells.append(f"<td{cls}>{txt}</td>")
            first = r.iloc[0]
            ref = " (reference)" if label == reference else ""
            parts.append(f"<tr><td class='axis ckpt'><b>{html.escape(label)}</b>{ref}<br><span class=muted>"
                         f"{html.escape(str(first.ckpt))}</span><br><span class=muted>weights sha256</span> "
                         f"<code class=sha>{first.weights_sha256}</code><br><span class=muted>"
                         f"{'reused' if first.reused else 'evaluated'}: {html.escape(first.eval_dir)}"
                         f"{' · stand-in metrics (_STANDIN)' if first.standin else ''}</span></td>{''.join(cells)}</tr>")
        parts.append("</tbody></table></div>")
    css = CSS + (".delta{font-size:11px;color:#555}code.sha,code.phash{font-size:11px}"
                 "td.ckpt{white-space:normal;min-width:380px;max-width:520px;word-break:break-all}body{max-width:none}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{css}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def log_wandb(out: Path, table, reference: str, project: str = "portraitlab", entity: Optional[str] = None,
              mode: Optional[str] = "offline") -> Optional[str]:
    """One W&B run (job type ``leaderboard``) holding every row as the table ``leaderboard``; returns its dir."""
    import wandb

    from eval.dashboard import init_run, wandb_mode

    if wandb_mode(mode) == "disabled":
        return None
    run = init_run(project=project, entity=entity, group="leaderboard", job_type="leaderboard",
                   name=f"leaderboard-{Path(out).name}", dir=out, mode=mode,
                   config={"reference": reference, "checkpoints": sorted(set(table.checkpoint)),
                           "protocols": {p: h for p, h in zip(table.protocol, table.protocol_hash)},
                           "weights_sha256": {c: s for c, s in zip(table.checkpoint, table.weights_sha256)}})
    try:
        run.log({"leaderboard": wandb.Table(dataframe=table.astype(object).where(table.notna(), None)
                                            .reset_index(drop=True))})
        return run.dir
    finally:
        run.finish()
