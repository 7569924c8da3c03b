"""Result tables: ``python -m eval.table RUN_DIRS_OR_SWEEP_DIR [...]``.

Finds every run directory (one holding ``metrics.json``; its ``config.yaml`` gives the ``axes`` and the ``seed``),
groups runs by their ablation-axis values (and protocol: numbers of two protocols never share a table), and
writes into ``--out`` (default: the single directory given):

* ``table.md`` / ``table.csv`` / ``table.tex`` — mean ± std over seeds (n in its own column), the best value per
  metric marked (bold; direction per metric: lower is better for l1/lpips/fid/akd/aed/mkr, higher for
  psnr/ssim/id);
* ``plot_<axis>.png`` — each metric against each ablation axis (error bars = std over seeds);
* a ``wandb.Table`` of the same rows in a W&B run (offline unless W&B is turned on; ``--no-wandb`` skips it).

``SweepTableCallback`` runs the same at the end of a Hydra multirun (``hydra.callbacks.table._target_:
eval.table.SweepTableCallback``) and prints the table's path.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from eval.metrics import higher_is_better

log = logging.getLogger("portraitlab.table")


# ---- collecting runs --------------------------------------------------------------------------------------------
def find_runs(paths: list[str | Path]) -> list[Path]:
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.json").is_file():
            runs.append(p)
        elif p.is_dir():
            runs.extend(sorted(m.parent for m in p.rglob("metrics.json") if ".hydra" not in m.parts))
        else:
            raise FileNotFoundError(f"{p}: neither a run directory (with metrics.json) nor a directory of runs")
    seen, out = set(), []
    for r in runs:
        if r.resolve() not in seen:
            seen.add(r.resolve())
            out.append(r)
    # an extra protocol's results (run/eval/<name>/metrics.json) belong to their run, whose metrics.json has them
    return [r for r in out if not (r.parent.name == "eval" and (r.parent.parent / "metrics.json").is_file())]


def _axis_value(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):           # a config group (model=...) is named by its `name`
        return node.get("name", json.dumps(node, sort_keys=True)[:40])
    if isinstance(node, list):
        return str(node)
    return node


def _metric_order(metrics: dict) -> list[str]:
    """Columns in the order the protocol lists its metrics (then extra protocols', each in its own order)."""
    listed = [str(n) for n in ((metrics.get("protocol_config") or {}).get("metrics") or [])]

    def rank(name: str):
        extra, _, base = name.rpartition("/")
        hits = [n for n in listed if base == n or base.startswith(n + "_")]
        best = max(hits, key=len) if hits else None
        return (extra != "", extra, listed.index(best) if best else len(listed))   # stable: ties keep their order

    return sorted(metrics.get("metrics", {}), key=rank)


# evaluation coverage counts of metrics.json (eval.runner): columns of a table when any of its runs has one > 0
COVERAGE_COUNTS = ("nonfinite_videos", "nonfinite_frames", "skipped_videos", "upscaled_videos")


def load_run(run_dir: Path, axes: Optional[list[str]] = None) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["metrics"] = {k: metrics.get("metrics", {})[k] for k in _metric_order(metrics)}
    for k in COVERAGE_COUNTS:
        if k in metrics and k not in metrics["metrics"]:
            metrics["metrics"][k] = metrics[k]
    cfg: dict = {}
    if (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        from lit_models.optim import upgrade_run_config

        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)  # type: ignore[assignment]
        cfg = upgrade_run_config(cfg)   # runs saved with the flat model.lr / betas / … keys
    run_axes = list(axes if axes is not None else cfg.get("axes") or [])
    if not run_axes:
        run_axes = ["model"]
        cfg.setdefault("model", {"name": metrics.get("model", run_dir.name)})
    return {"dir": run_dir, "axes": run_axes, "values": {a: _axis_value(cfg, a) for a in run_axes},
            "seed": cfg.get("seed"), "protocol": metrics.get("protocol"), "protocol_hash": metrics.get("protocol_hash"),
            "extra": {k: v.get("protocol_hash") for k, v in sorted((metrics.get("extra_protocols") or {}).items())},
            "standin": bool(metrics.get("standin", False)), "metrics": dict(metrics.get("metrics", {}))}


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def aggregate(runs: list[dict]) -> list[dict]:
    """One table per protocol (hash): rows = axis-value combinations, mean ± std over the runs (seeds) in each."""
    tables: dict[tuple, dict] = {}
    for r in runs:
        key = (r["protocol"], r["protocol_hash"], tuple(r.get("extra", {}).items()), tuple(r["axes"]))
        t = tables.setdefault(key, {"protocol": r["protocol"], "protocol_hash": r["protocol_hash"],
                                    "extra": dict(r.get("extra", {})),
                                    "axes": list(r["axes"]), "metrics": [], "groups": {}, "standin": False})
        t["standin"] |= r["standin"]
        for m in r["metrics"]:
            if m not in t["metrics"]:
                t["metrics"].append(m)
        t["groups"].setdefault(tuple(r["values"][a] for a in r["axes"]), []).append(r)
    out = []
    for t in tables.values():
        members_all = [r for g in t["groups"].values() for r in g]
        t["metrics"] = [m for m in t["metrics"] if m not in COVERAGE_COUNTS
                        or any((r["metrics"].get(m) or 0) > 0 for r in members_all)]
        rows = []
        for values in sorted(t["groups"], key=lambda vs: tuple(_sort_key(v) for v in vs)):
            members = t["groups"][values]
            row = {"values": dict(zip(t["axes"], values)), "n": len(members),
                   "seeds": sorted((m["seed"] for m in members if m["seed"] is not None), key=_sort_key),
                   "mean": {}, "std": {}, "count": {}}
            for m in t["metrics"]:
                xs = np.array([float(r["metrics"][m]) for r in members if m in r["metrics"]
                               and r["metrics"][m] is not None], dtype=np.float64)
                xs = xs[~np.isnan(xs)]
                row["mean"][m] = float(xs.mean()) if xs.size else math.nan
                row["std"][m] = float(xs.std(ddof=1)) if xs.size > 1 else (0.0 if xs.size else math.nan)
                row["count"][m] = int(xs.size)     # runs with a value (NaN / absent ones are left out)
            rows.append(row)
        t["rows"] = rows
        t["best"] = {}
        for m in t["metrics"]:
            hib = higher_is_better(m)
            vals = [r["mean"][m] for r in rows if not math.isnan(r["mean"][m])]
            if hib is None or len(vals) < 2:
                continue
            t["best"][m] = max(vals) if hib else min(vals)
        out.append(t)
    return out


# ---- rendering --------------------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, n: int, count: Optional[int] = None) -> str:
    """``mean ± std``; when only ``count`` < ``n`` of the row's runs have a value, that is said: ``(n=count)``."""
    if math.isnan(mean):
        return "–"
    digits = 4 if abs(mean) < 10 else 2
    count = n if count is None else count
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if count > 1 else "") + (f" (n={count})" if count < n else "")


