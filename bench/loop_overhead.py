"""The operator stage's per-worker loop under TorchTrainer (1 worker) vs a bare PyTorch loop over
the same in-memory tensors, with the same model, optimizer, EMA, clipping, batch size and thread
count. Figure: samples/s ratio (goal >= 0.97).

    .venv/bin/python bench/loop_overhead.py [--epochs 4]

The Ray figure is the loop's own `samples_per_s` (training steps only, validation excluded) over
the epochs after the first; the bare loop runs as many steps in this process, one thread, as a
Ray worker with 1 CPU gets (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import emit, run_pipeline, smoke, stage_rows


def bare_loop(cfg, frames: int, n_traj: int, steps: int) -> float:
    """Samples/s of forward, backward, clip, step, EMA on batches indexed from memory."""
    from ups.models.latent import LatentOperator
    from ups.stages.operator import OperatorObjective
    from ups.train.optim import build_optimizer, ema_model

    torch.manual_seed(0)
    scfg, h = cfg.stages.operator, cfg.stages.operator.rollout_horizon
    module = OperatorObjective(LatentOperator(cfg.latent.tokens, cfg.latent.dim, cfg.model.operator),
                               scfg.lambda_rollout)
    opt = build_optimizer(module, scfg.optimizer)
    ema = ema_model(module, cfg.training.ema_decay)
    z = torch.randn(n_traj, frames, cfg.latent.tokens, cfg.latent.dim)
    b, per = cfg.training.batch_size, frames - h
    dt, task = torch.full((b,), 0.1), torch.zeros(b, dtype=torch.long)

    def step(i: int) -> None:
        ids = torch.randint(0, n_traj * per, (b,), generator=torch.Generator().manual_seed(i))
        seq = z[(ids // per)[:, None], (ids % per)[:, None] + torch.arange(h + 1)]
        loss, _ = module({"z": seq, "dt": dt, "task": task})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.training.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update_parameters(module)

    for i in range(10):  # warm-up
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * b / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    loaded = smoke("scaling.num_workers=1", "stages.autoencoder.epochs=1", f"stages.operator.epochs={args.epochs}",
                   "stages.diffusion_residual.epochs=0", "stages.consistency_distill.epochs=0")
    summary = run_pipeline(loaded, "bench-loop")
    rows = stage_rows(summary, "operator")[1:]  # the first epoch pays one-off warm-up costs
    ray_sps = statistics.median(r["samples_per_s"] for r in rows)
    per_epoch = rows[0]["global_step"] // 2  # global_step after the first two epochs
    n_train = summary["latent_cache"]["rows"]["train"]

    torch.set_num_threads(1)
    frames = len(range(0, loaded.cfg.data.generate.frames, loaded.cfg.data.t_stride))
    bare = bare_loop(loaded.cfg, frames, n_train, per_epoch * len(rows))
    emit("loop_overhead", {"ray_samples_per_s": round(ray_sps, 1), "bare_samples_per_s": round(bare, 1),
                           "ratio": round(ray_sps / bare, 3), "goal": 0.97},
         setting={"stage": "operator", "workers": 1, "batch": loaded.cfg.training.batch_size,
                  "epochs_measured": len(rows), "steps_per_epoch": per_epoch, "torch_threads": 1})


if __name__ == "__main__":
    main()
