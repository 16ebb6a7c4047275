"""Checkpoint save and restore time as a fraction of epoch time, smoke and burgers1d recipes.

The checkpoint is the trainer's own: a `StageTrainer` for the operator stage (over a
LocalContext, 1 thread, random latents shaped like the recipe's data, a freshly initialised
autoencoder export) trains two short epochs through `train_epoch()` + `end_epoch()`, so its state
has AdamW moments, EMA, best weights, history, RNG states and progress. Then:

- save = `trainer.checkpoint(row)`: torch.save + sha256 manifest into a temporary folder, then
  the context's report() copying it into the stage's checkpoint storage (local disk here, as
  Ray's copy into run storage);
- restore = `restore()` of a freshly built trainer: manifest verification, weights_only load of
  the newest checkpoint, and loading every state dict.

Epoch time = the trainer's own step time (`samples_per_s` of the second epoch's metrics row) x the
recipe's steps per epoch (PDEBench Burgers: 8100 train trajectories x 37 windows / batch 128).
Goal: save <= 2% of an epoch.

    .venv/bin/python bench/checkpoint.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import torch
from _common import ROOT, emit, ready_trainer, stage_job, synthetic_handoff, synthetic_latents, synthetic_meta

from ups.config import load_config
from ups.train.context import LocalContext
from ups.train.trainer import StageTrainer

RECIPES = {"smoke": ("configs/smoke.yaml", 108), "burgers1d": ("configs/burgers1d.yaml", 8100)}
STEPS = 6  # optimizer steps per measured epoch


def measure(name: str, path: str, n_train: int, repeats: int) -> dict:
    overrides = ["logging.wandb.enabled=false", "checkpoint.every_steps=null", "checkpoint.keep=2",
                 "stages.operator.epochs=2", "stages.operator.patience=null", "eval.horizon=4"]  # fmt: skip
    cfg = load_config(ROOT / path, overrides).cfg
    meta = synthetic_meta(cfg)
    h, b = cfg.stages.operator.rollout_horizon, cfg.training.batch_size
    windows = meta.frames - h
    folder = tempfile.mkdtemp(prefix=f"bench-ckpt-{name}-")
    try:
        data = synthetic_latents(cfg, meta, -(-STEPS * b // windows), 2)
        job = stage_job("operator", cfg, meta, folder, synthetic_handoff("operator", cfg, meta, folder))
        trainer = ready_trainer(job, data)
        for _ in range(2):  # the first epoch warms up; the second's row times the step
            trainer.train_epoch()
            trainer.end_epoch()  # validation, best weights, the metrics row, a checkpoint
        row = trainer.history[-1]
        step_s = trainer.micro_batch / row["samples_per_s"]
        steps_per_epoch = n_train * windows // b
        epoch_s = step_s * steps_per_epoch

        saves, restores = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            trainer.checkpoint(row)
            saves.append(time.perf_counter() - t0)
            fresh = StageTrainer(job, LocalContext(data, keep=cfg.checkpoint.keep))
            fresh.build()
            fresh.ingest()
            t0 = time.perf_counter()
            fresh.restore()
            restores.append(time.perf_counter() - t0)
            assert fresh.progress.epoch == 2, fresh.progress
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    save_s, restore_s = statistics.median(saves), statistics.median(restores)
    size = sum(t.numel() * t.element_size() for t in trainer.module.state_dict().values())
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--repeats", type=int, default=5, help="saves and restores timed (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    emit(
        "checkpoint",
        {"results": [measure(n, *RECIPES[n], args.repeats) for n in args.recipes], "goal_fraction": 0.02},
        setting={
            "trainer": "StageTrainer.checkpoint / restore over LocalContext",
            "torch_threads": 1,
            "storage": "local disk",
        },  # fmt: skip
    )


if __name__ == "__main__":
    main()