def _arrow(m: str) -> str:
    hib = higher_is_better(m)
    return "" if hib is None else (" ↑" if hib else " ↓")


def to_markdown(tables: list[dict]) -> str:
    parts = []
    for t in tables:
        head = f"### protocol `{t['protocol']}` (hash `{str(t['protocol_hash'])[:12]}`)"
        for name, h in (t.get("extra") or {}).items():
            head += f" + `{name}/…` columns: protocol `{name}` (hash `{str(h)[:12]}`)"
        if t["standin"]:
            head += " — STAND-IN networks in *_STANDIN columns: not comparable to published numbers"
        cols = t["axes"] + ["n"] + [m + _arrow(m) for m in t["metrics"]]
        lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in t["rows"]:
            cells = [str(r["values"][a]) for a in t["axes"]] + [str(r["n"])]
            for m in t["metrics"]:
                s = _fmt(r["mean"][m], r["std"][m], r["n"], r["count"].get(m))
                cells.append(f"**{s}**" if m in t["best"] and r["mean"][m] == t["best"][m] else s)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("mean ± std over seeds (n runs); best per column in bold; ↑ higher is better, ↓ lower is better.")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def to_latex(tables: list[dict]) -> str:
    parts = []
    for t in tables:
        cols = t["axes"] + ["n"] + t["metrics"]
        arrows = {m: ("$\\uparrow$" if higher_is_better(m) else "$\\downarrow$") if higher_is_better(m) is not None
                  else "" for m in t["metrics"]}
        lines = [f"% protocol {t['protocol']} ({t['protocol_hash']})",
                 "\\begin{tabular}{" + "l" * (len(t["axes"]) + 1) + "c" * len(t["metrics"]) + "}", "\\toprule",
                 " & ".join([_tex_escape(str(c)) for c in t["axes"] + ["n"]] +
                            [_tex_escape(m) + " " + arrows[m] for m in t["metrics"]]) + " \\\\", "\\midrule"]
        for r in t["rows"]:
            cells = [_tex_escape(str(r["values"][a])) for a in t["axes"]] + [str(r["n"])]
            for m in t["metrics"]:
                s = _fmt(r["mean"][m], r["std"][m], r["n"], r["count"].get(m)).replace("±", "$\\pm$").replace("–", "--")
                cells.append(f"\\textbf{{{s}}}" if m in t["best"] and r["mean"][m] == t["best"][m] else s)
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        assert len(cols) == len(t["axes"]) + 1 + len(t["metrics"])
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_rows(tables: list[dict]) -> list[dict]:
    """Long-form rows (one per table row): protocol, axis values, n, <metric>_mean, <metric>_std, <metric>_best."""
    out = []
    for t in tables:
        for r in t["rows"]:
            row: dict[str, Any] = {"protocol": t["protocol"], "protocol_hash": t["protocol_hash"]}
            row.update({a: r["values"][a] for a in t["axes"]})
            row["n"] = r["n"]
            row["seeds"] = " ".join(map(str, r["seeds"]))
            for m in t["metrics"]:
                row[f"{m}_mean"], row[f"{m}_std"] = r["mean"][m], r["std"][m]
                if r["count"].get(m, r["n"]) != r["n"]:
                    row[f"{m}_n"] = r["count"][m]
                row[f"{m}_best"] = bool(m in t["best"] and r["mean"][m] == t["best"][m])
            out.append(row)
    return out


