"""Batch ImPoster personalization over a pairs file, ending in a table.

    python -m experiments.personalize --pairs pairs.csv --out runs/personalize [--steps N] [hydra overrides...]
    python -m experiments.personalize --pairs pairs.csv --steps 20 model=imposter_tiny      # CPU smoke run

The pairs CSV has columns ``source, source_caption, driving, driving_caption, target_prompt`` (image paths
relative to the CSV or absolute). For each pair a fresh model (``model=imposter`` by default: SD-2.1-base) is
fine-tuned for ``--steps`` steps on the pair (Lightning trainer from the ``trainer`` config group), then sampled
with the target prompt and frequency guidance. Per pair (× seed, ``--seeds 0,1``) the output folder holds
``output.png``, ``strip.png`` (source | driving | output), with ``model.finetune=lora`` the adapter in ``lora/``
(peft ``save_pretrained``: ``adapter_config.json`` + ``adapter_model.safetensors``), and an ``eval.table`` run
(``metrics.json`` under protocol ``imposter_personalize``, ``config.yaml`` with axes ``model.backbone, pair``); the batch ends in ``eval.table``'s
``table.md`` / ``table.csv`` / ``table.tex`` (mean ± std over seeds; mirrored to W&B unless ``--no-wandb``), and
``results.csv`` / ``results.md`` keep the raw per-run rows. Re-running skips pairs already done (``--overwrite``).
Columns:

* ``phase_score``: amplitude-weighted Fourier phase coherence of output and driving (luma, in [-1, 1]).
* ``ssim_source``: SSIM of output to source (``eval.metrics.SSIM``).
* ``lpips_alex_source``: LPIPS to the source (``eval.metrics.LPIPS``) — only when its AlexNet trunk is present.
* ``clip_i`` / ``clip_t`` / ``dino``: only with ``--clip-model`` / ``--dino-model`` (or $PORTRAITLAB_CLIP /
  $PORTRAITLAB_DINO) pointing at local transformers checkpoints; absent otherwise, never a stand-in number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def compose_config(overrides: list[str]):
    from experiments.compose import compose

    if not any(o.startswith(("model=", "experiment=")) for o in overrides):
        overrides = ["model=imposter", *overrides]
    return compose("train", overrides)


def _save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = (img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)


class _Similarity:
    """CLIP / DINO similarities from local transformers checkpoints (no download: ``local_files_only``)."""

    def __init__(self, clip_model: str | None, dino_model: str | None):
        self.clip = self.dino = None
        if clip_model:
            from transformers import CLIPModel, CLIPProcessor

            try:
                self.clip = CLIPModel.from_pretrained(clip_model, local_files_only=True).eval()
                self.clip_proc = CLIPProcessor.from_pretrained(clip_model, local_files_only=True)
            except OSError as err:
                raise FileNotFoundError(f"CLIP weights not found at `{clip_model}` (--clip-model / $PORTRAITLAB_CLIP: a "
                                        f"local transformers CLIP folder, e.g. openai/clip-vit-large-patch14): {err}") from err
        if dino_model:
            from transformers import AutoImageProcessor, AutoModel

            try:
                self.dino = AutoModel.from_pretrained(dino_model, local_files_only=True).eval()
                self.dino_proc = AutoImageProcessor.from_pretrained(dino_model, local_files_only=True)
            except OSError as err:
                raise FileNotFoundError(f"DINO weights not found at `{dino_model}` (--dino-model / $PORTRAITLAB_DINO: a "
                                        f"local transformers DINO(v2) folder, e.g. facebook/dinov2-small): {err}") from err

    @torch.no_grad()
    def __call__(self, out: torch.Tensor, source: torch.Tensor, prompt: str) -> dict[str, float]:
        res: dict[str, float] = {}
        imgs = [(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for x in (out.cpu(), source.cpu())]
        if self.clip is not None:
            inp = self.clip_proc(text=[prompt], images=imgs, return_tensors="pt", padding=True)
            o = self.clip(**inp)
            ie = torch.nn.functional.normalize(o.image_embeds, dim=-1)
            te = torch.nn.functional.normalize(o.text_embeds, dim=-1)
            res["clip_i"] = float(ie[0] @ ie[1])
            res["clip_t"] = float(ie[0] @ te[0])
        if self.dino is not None:
            inp = self.dino_proc(images=imgs, return_tensors="pt")
            feats = torch.nn.functional.normalize(self.dino(**inp).last_hidden_state[:, 0], dim=-1)
            res["dino"] = float(feats[0] @ feats[1])
        return res


def _lpips_or_none():
    """LPIPS (AlexNet) from the weights registry, or None with the reason printed (the column is then absent)."""
    from eval.metrics import LPIPS
    from eval.weights import MissingWeightsError

    try:
        return LPIPS("alex")
    except MissingWeightsError as err:
        print(f"[personalize] lpips_alex_source left out: {err}", file=sys.stderr)
        return None


def image_metrics(out: torch.Tensor, source: torch.Tensor, driving: torch.Tensor, lpips=None) -> dict[str, float]:
    """The table's image metrics for one output (3×H×W in [0, 1]); see the module docstring."""
    from eval.metrics import SSIM, FrameBatch
    from lit_models.imposter.frequency import phase_score, to_gray

    res = {"phase_score": float(phase_score(to_gray(out[None]), to_gray(driving[None]))[0]),
           "phase_score_source": float(phase_score(to_gray(out[None]), to_gray(source[None]))[0])}
    fb = FrameBatch(pred=out[None], target=source[None], source=source)
    res["ssim_source"] = float(SSIM().frames(fb)[0])
    if lpips is not None:
        res["lpips_alex_source"] = float(lpips.frames(fb)[0])
    return res


