"""`python -m experiments.reproduce paper=NAME [ckpts.<row>=PATH ...] [data.root=...] [out=DIR] [key=value ...]`.

Reproduces one paper table from its spec, ``experiments/configs/paper/<method>_<table>.yaml`` (or a path to such a
file): the protocols (``eval_protocol`` config names), the data config, one row per checkpoint (its ``eval.weights``
name and importer), the columns (protocol + metric + a stated tolerance) and the published numbers with their
source (``transcription: official | third_party | none``; a cell nobody could read is null and stays empty).

Every row's checkpoint is ``ckpts.<row>=PATH`` — a portraitlab ``.ckpt`` as is, any other file (the official
release) through the row's importer (``<importer>.main([PATH, "--out", OUT])``) — or, without it, the
``eval.weights`` file of the row (absent → an error naming the file, where to put it and its URL, before any work).
Each checkpoint is loaded alone, evaluated under each protocol (an existing evaluation with the same model
identity, protocol hash and data fingerprint is reused, ``eval.reuse``) and freed. Writes into ``out`` (default
``runs/reproduce/<paper>/<timestamp>``) ``reproduce.csv`` / ``reproduce.md`` / ``reproduce.html``: per cell
paper | ours | Δ = ours − paper | within tolerance, flagged when outside, stand-in metrics (``_STANDIN``) labelled
and never compared; and one evaluation folder per row and protocol. The other ``key=value`` arguments are
``experiments.evaluate`` overrides (``data.root=…``, ``eval_protocol.max_videos=8``, ``ckpt_weights=raw``); the
``paper=`` spec picks ``data=`` and each ``eval_protocol=``. Argument parsing is by hand (like
``experiments.personalize``): the spec names several protocols, which one Hydra run config cannot hold.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from experiments import runtime

log = logging.getLogger("portraitlab.reproduce")

PAPER_DIR = Path(__file__).resolve().parent / "configs" / "paper"
TRANSCRIPTIONS = ("official", "third_party", "none")
ROW_KEYS = {"name", "label", "weights", "importer", "model", "published", "source", "transcription"}
SPEC_KEYS = {"paper", "method", "table", "data", "protocols", "columns", "rows"}


class SpecError(runtime.ConfigError):
    """A paper spec is malformed; the message names the file and the key."""


def spec_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    path = PAPER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(q.stem for q in PAPER_DIR.glob("*.yaml"))
        raise SpecError(f"paper={name}: no spec {path} (known: {', '.join(known)})")
    return path


def load_spec(name: str) -> DictConfig:
    """The spec, checked: every key known, each column's protocol declared and tolerance stated, every published
    cell a number or null under a declared column, a number only with a ``source`` and a ``transcription``."""
    path = spec_path(name)
    spec = OmegaConf.load(path)
    where = str(path)
    unknown = set(spec.keys()) - SPEC_KEYS
    missing = SPEC_KEYS - set(spec.keys())
    if unknown or missing:
        raise SpecError(f"{where}: " + (f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"))
    names = []
    for i, col in enumerate(spec.columns):
        for key in ("name", "protocol", "metric", "tolerance"):
            if col.get(key) is None:
                raise SpecError(f"{where}: columns[{i}].{key} is not set")
        if str(col.protocol) not in spec.protocols:
            raise SpecError(f"{where}: columns[{i}].protocol={col.protocol!r} is not one of protocols "
                            f"{list(spec.protocols)}")
        tol = col.tolerance
        if set(tol.keys()) - {"abs", "rel"} or not tol.keys():
            raise SpecError(f"{where}: columns[{i}].tolerance must be {{abs: x}} and/or {{rel: x}}")
        names.append(str(col.name))
    if len(set(names)) != len(names):
        raise SpecError(f"{where}: column names repeat: {names}")
    for j, row in enumerate(spec.rows):
        if set(row.keys()) - ROW_KEYS:
            raise SpecError(f"{where}: rows[{j}] has unknown keys {sorted(set(row.keys()) - ROW_KEYS)}")
        if not row.get("name"):
            raise SpecError(f"{where}: rows[{j}].name is not set")
        pub = row.get("published") or {}
        for key, value in pub.items():
            if str(key) not in names:
                raise SpecError(f"{where}: rows[{j}].published.{key} is not a column ({names})")
            if value is not None and not isinstance(value, (int, float)):
                raise SpecError(f"{where}: rows[{j}].published.{key}={value!r} must be a number or null")
        if str(row.get("transcription")) not in TRANSCRIPTIONS:
            raise SpecError(f"{where}: rows[{j}].transcription must be one of {TRANSCRIPTIONS}")
        if any(v is not None for v in pub.values()) and (not row.get("source") or row.transcription == "none"):
            raise SpecError(f"{where}: rows[{j}] has published numbers but no source / transcription")
    return spec


# ---- arguments ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[str, dict[str, str], Optional[str], list[str]]:
    """(paper, {row: checkpoint path}, out, evaluate overrides)."""
    paper, ckpts, out, rest = None, {}, None, []
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq:
            raise runtime.ConfigError(f"{a!r}: arguments are key=value (paper=NAME, ckpts.<row>=PATH, out=DIR, …)")
        if key == "paper":
            paper = value
        elif key.startswith("ckpts."):
            ckpts[key[len("ckpts."):]] = value
        elif key == "out":
            out = value
        elif key in ("data", "eval_protocol") or key.startswith("eval_protocol="):
            raise runtime.ConfigError(f"{key}= is set by the paper spec (its data / protocols); override their keys "
                                      f"instead (data.root=…, eval_protocol.max_videos=…)")
        else:
            rest.append(a)
    if not paper:
        raise runtime.ConfigError("paper= is not set (e.g. paper=mrfa_vox_reconstruction; specs in "
                                  f"{PAPER_DIR})")
    return paper, ckpts, out, rest


def resolve_checkpoints(spec: DictConfig, given: dict[str, str], work: Path) -> dict[str, str]:
    """Every row's portraitlab checkpoint, before any evaluation: a given ``.ckpt`` as is, another given file or the
    row's ``eval.weights`` file through the row's importer (into ``work``)."""
    rows = {str(r.name): r for r in spec.rows}
    unknown = sorted(set(given) - set(rows))
    if unknown:
        raise runtime.ConfigError(f"ckpts.{unknown[0]}: not a row of paper={spec.method}_{spec.table} "
                                  f"(rows: {', '.join(rows)})")
    files: dict[str, Path] = {}
    for name, row in rows.items():
        if name in given:
            p = Path(given[name]).expanduser()
            if not p.exists():
                raise FileNotFoundError(f"ckpts.{name}={p}: no such file")
        else:
            from eval.weights import resolve

            try:
                p = resolve(str(row.weights))
            except KeyError as e:
                raise runtime.ConfigError(f"rows.{name}.weights={row.weights!r}: {e.args[0]}; pass ckpts.{name}=PATH "
                                          f"(the released checkpoint or a portraitlab .ckpt)") from None
        files[name] = p
    out = {}
    for name, p in files.items():
        if p.suffix == ".ckpt":
            out[name] = str(p)
            continue
        importer = rows[name].get("importer")
        if not importer:
            raise runtime.ConfigError(f"ckpts.{name}={p} is not a portraitlab .ckpt and rows.{name} names no importer")
        from experiments.validation import locate

        dest = work / f"{name}.ckpt"
        if not dest.exists():
            work.mkdir(parents=True, exist_ok=True)
            log.info("importing %s with %s", p, importer)
            rc = locate(f"{importer}.main", f"rows.{name}.importer")([str(p), "--out", str(dest)])
            if rc not in (0, None) or not dest.exists():
                raise runtime.ConfigError(f"ckpts.{name}={p}: {importer} failed (exit {rc})")
        out[name] = str(dest)
    return out


# ---- cells ---------------------------------------------------------------------------------------------------------
def cell(paper: Optional[float], ours: Optional[float], tolerance: dict, standin: bool = False) -> dict:
    """One table cell: Δ = ours − paper and whether |Δ| is within the column's tolerance (``abs``, and/or ``rel``
    × |paper|; both given: the larger). No paper number, no own number or a stand-in metric: nothing compared."""
    out = {"paper": paper, "ours": ours, "delta": None, "allowed": None, "within": None, "standin": standin}
    if paper is None or ours is None or standin or (isinstance(ours, float) and math.isnan(ours)):
        return out
    allowed = max(float(tolerance.get("abs", 0.0) or 0.0), float(tolerance.get("rel", 0.0) or 0.0) * abs(paper))
    delta = float(ours) - float(paper)
    out.update(delta=delta, allowed=allowed, within=abs(delta) <= allowed + 1e-12)
    return out


def metric_value(metrics: dict, name: str) -> tuple[Optional[float], str, bool]:
    """(value, the name it was found under, stand-in?): ``name``, else ``name_STANDIN``."""
    from eval.metrics import STANDIN_SUFFIX

    if name in metrics:
        return metrics[name], name, False
    if name + STANDIN_SUFFIX in metrics:
        return metrics[name + STANDIN_SUFFIX], name + STANDIN_SUFFIX, True
    return None, name, False


# ---- the run -------------------------------------------------------------------------------------------------------
def reproduce(argv: list[str]) -> dict:
    import gc

    from experiments.compose import compose
    from experiments.train import build_datamodule

    paper, given, out, overrides = parse_args(argv)
    spec = load_spec(paper)
    name = Path(paper).stem if Path(paper).suffix else paper
    out_dir = Path(out) if out else Path(runtime_runs_root()) / "reproduce" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = out_dir.absolute()
    # everything that can fail before any work: protocols, data, checkpoints
    cfgs: dict[str, DictConfig] = {}
    for key, proto in spec.protocols.items():
        try:
            cfgs[str(key)] = compose("evaluate", [f"eval_protocol={proto}", f"data={spec.data}", *overrides])
        except Exception as e:  # noqa: BLE001 - hydra's error names the missing config
            raise runtime.ConfigError(f"paper={name}: protocols.{key}={proto} / data={spec.data}: "
                                      f"{str(e).splitlines()[0]}") from None
    first = next(iter(cfgs.values()))
    runtime.check_data_root(first)
    ckpts = resolve_checkpoints(spec, given, out_dir / "ckpts")
    datamodule = build_datamodule(first.data)
    from experiments.evaluate import cli_device
    from experiments.train import sampling_kwargs

    device, run_kw = cli_device(first), sampling_kwargs(first)   # device=cuda without CUDA: fail before any work

    from eval.reuse import evaluate_or_reuse
    from lit_models.registry import load_model

    results: dict[str, dict[str, dict]] = {}
    sha: dict[str, str] = {}
    from toolbox.io import sha256_file

    for row in spec.rows:
        rname = str(row.name)
        sha[rname] = sha256_file(ckpts[rname])
        from eval.faces import attach_identity_encoder

        model = attach_identity_encoder(load_model(ckpts[rname], weights=first.ckpt_weights)).to(device)
        results[rname] = {}
        for key, cfg in cfgs.items():
            res, where, reused = evaluate_or_reuse(model, datamodule, cfg.eval_protocol, out_dir / rname / key,
                                                   ckpt=ckpts[rname], search=[out_dir / rname], **run_kw)
            results[rname][key] = res
            log.info("%s / %s: %s%s", rname, key, where, " (reused)" if reused else "")
        del model
        gc.collect()
    table = build_table(spec, results)
    files = write_outputs(out_dir, spec, name, table, results, ckpts, sha)
    print(files["md"].read_text())
    print(f"reproduce table: {files['md']}  (page: {files['html']}, csv: {files['csv']})")
    return {"table": table, "out": out_dir, **files}


def runtime_runs_root() -> str:
    import os

    return os.environ.get("PORTRAITLAB_RUNS", "runs")


def build_table(spec: DictConfig, results: dict[str, dict[str, dict]]) -> list[dict]:
    rows = []
    for row in spec.rows:
        rname = str(row.name)
        pub = row.get("published") or {}
        for col in spec.columns:
            res = results[rname][str(col.protocol)]
            ours, found, standin = metric_value(res["metrics"], str(col.metric))
            if ours is None:
                raise runtime.ConfigError(f"column {col.name!r}: protocol {res['protocol']} produced no metric "
                                          f"{col.metric!r} (it has: {', '.join(sorted(res['metrics']))})")
            c = cell(pub.get(str(col.name)), ours, OmegaConf.to_container(col.tolerance), standin)
            rows.append({"row": rname, "label": str(row.get("label") or rname), "column": str(col.name),
                         "protocol": res["protocol"], "protocol_hash": res["protocol_hash"], "metric": found, **c,
                         "tolerance": _tol_text(col.tolerance), "source": str(row.get("source") or ""),
                         "transcription": str(row.transcription)})
    return rows


def _tol_text(tol) -> str:
    parts = []
    if tol.get("abs") is not None:
        parts.append(f"±{tol.abs:g}")
    if tol.get("rel") is not None:
        parts.append(f"±{100 * tol.rel:g}%")
    return " or ".join(parts)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _delta(c: dict) -> str:
    return "" if c["delta"] is None else f"{c['delta']:+.4g}"


def _status(c: dict) -> str:
    if c["standin"]:
        return "stand-in (not the metric)"
    if c["within"] is None:
        return "no paper number" if c["paper"] is None else "—"
    return "ok" if c["within"] else "OUTSIDE TOLERANCE"


def write_outputs(out: Path, spec, name: str, table: list[dict], results, ckpts, sha) -> dict[str, Path]:
    import csv
    import html
    import io

    from datamodules.utils import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    cols = ["row", "label", "column", "protocol", "protocol_hash", "metric", "paper", "ours", "delta", "allowed",
            "within", "standin", "tolerance", "transcription", "source"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in table:
        w.writerow(r)
    csv_path = atomic_write_text(out / "reproduce.csv", buf.getvalue())
    flagged = [r for r in table if r["within"] is False]
    lines = [f"# Reproduction: {spec.paper} — {spec.table}", "",
             f"Spec `{name}`; data `{spec.data}`; protocols " + ", ".join(
                 f"`{p}` (hash `{next(iter(results.values()))[k]['protocol_hash'][:12]}`)" for k, p in spec.protocols.items()),
             ""]
    for row in spec.rows:
        lines.append(f"- **{row.get('label') or row.name}** (`{row.name}`): checkpoint `{ckpts[str(row.name)]}` "
                     f"(sha256 `{sha[str(row.name)][:16]}…`); published numbers: {row.get('source')} "
                     f"[{row.transcription}]")
    lines += ["", "Δ = ours − paper; a cell outside the column's tolerance is flagged. Empty paper cell: nobody could "
              "read the number (never guessed).", "",
              "| checkpoint | column | metric | paper | ours | Δ | tolerance | status |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        st = _status(r)
        lines.append(f"| {r['row']} | {r['column']} | `{r['metric']}` | {_fmt(r['paper'])} | {_fmt(r['ours'])} | "
                     f"{_delta(r)} | {r['tolerance']} | "
                     f"{'**' + st + '**' if r['within'] is False else st} |")
    lines += ["", f"{len(flagged)} of {sum(r['within'] is not None for r in table)} compared cells outside tolerance."]
    md_path = atomic_write_text(out / "reproduce.md", "\n".join(lines) + "\n")
    from eval.report import CSS

    body = [f"<h1>Reproduction: {html.escape(str(spec.paper))} — {html.escape(str(spec.table))}</h1>",
            "<ul>" + "".join(f"<li><b>{html.escape(str(row.get('label') or row.name))}</b>: <code>"
                             f"{html.escape(ckpts[str(row.name)])}</code>, sha256 <code>{sha[str(row.name)]}</code>; "
                             f"published numbers: {html.escape(str(row.get('source')))} [{row.transcription}]</li>"
                             for row in spec.rows) + "</ul>",
            "<table class=reproduce><thead><tr><th class=axis>checkpoint</th><th class=axis>column</th>"
            "<th class=axis>metric</th><th>paper</th><th>ours</th><th>Δ</th><th>tolerance</th><th class=axis>status"
            "</th><th class=axis>protocol (hash)</th></tr></thead><tbody>"]
    for r in table:
        cls = " class=flag" if r["within"] is False else ""
        body.append(f"<tr{cls}><td class=axis>{html.escape(r['row'])}</td><td class=axis>{html.escape(r['column'])}</td>"
                    f"<td class=axis><code>{html.escape(r['metric'])}</code></td><td>{_fmt(r['paper'])}</td>"
                    f"<td>{_fmt(r['ours'])}</td><td>{_delta(r)}</td>"
                    f"<td>{html.escape(r['tolerance'])}</td><td class=axis>{html.escape(_status(r))}</td>"
                    f"<td class=axis>{html.escape(r['protocol'])} <code>{r['protocol_hash'][:12]}</code></td></tr>")
    body.append("</tbody></table>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>reproduce {html.escape(name)}</title><style>{CSS}"
            "tr.flag td{background:#fde8e8;font-weight:700}</style></head><body>" + "".join(body) + "</body></html>")
    html_path = atomic_write_text(out / "reproduce.html", page)
    return {"csv": Path(csv_path), "md": Path(md_path), "html": Path(html_path)}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("specs: " + ", ".join(sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))))
        return 0
    runtime.setup_logging()
    with runtime.short_errors():
        try:
            reproduce(argv)
        except FileNotFoundError as e:   # a missing checkpoint / weight file: the message says where it goes
            raise runtime.ConfigError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