def plot_axes(tables: list[dict], out: Path, ncols: int = 4) -> list[Path]:
    """``plot_<axis>.png``: every metric against the axis, one panel per metric in a grid of ``ncols`` columns
    (lines per combination of the other axes; error bars = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for ti, t in enumerate(tables):
        for axis in t["axes"]:
            ms = t["metrics"]
            if not ms:
                continue
            nc = min(ncols, len(ms))
            nr = math.ceil(len(ms) / nc)
            fig, axs = plt.subplots(nr, nc, figsize=(3.6 * nc, 2.9 * nr + 0.4), squeeze=False)
            others = [a for a in t["axes"] if a != axis]
            lines: dict[tuple, list[dict]] = {}
            for r in t["rows"]:
                lines.setdefault(tuple(r["values"][a] for a in others), []).append(r)
            xs_all = sorted({r["values"][axis] for r in t["rows"]}, key=_sort_key)
            numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs_all)
            for ax in list(axs.flat)[len(ms):]:
                ax.axis("off")
            for ax, m in zip(axs.flat, ms):
                for key, rows in lines.items():
                    rows = sorted(rows, key=lambda r: _sort_key(r["values"][axis]))
                    x = [r["values"][axis] if numeric else xs_all.index(r["values"][axis]) for r in rows]
                    label = ", ".join(f"{a}={v}" for a, v in zip(others, key)) or None
                    ax.errorbar(x, [r["mean"][m] for r in rows], yerr=[r["std"][m] for r in rows], marker="o",
                                capsize=3, label=label)
                if not numeric:
                    ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all], rotation=30, ha="right")
                ax.set_title(m + _arrow(m), fontsize=9)
                ax.set_xlabel(axis, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            if others and len(lines) > 1:
                axs[0][0].legend(fontsize=6)
            fig.suptitle(f"{t['protocol']}: {axis}", fontsize=10)
            fig.tight_layout()
            suffix = f"_{t['protocol']}" if len(tables) > 1 else ""
            path = out / f"plot_{axis.replace('.', '_')}{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def wandb_settings_of_runs(run_dirs: list[Path]) -> dict:
    """Project, entity and group shared by the runs' W&B runs (their ``wandb_run.json``), so a table made later
    with ``python -m eval.table SWEEP_DIR`` lands in the sweep's group; {} when the runs disagree or have none."""
    from eval.dashboard import read_run_info

    infos = [i for i in (read_run_info(r) for r in run_dirs) if i]
    out = {}
    for key in ("project", "entity", "group"):
        vals = {i.get(key) for i in infos}
        if infos and len(vals) == 1:
            out[key] = vals.pop()
    return out


