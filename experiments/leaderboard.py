"""`python -m experiments.leaderboard ckpts=[A.ckpt,B.ckpt,...] protocols=[vox_self,mrfa_reconstruction]
[reference=LABEL] [out=DIR] [reuse=[DIR,...]] [wandb=offline|online|disabled] [project=NAME] [key=value ...]`.

Every checkpoint (imported official ones and trained ones alike) under every protocol, one model in memory at a
time; an existing evaluation with the same model identity, protocol hash and data fingerprint (``eval.reuse``: the
checkpoint's run directory, ``out/<label>/<protocol>``, the ``reuse=`` folders) is reused, not recomputed. Writes
into ``out`` (default ``runs/leaderboard/<timestamp>``): ``leaderboard.csv`` (long rows: checkpoint, protocol,
protocol hash, weights sha256, model identity, metric, value, Δ vs the reference with its paired 95% CI),
``leaderboard.html`` (one self-contained page: a table per protocol with its hash, each checkpoint's weights
sha256) and one W&B run (job type ``leaderboard``, offline by default) holding the rows as one table. ``reference``
(default: the first checkpoint) is the checkpoint every Δ is taken against (``eval.compare``'s paired bootstrap
over videos, frame-weighted as ``metrics.json``). Labels: the run-directory name of ``…/checkpoints/x.ckpt``, else
the file stem. The other ``key=value`` arguments are ``experiments.evaluate`` overrides (``data=voxceleb``,
``data.root=…``, ``eval_protocol.max_videos=8``, ``ckpt_weights=raw``), applied under every protocol. Argument
parsing is by hand, as ``experiments.reproduce``: one run config holds one protocol, the leaderboard several.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

from experiments import runtime

log = logging.getLogger("portraitlab.leaderboard")
OWN_KEYS = ("ckpts", "protocols", "reference", "out", "reuse", "wandb", "project", "entity")


def _list(value: str) -> list[str]:
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
    return [x.strip() for x in v.split(",") if x.strip()]


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    own: dict = {"wandb": "offline", "project": "portraitlab", "entity": None, "reuse": [], "reference": None,
                 "out": None}
    rest = []
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq:
            raise runtime.ConfigError(f"{a!r}: arguments are key=value (ckpts=[…], protocols=[…], reference=…)")
        if key in OWN_KEYS:
            own[key] = _list(value) if key in ("ckpts", "protocols", "reuse") else value
        elif key == "eval_protocol":
            raise runtime.ConfigError("eval_protocol= is set per protocol from protocols=[…]; override its keys "
                                      "instead (eval_protocol.max_videos=…)")
        else:
            rest.append(a)
    if not own.get("ckpts"):
        raise runtime.ConfigError("ckpts=[A.ckpt,B.ckpt,…] is not set")
    if not own.get("protocols"):
        raise runtime.ConfigError("protocols=[NAME,…] is not set (experiments/configs/eval_protocol/*.yaml)")
    return own, rest


def leaderboard(argv: list[str], load=None) -> dict:
    """Run the leaderboard (``load(path) -> model`` replaces ``load_model`` + identity encoder, e.g. in tests)."""
    import gc

    from eval.compare import _labels
    from eval.leaderboard import leaderboard_table, log_wandb, page_html
    from eval.reuse import evaluate_or_reuse
    from experiments.compose import compose
    from experiments.evaluate import cli_device
    from experiments.train import build_datamodule, sampling_kwargs
    from toolbox.io import sha256_file

    own, overrides = parse_args(argv)
    missing = [c for c in own["ckpts"] if not Path(c).is_file()]
    if missing:
        raise runtime.ConfigError(f"ckpts: no such checkpoint file {', '.join(missing)}")
    labels = _labels(own["ckpts"])
    reference = own["reference"] or next(iter(labels))
    if reference not in labels:
        raise runtime.ConfigError(f"reference={reference!r} is not one of the checkpoints' labels ({', '.join(labels)})")
    cfgs = {}
    for p in own["protocols"]:   # every protocol composed (and the data root checked) before any evaluation
        try:
            cfgs[p] = compose("evaluate", [f"eval_protocol={p}", *overrides])
        except Exception as e:  # noqa: BLE001 - hydra's message names the missing config / key
            raise runtime.ConfigError(f"protocols: {p}: {str(e).splitlines()[0]}") from None
    first = next(iter(cfgs.values()))
    runtime.check_data_root(first)
    out = Path(own["out"] or Path(_runs_root()) / "leaderboard" / time.strftime("%Y-%m-%d_%H-%M-%S")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(first.data)
    device, run_kw = cli_device(first), sampling_kwargs(first)   # device=cuda without CUDA: fail before any work
    if load is None:
        from eval.faces import attach_identity_encoder
        from lit_models.registry import load_model

        def load(path):
            return attach_identity_encoder(load_model(path, weights=first.ckpt_weights)).to(device)

    entries = []
    for label, path in labels.items():
        model = load(path)          # one model in memory at a time
        digest = sha256_file(path)
        for p, cfg in cfgs.items():
            res, where, reused = evaluate_or_reuse(model, datamodule, cfg.eval_protocol, out / label / p, ckpt=path,
                                                   search=[out / label, *own["reuse"]], **run_kw)
            log.info("%s under %s: %s (%s)", label, p, where, "reused" if reused else "evaluated")
            entries.append({"label": label, "ckpt": path, "protocol": p, "dir": where, "result": res,
                            "weights_sha256": digest, "reused": reused})
        del model
        gc.collect()
    table = leaderboard_table(entries, reference)
    from datamodules.utils import atomic_write_text

    csv_path = atomic_write_text(out / "leaderboard.csv", table.to_csv(index=False))
    page = atomic_write_text(out / "leaderboard.html", page_html(
        table, reference, title=f"leaderboard — {len(labels)} checkpoints × {len(cfgs)} protocols"))
    wandb_dir = log_wandb(out, table, reference, project=own["project"], entity=own["entity"], mode=own["wandb"])
    print(f"leaderboard: {page}  (rows: {csv_path}{'; W&B run: ' + wandb_dir if wandb_dir else ''})")
    return {"table": table, "page": Path(page), "csv": Path(csv_path), "wandb_dir": wandb_dir, "out": out,
            "reused": {(e["label"], e["protocol"]): e["reused"] for e in entries}}


def _runs_root() -> str:
    import os

    return os.environ.get("PORTRAITLAB_RUNS", "runs")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    runtime.setup_logging()
    with runtime.short_errors():
        leaderboard(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
