"""Checkpoint save and restore time as a fraction of epoch time, smoke and burgers1d recipes.

The checkpointed state is what the loop writes: the operator stage's model, AdamW state, EMA,
best weights, RNG states and progress; save = torch.save + sha256 manifest + the copy Ray makes
into run storage (local disk here); restore = manifest verification + weights_only load. Epoch
time = measured step time of that recipe on this machine x its steps per epoch (PDEBench
Burgers: 8100 train trajectories x 37 windows / batch 128). Goal: save <= 2% of an epoch.

    .venv/bin/python bench/checkpoint.py
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, emit

from ups.config import load_config
from ups.models.latent import LatentOperator
from ups.stages.operator import OperatorObjective
from ups.train.optim import build_optimizer, ema_model
from ups.train.state import load_checkpoint, rng_state, save_checkpoint

RECIPES = {"smoke": ("configs/smoke.yaml", 108), "burgers1d": ("configs/burgers1d.yaml", 8100)}


def measure(name: str, path: str, n_train: int) -> dict:
    cfg = load_config(ROOT / path).cfg
    frames = len(range(0, cfg.data.generate.frames, cfg.data.t_stride))
    h, b = cfg.stages.operator.rollout_horizon, cfg.training.batch_size
    torch.manual_seed(0)
    module = OperatorObjective(
        LatentOperator(cfg.latent.tokens, cfg.latent.dim, cfg.model.operator), cfg.stages.operator.lambda_rollout
    )
    opt = build_optimizer(module, cfg.stages.operator.optimizer)
    ema = ema_model(module, cfg.training.ema_decay)
    batch = {
        "z": torch.randn(b, h + 1, cfg.latent.tokens, cfg.latent.dim),
        "dt": torch.full((b,), 0.05),
        "task": torch.zeros(b, dtype=torch.long),
    }
    times = []
    for _ in range(8):
        t0 = time.perf_counter()
        loss, _ = module(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(module)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[2:])
    steps_per_epoch = n_train * (frames - h) // b
    epoch_s = step_s * steps_per_epoch

    state = {
        "model": module.state_dict(),
        "optimizer": opt.state_dict(),
        "ema": ema.state_dict(),
        "best_weights": {k: v.clone() for k, v in ema.module.state_dict().items()},
        "rng": [rng_state()],
        "progress": {"epoch": 1, "micro": 0},
    }
    saves, restores = [], []
    for _ in range(5):
        local, storage = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp()) / "ck"
        t0 = time.perf_counter()
        save_checkpoint(local, state, {"stage": "operator"})
        shutil.copytree(local, storage)  # what Ray's SYNC upload does on local storage
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_checkpoint(storage)
        restores.append(time.perf_counter() - t0)
        shutil.rmtree(local)
        shutil.rmtree(storage.parent)
    save_s, restore_s = statistics.median(saves), statistics.median(restores)
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return {
        "recipe": name,
        "params_mb": round(size / 2**20, 2),
        "step_s": round(step_s, 4),
        "steps_per_epoch": steps_per_epoch,
        "epoch_s": round(epoch_s, 2),
        "save_s": round(save_s, 4),
        "restore_s": round(restore_s, 4),
        "save_fraction": round(save_s / epoch_s, 5),
        "save_restore_fraction": round((save_s + restore_s) / epoch_s, 5),
    }


def main() -> None:
    torch.set_num_threads(1)
    emit(
        "checkpoint",
        {"results": [measure(n, p, t) for n, (p, t) in RECIPES.items()], "goal_fraction": 0.02},
        setting={"torch_threads": 1, "storage": "local disk"},
    )


if __name__ == "__main__":
    main()
