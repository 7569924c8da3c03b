"""Plain helpers shared by the test files (``from helpers import …``: pytest puts tests/ on sys.path for the root
conftest; the fixtures built on them live in tests/conftest.py). Only builders and checks used by several files."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


# ---- training runs ---------------------------------------------------------------------------------------------
def tiny_run(data_root: Path, run_dir: Path, *extra: str, shrink_model: bool = True) -> list[str]:
    """Overrides of a seconds-long training run on ``data_root`` as it is (no re-render), into ``run_dir``:
    ``debug=fast``, and with ``shrink_model`` the default ``direct`` baseline at 4 channels and 2 levels."""
    model = ["model.base_channels=4", "model.num_down=2"] if shrink_model else []
    return [f"data.root={data_root}", "data.synth=null", f"run_dir={run_dir}", "debug=fast", *model, *extra]


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a training subprocess: this checkout importable, one quiet OpenMP thread, offline W&B, runs
    under ``tmp_path``; no SLURM_ / SUBMITIT_ variables (a test run inside a cluster job must not look like one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env.update(PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_SILENT="true", PORTRAITLAB_RUNS=str(tmp_path / "runs"), **extra)
    return env


def checkpoint_differences(a: Path, b: Path, global_step: int) -> dict[str, float]:
    """Every weight tensor and optimizer-state entry of two checkpoints (both at ``global_step``, same keys) that is
    not equal, with its max abs difference (inf where the shapes differ); empty when the two are bit-identical."""
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    assert sa["global_step"] == sb["global_step"] == global_step
    assert sa["state_dict"].keys() == sb["state_dict"].keys()

    def diff(x, y) -> float:
        if x.shape != y.shape:
            return float("inf")
        return (x.double() - y.double()).abs().max().item()

    out = {k: diff(sa["state_dict"][k], v) for k, v in sb["state_dict"].items()
           if not torch.equal(sa["state_dict"][k], v)}
    assert len(sa["optimizer_states"]) == len(sb["optimizer_states"])
    for ga, gb in zip(sa["optimizer_states"], sb["optimizer_states"]):   # Adam moments and step counts
        assert ga["state"].keys() == gb["state"].keys()
        for k, st in ga["state"].items():
            for name, t in st.items():
                u = gb["state"][k][name]
                if torch.is_tensor(t) and not torch.equal(t, u):
                    out[f"optimizer state {k}.{name}"] = diff(t, u)
                elif not torch.is_tensor(t) and t != u:
                    out[f"optimizer state {k}.{name}"] = float("inf")
    return out


@contextlib.contextmanager
def lock_held_elsewhere(directory: Path, purpose: str):
    """Another process holding ``toolbox.locks.DirLock(directory, purpose)`` for the block (the lock is taken before
    the block runs); SIGKILLed and reaped after it. Yields its ``Popen``."""
    code = ("import sys, time; from toolbox.locks import DirLock; DirLock(sys.argv[1], sys.argv[2]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory), purpose], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# ---- data -------------------------------------------------------------------------------------------------------
def make_datamodule(root: Path, base: dict, **overrides):
    """A set-up ``VideoClipDataModule`` on ``root``: a test file's ``base`` data config with ``overrides``."""
    from datamodules.datamodule import VideoClipDataModule

    dm = VideoClipDataModule({"root": str(root), **base, **overrides})
    dm.setup()
    return dm


