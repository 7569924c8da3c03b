"""`make demo`: the main job — an ablation sweep on embedded SynthFaces data, ending in a table.

Runs `python -m experiments.train sweep=NAME` (a Hydra multirun: every job trains, evaluates under the sweep's
protocol and writes `metrics.json`; the sweep's end callback writes the table), then writes the local report page
(`eval.report`: `report.html` in the sweep directory) and prints the table and where it, the page and the W&B runs
are. NAME is `$DEMO_SWEEP`, default the MRFA refinement-iterations ablation when present.
Extra arguments are passed to the sweep as overrides (e.g. `trainer.max_steps=50`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"


def default_sweep() -> str:
    for name in ("mrfa_refine_iters", "baselines"):
        if (CONFIGS / "sweep" / f"{name}.yaml").exists():
            return name
    raise SystemExit("no sweep config found")


def main(argv: list[str]) -> int:
    sweep = os.environ.get("DEMO_SWEEP") or default_sweep()
    runs = Path(os.environ.get("PORTRAITLAB_RUNS", "runs"))
    before = set((runs / "sweeps" / sweep).glob("*")) if (runs / "sweeps" / sweep).exists() else set()
    cmd = [sys.executable, "-m", "experiments.train", f"sweep={sweep}", *argv]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    new = sorted(set((runs / "sweeps" / sweep).glob("*")) - before)
    if not new:
        raise SystemExit(f"the sweep wrote no directory under {runs / 'sweeps' / sweep}")
    sweep_dir = new[-1].absolute()
    table = sweep_dir / "table.md"
    print()
    if table.exists():
        print(table.read_text())
        print(f"table:     {table}  (also table.csv, table.tex, plots *.png)")
    else:
        print(f"no table.md in {sweep_dir}: see the sweep log above")
    report = None
    try:   # the local page: table, curves, plots, videos, every run's config (eval.report)
        from eval.report import build_report

        report = build_report(sweep_dir)
    except Exception as err:  # the table and runs above are the results; the page only renders them
        print(f"report page not written: {err}")
    wandb_dirs = sorted(sweep_dir.glob("*/wandb/offline-run-*"))
    table_runs = sorted(sweep_dir.glob("wandb/offline-run-*"))
    group = next((json.loads(p.read_text()).get("group") for p in sweep_dir.glob("*/wandb_run.json")), None)
    print(f"W&B runs:  {len(wandb_dirs)} job runs + {len(table_runs)} table run, group {group!r}, under {sweep_dir}  "
          f"(`wandb sync {sweep_dir}/*/wandb/offline-run-* {sweep_dir}/wandb/offline-run-*` uploads them after "
          "`wandb login`; `python -m experiments.wandb_offline DIR` reads them back)")
    print(f"sweep dir: {sweep_dir}")
    if report is not None:
        print(f"report:    {report}  (self-contained page: open it in a browser, no server needed)")
    return 0 if table.exists() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