def log_wandb_table(rows: list[dict], out: Path, name: str = "results_table", group: Optional[str] = None,
                    project: str = "portraitlab", entity: Optional[str] = None, mode: Optional[str] = None,
                    config: Optional[dict] = None, tables: Optional[list[dict]] = None,
                    tags: Optional[list[str]] = None) -> Optional[str]:
    """Mirror the rows to W&B as a ``wandb.Table`` in a run of job type ``table`` (offline unless W&B is turned on)
    in ``group`` (the sweep's), with ``config`` (the sweep's), the metric-vs-axis plots and, in its summary, each
    table's best value per metric."""
    from eval.dashboard import init_run, wandb_mode

    mode = wandb_mode(mode)
    if mode == "disabled" or not rows:
        return None
    import pandas as pd
    import wandb

    run = init_run(project=project, entity=entity, group=group, job_type="table", name=f"table-{out.name}", dir=out,
                   config=config or {}, mode=mode, tags=tags)
    try:
        payload: dict[str, Any] = {name: wandb.Table(dataframe=pd.DataFrame(rows))}
        payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("plot_*.png"))})
        run.log(payload)
        for t in tables or []:
            run.summary.update({f"best/{t['protocol']}/{m}": v for m, v in t["best"].items()})
        return run.dir
    finally:
        run.finish()


