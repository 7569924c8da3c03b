"""A self-contained local report page: ``python -m eval.report RUN_OR_SWEEP_DIR [--out report.html]``.

Writes one ``report.html`` (default: inside the directory given) that opens from disk with no server and no network:
every asset is inlined (plots as base64 PNG, videos as base64 H.264 MP4 data URIs, no scripts or fonts fetched).
It holds, for a sweep (or a single run, or a checkpoint comparison written by ``eval.compare``):

* the ablation table (``eval.table``: one row per axis-value combination, mean ± std over seeds, best in bold),
  one table per protocol hash;
* metric-vs-axis plots: one panel per metric in a grid, error bars = std over seeds (``eval.table.plot_axes``);
* loss curves from each run's CSV log (``csv/version_*/metrics.csv``): one panel per logged ``train/…`` key,
  one line per run;
* the evaluation video grids (``eval_grid.mp4`` of every run and extra protocol), playable inline;
* per run: its axis values, seed, protocol and protocol hash, checkpoint, and the resolved ``config.yaml``;
* for a comparison directory (``summary.csv`` from ``eval.compare``): the paired-difference table with bootstrap
  CIs, the per-video differences and the side-by-side video.

The local files are the source of truth; the page only renders them.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional


from eval.table import _arrow, _fmt, aggregate, find_runs, load_run, plot_axes

log = logging.getLogger("portraitlab.report")

MAX_VIDEO_BYTES = 25 * 2**20   # larger videos are linked by path instead of inlined
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1b1b;max-width:1400px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}.muted{color:#666;font-size:13px}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
th{background:#f0f3f7}td.axis,th.axis{text-align:left}td.best{font-weight:700;background:#eef8ee}
img.plot{max-width:100%;border:1px solid #eee}.videos{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-size:12px;color:#444;max-width:520px;word-break:break-all}
video{max-width:520px;image-rendering:pixelated;background:#000}
details{margin:6px 0}summary{cursor:pointer}pre{background:#f7f7f7;padding:8px;font-size:12px;max-height:420px;overflow:auto}
"""


# ---- assets -----------------------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_data_uri(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return "data:image/png;base64," + _b64(data)


def video_tag(path: Path, caption: str) -> str:
    """An inline ``<video>`` (H.264 MP4 as a data URI) with a caption; too-large files are named, not inlined."""
    size = path.stat().st_size
    cap = f"<figcaption>{html.escape(caption)}</figcaption>"
    if size > MAX_VIDEO_BYTES:
        return f"<figure><p class=muted>{html.escape(str(path))} ({size / 2**20:.0f} MiB) not inlined</p>{cap}</figure>"
    width = ""
    try:   # small grids (64² models) are shown enlarged, up to 520 px wide
        import av

        with av.open(str(path)) as c:
            w = int(c.streams.video[0].width)
        width = f" width={w * max(1, min(4, 520 // max(1, w)))}"
    except Exception:  # the browser sizes it itself
        pass
    return (f"<figure><video controls loop muted playsinline preload=auto{width} "
            f"src=\"data:video/mp4;base64,{_b64(path.read_bytes())}\"></video>{cap}</figure>")


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


# ---- loss curves ------------------------------------------------------------------------------------------------
def read_csv_logs(run_dir: Path):
    """Lightning's CSVLogger rows of a run (all ``csv/version_*`` folders, in order; a resumed run appends one), or
    None. Returns a DataFrame with a ``step`` column."""
    import pandas as pd

    files = sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1])
                   if p.parent.name.split("_")[-1].isdigit() else 0)
    frames = [pd.read_csv(f) for f in files if f.stat().st_size > 0]
    frames = [f for f in frames if "step" in f.columns and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def loss_keys(df) -> list[str]:
    """The curves worth plotting: training losses first (``train/loss…``), then the other ``train/`` keys and lr."""
    cols = [c for c in df.columns if c not in ("step", "epoch") and df[c].notna().sum() >= 1]
    loss = [c for c in cols if "loss" in c]
    rest = [c for c in cols if c not in loss and (c.startswith("train") or c.startswith("lr"))]
    return loss + rest


def plot_loss_curves(curves: dict[str, Any], ncols: int = 3) -> Optional[bytes]:
    """One panel per key, one line per run (label → DataFrame). Returns PNG bytes, or None when nothing to plot."""
    keys: list[str] = []
    for df in curves.values():
        keys += [k for k in loss_keys(df) if k not in keys]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axs.flat, keys):
        for label, df in curves.items():
            if key not in df.columns:
                continue
            d = df[["step", key]].dropna()
            if len(d):
                ax.plot(d["step"], d[key], marker="." if len(d) < 20 else None, lw=1.2, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axs.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 6), 1, 1))
    else:
        fig.tight_layout()
    return _fig_png(fig)


# ---- sections ---------------------------------------------------------------------------------------------------
def _run_label(r: dict) -> str:
    vals = ", ".join(f"{a.split('.')[-1]}={v}" for a, v in r["values"].items())
    return f"{vals}, seed={r['seed']}" if r.get("seed") is not None else vals


