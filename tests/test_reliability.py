"""Training reliability: a non-finite loss stops training before it is checkpointed; one writer per run directory;
unique sweep directories; SynthFaces roots keyed by content; short errors that name the config key; atomic
checkpoints; loading a checkpoint runs no code."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import lock_held_elsewhere, tiny_run

REPO = Path(__file__).resolve().parents[1]


def quiet_run(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A quiet run: no logger, no evaluation after training (the model's size is the caller's)."""
    return tiny_run(root, run_dir, "logger=none", "evaluate_after_train=false", *extra, shrink_model=False)


# ---- non-finite training ---------------------------------------------------------------------------------------------
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(compose_cfg, synth_root, tmp_path):
    """`model.optimizer.lr=1e6` on mrfa_tiny: the loss is NaN from step 2 on. Training stops with a message naming the step
    and the last good checkpoint; no checkpoint on disk holds a non-finite value (training does not run on to the
    end with rc=0 and NaN checkpoints)."""
    from experiments.runtime import NonFiniteTrainingError
    from experiments.train import train

    run = tmp_path / "run"
    cfg = compose_cfg("train", ["model=mrfa_tiny", "model.optimizer.lr=1e6", "data.num_frames=1",
                                *quiet_run(synth_root, run, "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=1",
                                           "trainer.limit_val_batches=0")])
    with pytest.raises(NonFiniteTrainingError, match=r"non-finite loss=nan at step \d.*Last good checkpoint: .*last\.ckpt"):
        train(cfg)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts, "the steps before the NaN were checkpointed"
    for path in ckpts:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["global_step"] < 6
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()), path
    assert not (run / "train_done.json").exists()


def test_finite_check_can_be_turned_off(compose_cfg, synth_root, tmp_path):
    """The knob is real: with trainer.finite_check=false the same run ends normally (and its weights are NaN)."""
    from experiments.train import train

    run = tmp_path / "run"
    train(compose_cfg("train", ["model=mrfa_tiny", "model.optimizer.lr=1e6", "data.num_frames=1", "trainer.finite_check=false",
                                *quiet_run(synth_root, run, "trainer.max_steps=3", "trainer.limit_val_batches=0")]))
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---- one writer ------------------------------------------------------------------------------------------------------
def test_second_writer_of_a_run_directory_fails_at_once_naming_the_holder(compose_cfg, synth_root, tmp_path):
    from experiments.train import train
    from toolbox.locks import DirectoryLocked

    run = tmp_path / "run"
    run.mkdir()
    with lock_held_elsewhere(run, "train") as holder:
        cfg = compose_cfg("train", ["experiment=baseline_direct", *quiet_run(synth_root, run)])
        t0 = time.perf_counter()
        with pytest.raises(DirectoryLocked, match=rf"pid {holder.pid} .*train"):
            train(cfg)
        assert time.perf_counter() - t0 < 5
        assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    train(cfg)    # the holder died: the OS freed the lock, no stale lock file blocks the directory
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_two_sweeps_launched_in_the_same_second_get_their_own_directories(tmp_path):
    """The sweep directory resolved by two launching processes whose clock reads the same instant differs (a
    `%Y-%m-%d_%H-%M-%S` stamp alone would give both one shared directory)."""
    code = ("import datetime; from omegaconf import OmegaConf; import experiments.schema as s\n"
            "getattr(s, 'register_resolvers', lambda: None)()\n"
            "cfg = OmegaConf.load('experiments/configs/train.yaml'); cfg.sweep_name = cfg.name = 'baselines'\n"
            "OmegaConf.register_new_resolver('now', lambda p: datetime.datetime(2026, 1, 2, 3, 4, 5, 6).strftime(p), "
            "replace=True, use_cache=True); print(cfg.hydra.sweep.dir)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PORTRAITLAB_RUNS": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    dirs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(d.startswith(f"{tmp_path}/sweeps/baselines/2026-01-02_03-04-05") for d in dirs), dirs
    assert dirs[0] != dirs[1]


def test_synthfaces_roots_are_keyed_by_every_content_parameter(compose_cfg, tmp_path):
    """Two configs that render different data never share a root (a root keyed by the seed only would be
    re-rendered in place, under the other job, by a changed `data.synth.*`); a root holding another render is
    refused, not replaced."""
    from dataclasses import fields

    from datamodules.config import SynthConfig
    from datamodules.synthfaces import read_manifest, render_dataset

    base = compose_cfg("train", []).data.root
    roots = {f.name: compose_cfg("train", [f"data.synth.{f.name}={_other(getattr(SynthConfig(), f.name))}"]).data.root
             for f in fields(SynthConfig)}
    assert base not in roots.values() and len(set(roots.values())) == len(roots), roots
    assert compose_cfg("train", ["data.batch_size=3", "data.num_workers=0"]).data.root == base   # not content
    small = dict(num_identities=2, clips_per_identity=1, num_frames=2, resolution=32, num_cross_pairs=0)
    root = render_dataset(tmp_path / "d", SynthConfig(**small), progress=False)
    with pytest.raises(FileExistsError, match=r"hand_prob: 0\.0 -> 0\.5"):
        render_dataset(root, SynthConfig(**small, hand_prob=0.5), progress=False)
    assert read_manifest(root)["config"]["hand_prob"] == 0.0


def _other(value):
    return (not value) if isinstance(value, bool) else (value + 1 if isinstance(value, int) else value + 0.25)


# ---- short errors naming the key -------------------------------------------------------------------------------------
def test_unknown_plus_key_is_rejected_naming_it(compose_cfg):
    from experiments.runtime import ConfigError, validate

    with pytest.raises(ConfigError, match=r"trainer\.max_step is not a config key \(did you mean trainer\.max_steps\?\)"):
        validate(compose_cfg("train", ["+trainer.max_step=10"]))
    with pytest.raises(ConfigError, match=r"model\.refine_iter\b"):
        validate(compose_cfg("train", ["model=mrfa_tiny", "+model.refine_iter=2"]))
    validate(compose_cfg("train", ["+eval_protocol@extra_eval.cross=synthfaces_cross"]))   # a group append is fine


def test_resolution_divisibility_is_checked_per_model_at_compose_time(compose_cfg):
    from experiments.runtime import ConfigError, validate

    with pytest.raises(ConfigError, match=r"model\.resolution=66 must be a multiple of 8 for model=xnemo_tiny"):
        validate(compose_cfg("train", ["model=xnemo_tiny", "model.resolution=66", "data.resolution=66"]))
    # the multiple follows the model's own down-sampling keys: ×2 space-to-depth then 2× in the U-Net = 4
    validate(compose_cfg("train", ["model=xnemo_tiny", "model.pixel_unshuffle=2", "model.unet.in_channels=12",
                                   "model.unet.out_channels=12", "model.resolution=68", "data.resolution=68"]))
    with pytest.raises(ConfigError, match=r"model\.resolution=72 must be a multiple of 32 for model=mrfa_tiny"):
        validate(compose_cfg("train", ["model=mrfa_tiny", "model.resolution=72", "data.resolution=72"]))
    # …and a multiple of it builds (MRFA's own checks inside the network agree)
    from lit_models.registry import build_model

    build_model(compose_cfg("train", ["model=mrfa_tiny", "model.resolution=96", "data.resolution=96"]).model)


def test_missing_or_empty_data_root_names_data_root_before_a_run_dir_exists(compose_cfg, tmp_path, monkeypatch):
    from experiments.runtime import ConfigError
    from experiments.train import train

    monkeypatch.delenv("VOXCELEB_ROOT", raising=False)
    run = tmp_path / "run"
    args = ["data=voxceleb", "data.resolution=64", f"run_dir={run}", "debug=fast", "logger=none"]
    with pytest.raises(ConfigError, match=r"data\.root is not set: .* or set VOXCELEB_ROOT"):
        train(compose_cfg("train", args))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"data\.root=.*empty holds no video clips"):
        train(compose_cfg("train", [*args, f"data.root={tmp_path / 'empty'}"]))
    with pytest.raises(ConfigError, match=r"data\.root=.*nowhere does not exist"):
        train(compose_cfg("train", [*args, f"data.root={tmp_path / 'nowhere'}"]))
    assert not run.exists()