def make_table(paths: list[str | Path], out: Optional[str | Path] = None, axes: Optional[list[str]] = None,
               use_wandb: bool = True, wandb_settings: Optional[dict] = None) -> dict[str, Path]:
    """Write the table files (and the W&B table run when ``use_wandb``). ``wandb_settings``: project, entity, group,
    mode, config of the table run; by default the project / entity / group the runs' W&B runs share."""
    run_dirs = find_runs(paths)
    runs = [load_run(r, axes) for r in run_dirs]
    if not runs:
        raise FileNotFoundError(f"no metrics.json under {', '.join(map(str, paths))}")
    out = Path(out) if out else (Path(paths[0]) if len(paths) == 1 else Path("table"))
    out.mkdir(parents=True, exist_ok=True)
    tables = aggregate(runs)
    from datamodules.utils import atomic_write_text

    written = {"md": atomic_write_text(out / "table.md", to_markdown(tables)),
               "tex": atomic_write_text(out / "table.tex", to_latex(tables))}
    import pandas as pd

    rows = to_rows(tables)
    written["csv"] = atomic_write_text(out / "table.csv", pd.DataFrame(rows).to_csv(index=False))
    for i, p in enumerate(plot_axes(tables, out)):
        written[f"plot{i}"] = p
    if use_wandb:
        settings = {"group": out.name, **wandb_settings_of_runs(run_dirs), **(wandb_settings or {})}
        settings.setdefault("config", {"runs": [str(r) for r in run_dirs], "axes": runs[0]["axes"]})
        try:
            d = log_wandb_table(rows, out, tables=tables, **settings)
            if d:
                written["wandb"] = Path(d)
        except Exception as err:  # the files are the source of truth
            log.warning("W&B table not logged: %s", err)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="run directories and/or sweep directories")
    ap.add_argument("--out", default=None, help="output folder (default: the single directory given, else ./table)")
    ap.add_argument("--axes", default=None, help="comma-separated config keys to group by (default: each run's axes)")
    ap.add_argument("--no-wandb", action="store_true")
    a = ap.parse_args(argv)
    written = make_table(a.paths, a.out, a.axes.split(",") if a.axes else None, use_wandb=not a.no_wandb)
    print(written["md"].read_text())
    print(f"table: {written['md']} (+ table.csv, table.tex, plots)")
    return 0


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class SweepTableCallback(_HydraCallback):
    """Hydra callback: at the end of a multirun, write the table of the sweep's runs into the sweep directory."""

    def __init__(self, use_wandb: bool = True, axes: Optional[list[str]] = None):
        self.use_wandb, self.axes = use_wandb, list(axes) if axes else None

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = make_table([sweep_dir], sweep_dir, self.axes, use_wandb=self.use_wandb and self._wandb_on(config),
                                 wandb_settings=self.wandb_settings(config))
        except Exception as err:  # a failed table must not hide the runs' own results
            log.error("sweep table for %s failed: %s", sweep_dir, err)
            print(f"sweep table failed: {err}", flush=True)
            return
        print(f"sweep table: {written['md']}", flush=True)

    @staticmethod
    def _wandb_on(config) -> bool:
        from omegaconf import OmegaConf

        from eval.dashboard import wandb_settings

        ws = wandb_settings(OmegaConf.select(config, "logger", default=None))   # the logger group's W&B entry
        return ws is not None and ws["mode"] != "disabled"

    @staticmethod
    def wandb_settings(config) -> dict:
        """The table run joins the sweep's story: its group (``eval.dashboard.sweep_group``, or the W&B logger
        entry's ``group``), that entry's ``project`` / ``entity`` / ``mode`` (``logger.wandb.project`` …), and the
        sweep's config (name, axes, grid, overrides) as its W&B config."""
        from omegaconf import OmegaConf

        from eval.dashboard import sweep_group, wandb_settings

        sel = lambda key, default=None: OmegaConf.select(config, key, default=default)  # noqa: E731
        params = sel("hydra.sweeper.params") or {}
        grid = {str(k): str(v) for k, v in OmegaConf.to_container(params).items()} if params else {}
        for o in sel("hydra.overrides.task") or []:       # the command line narrows / widens the declared grid
            key, _, value = str(o).partition("=")
            if key in grid or "," in value:
                grid[key] = value
        sweep_cfg = {"sweep_name": sel("sweep_name"), "name": sel("name"), "axes": list(sel("axes") or []),
                     "grid": grid,
                     "overrides": list(sel("hydra.overrides.task") or []), "sweep_dir": str(sel("hydra.sweep.dir"))}
        ws = wandb_settings(sel("logger")) or {}
        settings = {"group": ws.get("group") or sweep_group(sel("hydra.sweep.dir"), sel("sweep_name")),
                    "project": ws.get("project", "portraitlab"), "entity": ws.get("entity"), "config": sweep_cfg,
                    "tags": [str(sel("sweep_name"))] if sel("sweep_name") else []}
        if ws.get("mode"):
            settings["mode"] = ws["mode"]
        return settings


if __name__ == "__main__":
    sys.exit(main())