def table_html(t: dict) -> str:
    head = (f"<h3>protocol <code>{html.escape(str(t['protocol']))}</code> — hash "
            f"<code>{html.escape(str(t['protocol_hash']))}</code></h3>")
    for name, h in (t.get("extra") or {}).items():
        head += (f"<p class=muted><code>{html.escape(name)}/…</code> columns: protocol "
                 f"<code>{html.escape(name)}</code>, hash <code>{html.escape(str(h))}</code></p>")
    if t.get("standin"):
        head += "<p><b>STAND-IN networks</b> in *_STANDIN columns: not comparable to published numbers.</p>"
    cols = "".join(f"<th class=axis>{html.escape(a)}</th>" for a in t["axes"]) + "<th>n</th><th class=axis>seeds</th>"
    cols += "".join(f"<th>{html.escape(m + _arrow(m))}</th>" for m in t["metrics"])
    body = []
    for r in t["rows"]:
        cells = "".join(f"<td class=axis>{html.escape(str(r['values'][a]))}</td>" for a in t["axes"])
        cells += f"<td>{r['n']}</td><td class=axis>{html.escape(' '.join(map(str, r['seeds'])))}</td>"
        for m in t["metrics"]:
            s = _fmt(r["mean"][m], r["std"][m], r["n"], r["count"].get(m))
            best = m in t["best"] and r["mean"][m] == t["best"][m]
            cells += f"<td{' class=best' if best else ''}>{html.escape(s)}</td>"
        body.append(f"<tr>{cells}</tr>")
    return (head + f"<div class=scroll><table class=ablation data-protocol=\"{html.escape(str(t['protocol']))}\">"
            f"<thead><tr>{cols}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            "<p class=muted>mean ± std over seeds (n runs); best per "
            "column in bold; ↑ higher is better, ↓ lower is better.</p>")


def _videos(run_dir: Path) -> list[tuple[str, Path]]:
    out = []
    if (run_dir / "eval_grid.mp4").is_file():
        out.append(("", run_dir / "eval_grid.mp4"))
    for p in sorted((run_dir / "eval").glob("*/eval_grid.mp4")):
        out.append((p.parent.name, p))
    return out


def run_details_html(r: dict, root: Path) -> str:
    d: Path = r["dir"]
    rel = d.relative_to(root) if d != root and root in d.parents else Path(d.name)
    metrics = json.loads((d / "metrics.json").read_text())
    cfg_text = (d / "config.yaml").read_text() if (d / "config.yaml").is_file() else "(no config.yaml)"
    rows = [("run", str(rel)), ("axes", ", ".join(f"{a}={v}" for a, v in r["values"].items())),
            ("seed", str(r.get("seed"))), ("protocol", str(metrics.get("protocol"))),
            ("protocol hash", str(metrics.get("protocol_hash"))), ("checkpoint", str(metrics.get("ckpt")))]
    for name, extra in (metrics.get("extra_protocols") or {}).items():
        rows.append((f"extra protocol {name}", f"{extra.get('protocol')} (hash {extra.get('protocol_hash')})"))
    if metrics.get("model_diagnostics"):
        rows.append(("model diagnostics", ", ".join(metrics["model_diagnostics"].get("names", []))))
    info = "".join(f"<tr><th class=axis>{html.escape(k)}</th><td class=axis><code>{html.escape(v)}</code></td></tr>"
                   for k, v in rows)
    vals = "".join(f"<tr><td class=axis>{html.escape(k)}</td><td>{'–' if v is None else f'{v:.6g}' if isinstance(v, float) else html.escape(str(v))}</td></tr>"
                   for k, v in metrics.get("metrics", {}).items())
    return (f"<details class=run><summary><b>{html.escape(_run_label(r))}</b> — <code>{html.escape(str(rel))}</code>"
            f"</summary><table>{info}</table><table><tr><th class=axis>metric</th><th>value</th></tr>{vals}</table>"
            f"<pre>{html.escape(cfg_text)}</pre></details>")


def _ci_text(lo: float, hi: float) -> str:
    return "no interval" if lo is None or (isinstance(lo, float) and math.isnan(lo)) else f"[{lo:+.4g}, {hi:+.4g}]"