def personalize_pair(cfg, pair, steps: int, pair_dir: Path, progress_bar: bool = True):
    """Fine-tune a fresh ImPoster on one pair, sample the target prompt; returns (source, driving, output, final
    loss). ``progress_bar=False`` hides the trainer's bar (inside the batch's own progress display: rich allows one
    live display at a time)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from lit_models.imposter.data import PairDataset, load_image
    from lit_models.registry import build_model

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = build_model(cfg.model)
    res = int(cfg.model.resolution)
    src, drv = load_image(pair.source, res), load_image(pair.driving, res)
    data = DataLoader(PairDataset(src, drv, pair.source_caption, pair.driving_caption, length=steps), batch_size=1)
    t = cfg.trainer
    from toolbox.progress import lightning_progress_bar, mode_for

    show = bool(t.enable_progress_bar and progress_bar)
    lines = show and mode_for(sys.stdout) == "lines"   # in a log: plain "step k/N … ETA" lines, not a bar
    trainer = L.Trainer(max_steps=steps, accelerator=t.accelerator, devices=t.devices, precision=t.precision,
                        logger=False, enable_checkpointing=False, callbacks=[lightning_progress_bar()] if lines else None,
                        enable_progress_bar=show and mode_for(sys.stdout) != "off",
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=t.gradient_clip_val, default_root_dir=str(pair_dir))
    trainer.fit(model, data)
    final = trainer.callback_metrics.get("train/loss")
    if cfg.model.finetune == "lora":  # the personalization itself: peft adapter folder (PeftModel.from_pretrained)
        print(f"[personalize] LoRA adapter: {model.save_adapter(pair_dir / 'lora')}", file=sys.stderr)
    model.eval()
    out = model.sample(src[None], drv[None], target_prompts=[pair.target_prompt],
                       driving_prompts=[pair.driving_caption])[0].cpu()
    return src, drv, out, (float(final) if final is not None else float("nan"))


PROTOCOL = "imposter_personalize"


def protocol_of(cfg, clip_model: str | None, dino_model: str | None) -> dict:
    """What makes two personalization tables comparable (its sha256 is the tables' ``protocol_hash``): the image
    size the metrics see and the metric definitions / similarity checkpoints — not the backbone or the steps,
    which are what one compares."""
    return {"name": PROTOCOL, "resolution": int(cfg.model.resolution),
            "phase_score": "amplitude-weighted Fourier phase coherence, luma (lit_models.imposter.frequency)",
            "ssim_source": "eval.metrics.SSIM to the source", "lpips_source": "eval.metrics.LPIPS(alex) to the source",
            "clip_model": clip_model, "dino_model": dino_model}


def pair_label(i: int, pair) -> str:
    return f"{i:03d} {pair.source.stem} / {pair.driving.stem}"


def write_run(run_dir: Path, cfg, protocol: dict, label: str, seed: int, steps: int, row: dict) -> None:
    """One pair × seed as an ``eval.table`` run: ``config.yaml`` (axes: backbone, pair; seed) + ``metrics.json``."""
    from omegaconf import OmegaConf

    from datamodules.utils import atomic_write_json, atomic_write_text
    from eval.protocol import protocol_hash

    numeric = {k: float(v) for k, v in row.items() if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
               and k not in ("pair", "steps", "seed")}
    run_cfg = {"axes": ["model.backbone", "pair"], "pair": label, "seed": seed, "steps": steps,
               "model": OmegaConf.to_container(cfg.model, resolve=True), "row": {k: str(v) for k, v in row.items()}}
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(run_cfg)))
    atomic_write_json(run_dir / "metrics.json", {
        "protocol": PROTOCOL, "protocol_hash": protocol_hash(protocol), "protocol_spec": protocol, "metrics": numeric,
        "model": str(cfg.model.name), "backbone": str(cfg.model.backbone), "standin": False, "steps": steps,
        "seed": seed})


def check_kept_run(run_dir: Path, cfg, pair, steps: int) -> None:
    """A run kept on resume must be the same job (model config, steps, images): else a named error, never a mix."""
    from omegaconf import OmegaConf

    old = OmegaConf.load(run_dir / "config.yaml")
    row = json.loads((run_dir / "row.json").read_text())
    same = (OmegaConf.to_container(old.model) == OmegaConf.to_container(cfg.model, resolve=True)
            and int(old.steps) == steps and row["source"] == pair.source.name and row["driving"] == pair.driving.name)
    if not same:
        raise ValueError(f"{run_dir} holds a run of another job (model config, --steps or pair differ): pass "
                         f"--overwrite to redo it, or another --out")


def main(argv: list[str] | None = None):
    import pandas as pd
    from toolbox.progress import track

    from datamodules.utils import atomic_write_json
    from eval.table import make_table
    from lit_models.imposter.data import read_pairs

    ap = argparse.ArgumentParser(prog="python -m experiments.personalize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="CSV: source,source_caption,driving,driving_caption,target_prompt")
    ap.add_argument("--out", default=None, help="output folder (default runs/personalize/<model name>)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per pair (default trainer.max_steps)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds per pair (default: the config's seed); "
                                                  "the table gives mean ± std over them")
    ap.add_argument("--clip-model", default=os.environ.get("PORTRAITLAB_CLIP"))
    ap.add_argument("--dino-model", default=os.environ.get("PORTRAITLAB_DINO"))
    ap.add_argument("--overwrite", action="store_true", help="redo pairs that already have a metrics.json "
                                                             "(default: keep them, so an interrupted batch resumes)")
    ap.add_argument("--no-wandb", action="store_true", help="do not mirror the table to W&B")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=imposter_tiny model.optimizer.lr=1e-4")
    args = ap.parse_args(argv)

    cfg = compose_config(list(args.overrides))
    if cfg.model._target_ != "lit_models.imposter.ImPoster":
        raise ValueError(f"experiments.personalize runs ImPoster; got model `{cfg.model.name}` ({cfg.model._target_})")
    steps = int(args.steps or cfg.trainer.max_steps)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [int(cfg.seed)]
    out_dir = Path(args.out or Path(os.environ.get("PORTRAITLAB_RUNS", "runs")) / "personalize" / cfg.model.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(args.pairs)
    sim = _Similarity(args.clip_model, args.dino_model)
    if sim.clip is None or sim.dino is None:
        print("[personalize] clip_* / dino columns left out: no --clip-model / --dino-model given", file=sys.stderr)
    lpips = _lpips_or_none()
    protocol = protocol_of(cfg, args.clip_model, args.dino_model)
    jobs = [(i, pair, seed) for i, pair in enumerate(pairs) for seed in seeds]
    rows = []
    outer = len(jobs) >= 2
    # a bar on a terminal, plain "k/N jobs … ETA" lines in a log (toolbox.progress)
    for i, pair, seed in track(jobs, desc="personalize", unit="jobs", enabled=outer, every_s=0):
        pair_dir = out_dir / (f"pair{i:03d}" if len(seeds) == 1 else f"pair{i:03d}_seed{seed}")
        if (pair_dir / "metrics.json").exists() and (pair_dir / "row.json").exists() and not args.overwrite:
            check_kept_run(pair_dir, cfg, pair, steps)
            rows.append(json.loads((pair_dir / "row.json").read_text()))
            print(f"[personalize] {pair_dir.name}: done before, kept (--overwrite to redo)", file=sys.stderr)
            continue
        pair_dir.mkdir(parents=True, exist_ok=True)
        pair_cfg = cfg.copy()
        pair_cfg.seed = seed
        src, drv, out, final_loss = personalize_pair(pair_cfg, pair, steps, pair_dir, progress_bar=not outer)
        _save_png(out, pair_dir / "output.png")
        _save_png(torch.cat([src, drv, out], dim=-1), pair_dir / "strip.png")
        row = {"pair": i, "seed": seed, "source": pair.source.name, "driving": pair.driving.name,
               "target_prompt": pair.target_prompt, "backbone": cfg.model.backbone, "steps": steps,
               "final_loss": final_loss, **image_metrics(out, src, drv, lpips), **sim(out, src, pair.target_prompt)}
        write_run(pair_dir, pair_cfg, protocol, pair_label(i, pair), seed, steps, row)
        atomic_write_json(pair_dir / "row.json", row)
        rows.append(row)
    table = pd.DataFrame(rows)
    for name, write in (("results.csv", lambda p: table.to_csv(p, index=False)),
                        ("results.md", lambda p: p.write_text(table.to_markdown(index=False) if _has_tabulate()
                                                              else table.to_string(index=False)))):
        tmp = out_dir / f".{name}.tmp"
        write(tmp)
        tmp.replace(out_dir / name)
    # the table through eval.table: one row per (backbone, pair), mean ± std over seeds (table.md/.csv/.tex, plots)
    from eval.dashboard import wandb_settings

    ws = wandb_settings(cfg.logger) or {}
    written = make_table([out_dir], out_dir, use_wandb=not args.no_wandb and bool(ws),
                         wandb_settings={"project": ws.get("project", "portraitlab"), "entity": ws.get("entity"),
                                         "mode": ws.get("mode", "disabled"),
                                         "group": ws.get("group") or f"personalize-{out_dir.name}"})
    print(written["md"].read_text())
    print(f"[personalize] table: {written['md']} (+ table.csv, table.tex); per-run rows: {out_dir / 'results.csv'}")
    return table


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