# ---- methods ----------------------------------------------------------------------------------------------------
def random_clip(B: int = 1, T: int = 2, seed: int = 0, size: int = 16) -> dict[str, torch.Tensor]:
    """A seeded random batch: ``source`` B×3×size², ``driving`` B×T×3×size² (drawn in that order), in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(B, 3, size, size, generator=g)
    return {"source": source, "driving": torch.rand(B, T, 3, size, size, generator=g)}


def assert_motion_dropout_drops_the_driving(model, monkeypatch, motion_active=contextlib.nullcontext) -> None:
    """With reference dropout off, the diffusion loss of one target under two different driving clips is equal when
    ``drop_motion_prob`` = 1 (the driving input is really dropped) and differs when it is 0. ``motion_active(model)``
    wraps the two evaluations (e.g. non-zero motion-module outputs, as after training)."""
    a, b = random_clip(T=1, seed=1), random_clip(T=1, seed=2)
    monkeypatch.setitem(model.cfg, "drop_reference_prob", 0.0)
    with motion_active(model):
        for prob, same in ((1.0, True), (0.0, False)):
            monkeypatch.setitem(model.cfg, "drop_motion_prob", prob)
            with torch.no_grad():
                la = model.compute_losses({"source": a["source"], "driving": a["driving"], "target": a["driving"]})
                lb = model.compute_losses({"source": a["source"], "driving": b["driving"], "target": a["driving"]})
            assert torch.equal(la["loss_diffusion"], lb["loss_diffusion"]) == same, f"drop_motion_prob={prob}"


# ---- learned evaluation networks (eval.synth_landmarks, eval.synth_identity) ------------------------------------
def _retrained(*args, **kwargs):
    raise AssertionError("retrained")


def forbid_training(monkeypatch, module) -> None:
    """``module.train`` raises: whatever loads now must come from a cache or the packaged weights."""
    monkeypatch.setattr(module, "train", _retrained)


def assert_cache_hit_and_deterministic_training(monkeypatch, module, cfg, load, first, x: torch.Tensor) -> None:
    """A second ``load()`` reads the cache (training forbidden) and gives ``first``'s outputs on ``x``; a fresh
    ``module.train(cfg)`` gives ``first``'s weights to the bit. Undoes ``monkeypatch`` (earlier patches too) first."""
    forbid_training(monkeypatch, module)
    assert torch.equal(load()(x), first(x))
    monkeypatch.undo()
    fresh, _ = module.train(cfg, progress=False)
    for a, b in zip(fresh.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def packaged_default_config(module, config_cls, tmp_path: Path, monkeypatch):
    """An empty user cache, training forbidden, and the default config's weights shipped in ``module.PACKAGED_DIR``
    (asserted, naming the command that re-ships them); returns that default config."""
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path))
    forbid_training(monkeypatch, module)
    cfg = config_cls()
    name = module.__name__.rsplit(".", 1)[-1]
    assert (module.PACKAGED_DIR / f"{cfg.hash()}.pt").is_file(), "default config changed: re-ship its weights " \
        f"(python -m {module.__name__} --retrain --root eval/assets/{name})"
    return cfg


# ---- pages in a real headless Chromium (Debian's, driven by Playwright) ------------------------------------------
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
INSTALL_CMD = "sudo apt-get update && sudo apt-get install -y chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def find_chromium() -> str:
    """A Chromium binary; installed from the system packages when absent and this process is root (as CI is),
    otherwise the test skips printing the install command."""
    for c in CHROMIUM_CANDIDATES:
        if Path(c).exists():
            return c
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        proc = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, text=True,
                              timeout=900)
        if proc.returncode == 0 and Path("/usr/bin/chromium").exists():
            return "/usr/bin/chromium"
        pytest.skip(f"installing chromium failed (rc {proc.returncode}): {proc.stderr[-300:]}; run: {INSTALL_CMD}")
    pytest.skip(f"no Chromium on this machine and not root to install it; run: {INSTALL_CMD}")


@contextlib.contextmanager
def headless_page(chromium: str, tmp_path: Path, errors: list[str], console_errors: bool = False):
    """A 1400×900 page in headless ``chromium`` with a fresh profile under ``tmp_path`` (Playwright passes it as
    --user-data-dir); page errors, failed requests and, with ``console_errors``, console errors go to ``errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium,
                                                       headless=True, args=LAUNCH_ARGS,
                                                       viewport={"width": 1400, "height": 900})
        try:
            page = browser.new_page()
            if console_errors:
                page.on("console",
                        lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
            yield page
        finally:
            browser.close()


def assert_clean_screenshot(errors: list[str], shot: Path, min_bytes: int, env_var: str) -> None:
    """The page raised no error and its screenshot is a real picture (more than ``min_bytes``); copied where
    ``$env_var`` says (e.g. for a closing note), nowhere when it is unset."""
    assert not errors, errors
    assert shot.stat().st_size > min_bytes
    copy_to = os.environ.get(env_var)
    if copy_to:
        shutil.copy(shot, copy_to)


def assert_same_frames(clips: dict, frames_sha256: dict) -> dict:
    """The uint8 frames of each clip are the ones a reference run read (sha256 recorded with its goldens)."""
    for name, fr in clips.items():
        assert hashlib.sha256(fr.tobytes()).hexdigest() == frames_sha256[name], name
    return clips