def compare_html(d: Path) -> str:
    """The content of an ``eval.compare`` directory: summary with paired CIs, per-video deltas, side-by-side video."""
    import pandas as pd

    s = pd.read_csv(d / "summary.csv")
    parts = ["<h2>Checkpoint comparison</h2><p class=muted>Δ = model − baseline of the headline numbers (the mean "
             "over all scored frames, as metrics.json), over the videos both scored; 95% CI from a paired bootstrap "
             "over videos (a video's frames resampled together). Dataset metrics (FID, FVD): no interval.</p>"
             "<table class=compare><thead><tr><th class=axis>model</th>"
             "<th class=axis>metric</th><th>baseline</th><th>model</th><th>Δ</th><th>95% CI</th><th>videos better</th>"
             "<th class=axis>verdict</th></tr></thead><tbody>"]
    for _, r in s.iterrows():
        better = "" if pd.isna(r.share_better) else f"{100 * r.share_better:.0f}%"
        parts.append(f"<tr><td class=axis>{html.escape(str(r.model))}</td><td class=axis>"
                     f"{html.escape(str(r.metric) + _arrow(str(r.metric)))}</td><td>{r.baseline_mean:.4g}</td>"
                     f"<td>{r.model_mean:.4g}</td><td>{r.diff_mean:+.4g}</td><td>{_ci_text(r.ci_low, r.ci_high)}</td>"
                     f"<td>{better}</td><td class=axis>{html.escape(str(r.verdict))}</td></tr>")
    parts.append("</tbody></table>")
    for p in sorted(d.glob("paired_*.png")):
        parts.append(f"<img class=plot alt=\"{html.escape(p.stem)}\" src=\"{png_data_uri(p)}\">")
    if (d / "compare_grid.mp4").is_file():
        parts.append("<h3>Side by side</h3><div class=videos>"
                     + video_tag(d / "compare_grid.mp4", "source | driving | each model | target") + "</div>")
    if (d / "paired_differences.csv").is_file():
        long = pd.read_csv(d / "paired_differences.csv")
        if len(long):
            wide = long.pivot_table(index="video_id", columns=["model", "metric"], values="diff")
            wide.columns = [f"Δ {m} ({mod})" for mod, m in wide.columns]
            parts.append("<details><summary>per-video differences</summary>"
                         + wide.to_html(float_format=lambda v: f"{v:+.4g}", classes="per_video") + "</details>")
    return "".join(parts)


# ---- the page ---------------------------------------------------------------------------------------------------
def build_report(path: str | Path, out: Optional[str | Path] = None, title: Optional[str] = None) -> Path:
    """Write the report page for a run / sweep / comparison directory; returns its path."""
    root = Path(path).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (give a run, sweep or eval.compare output directory)")
    out = Path(out) if out else root / "report.html"
    is_compare = (root / "summary.csv").is_file() and (root / "paired_differences.csv").is_file()
    run_dirs = [] if is_compare else find_runs([root])
    if not run_dirs and not is_compare:
        raise FileNotFoundError(f"no metrics.json under {root}: evaluate the runs first (experiments.evaluate)")
    runs = [load_run(r) for r in run_dirs]
    body = [f"<h1>{html.escape(title or root.name)}</h1><p class=muted><code>{html.escape(str(root))}</code> — "
            f"written {time.strftime('%Y-%m-%d %H:%M:%S')}; {len(runs)} run(s)</p>"]
    if is_compare:
        body.append(compare_html(root))
    if runs:
        tables = aggregate(runs)
        body.append("<h2 id=table>Ablation table</h2>" + "".join(table_html(t) for t in tables))
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pngs = plot_axes(tables, Path(tmp))
            if pngs:
                body.append("<h2 id=plots>Metrics against the ablation axes</h2><p class=muted>one panel per metric; "
                            "error bars = std over seeds.</p>")
                body += [f"<img class=plot alt=\"{html.escape(p.stem)}\" src=\"{png_data_uri(p)}\">" for p in pngs]
        curves = {}
        for r in runs:
            df = read_csv_logs(r["dir"])
            if df is not None:
                curves[_run_label(r)] = df
        body.append("<h2 id=curves>Training curves</h2>")
        png = plot_loss_curves(curves) if curves else None
        body.append(f"<img class=plot alt=loss_curves src=\"{png_data_uri(png)}\">" if png else
                    "<p class=muted>no CSV training logs (csv/version_*/metrics.csv) in these runs.</p>")
        vids = [(r, name, p) for r in runs for name, p in _videos(r["dir"])]
        body.append("<h2 id=videos>Evaluation videos</h2>")
        if vids:
            body.append("<p class=muted>rows = test videos; columns = source | driving | generated | target.</p>"
                        "<div class=videos>" + "".join(video_tag(p, _run_label(r) + (f" — {name}" if name else ""))
                                                       for r, name, p in vids) + "</div>")
        else:
            body.append("<p class=muted>no eval_grid.mp4 in these runs.</p>")
        body.append("<h2 id=runs>Runs: protocol and config</h2>" + "".join(run_details_html(r, root) for r in runs))
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title or root.name)} — "
            f"portraitlab report</title><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            f"img-src data:; media-src data:; style-src 'unsafe-inline'\"><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    from toolbox.io import atomic_write_text

    return atomic_write_text(out, page)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a run directory, a sweep directory or an eval.compare output directory")
    ap.add_argument("--out", default=None, help="where to write the page (default: PATH/report.html)")
    ap.add_argument("--title", default=None)
    a = ap.parse_args(argv)
    out = build_report(a.path, a.out, a.title)
    print(f"report: {out}  ({out.stat().st_size / 2**20:.1f} MiB, self-contained: open it in any browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