@pytest.mark.slow
def test_cli_config_error_is_short_and_leaves_no_run_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VOXCELEB_ROOT"}
    env.update(PYTHONPATH=str(REPO), PORTRAITLAB_RUNS=str(tmp_path / "runs"), WANDB_MODE="offline")
    out = subprocess.run([sys.executable, "-m", "experiments.train", "data=voxceleb", "data.resolution=64",
                          "debug=fast", "logger=none"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("error: data.root is not set: pass data.root=/path/to/voxceleb "
                                                   "or set VOXCELEB_ROOT")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


# ---- checkpoints renamed atomically on the same filesystem -----------------------------------------------------------
def test_checkpoint_write_is_atomic_in_its_own_directory(tmp_path, monkeypatch):
    """The Trainer's checkpoint IO writes a temporary file beside the checkpoint and renames it (Lightning's fsspec
    transaction writes into the system temp dir and `shutil.move`s — a copy across filesystems, truncated on a full
    disk); a write that fails half-way leaves the previous checkpoint intact and no temporary file."""
    from experiments.compose import compose
    from experiments.runtime import build_trainer

    cfg = compose("train", ["debug=fast", "logger=none", f"run_dir={tmp_path}"])
    trainer = build_trainer(cfg, tmp_path, [])
    io = trainer.strategy.checkpoint_io
    path = tmp_path / "checkpoints" / "last.ckpt"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b))[1])
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 1}, path)
    assert renames and renames[-1][1] == path and renames[-1][0].parent == path.parent
    good = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "global_step": 2}, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


# ---- loading a checkpoint runs no code -------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this calls exec(): what a crafted checkpoint can do under torch.load(weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_crafted_pickle_checkpoint_is_refused_without_running(tmp_path):
    from lit_models.registry import load_model

    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"model": {"_target_": "lit_models.baselines.CopySource", "name": "copy_source"}},
                "state_dict": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(RuntimeError, match=r"evil\.ckpt: refused to load") as info:   # UnsafeCheckpointError
        load_model(str(path))
    assert type(info.value).__name__ == "UnsafeCheckpointError"
    assert not marker.exists(), "unpickling ran the payload's code"


def test_resume_of_a_finished_run_redoes_nothing_unless_the_config_asks_for_more(compose_cfg, synth_root, tmp_path):
    """`resume=true` on a run whose train_done.json records the same resolved config returns its results without
    touching it (a relaunched sweep); `resume=true trainer.max_steps=4` trains on from last.ckpt to step 4."""
    from experiments.train import train

    run = tmp_path / "run"
    args = ["experiment=baseline_direct", *tiny_run(synth_root, run, "logger=none", "evaluate_after_train=false")]
    first = train(compose_cfg("train", args))
    last = run / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    assert train(compose_cfg("train", [*args, "resume=true"])) == first
    assert last.stat().st_mtime_ns == stamp
    train(compose_cfg("train", [*args, "resume=true", "trainer.max_steps=4"]))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    # our own Trainer checkpoints (loops, callbacks, RNG states, hparams) pass the weights-only model loader
    from lit_models.registry import load_model

    model = load_model(str(last))
    assert type(model).__name__ == "DirectRegression"
    assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in model.state_dict().items())
