"""The operator stage's per-worker loop under TorchTrainer (1 worker) vs a bare PyTorch loop over
the same in-memory tensors, with the same model, optimizer, EMA, clipping, batch size and thread
count. Figure: samples/s ratio (goal >= 0.97).

    .venv/bin/python bench/loop_overhead.py [--epochs 6] [--rounds 3]

The Ray figure is the loop's own `samples_per_s` (training steps only, validation excluded) per
epoch after the first. The bare loop runs as many steps in a fresh process with
OMP_NUM_THREADS=1, as a Ray worker with 1 CPU gets. This VM's single-thread speed drifts by
+-25% over tens of seconds even with nothing else running, so the two are measured in
alternating rounds (Ray, bare, Ray, bare, ...) and the ratio is of the medians over all rounds;
the spread of each is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from _common import ROOT, emit, run_pipeline, smoke, stage_rows


def bare_loop(cfg, frames: int, n_traj: int, steps: int) -> float:
    """Samples/s of forward, backward, clip, step, EMA on batches indexed from memory."""
    from ups.models.latent import LatentOperator
    from ups.stages.operator import OperatorObjective
    from ups.train.optim import build_optimizer, ema_model

    torch.manual_seed(0)
    scfg, h = cfg.stages.operator, cfg.stages.operator.rollout_horizon
    module = OperatorObjective(
        LatentOperator(cfg.latent.tokens, cfg.latent.dim, cfg.model.operator), scfg.lambda_rollout
    )
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


def bare_in_fresh_process(overrides: list[str], frames: int, n_traj: int, steps: int, n: int) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    spec = {"overrides": overrides, "frames": frames, "n_traj": n_traj, "steps": steps, "n": n}
    args = ["--bare", json.dumps(spec)]
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bare", help=argparse.SUPPRESS)  # internal: run only the bare loop, print samples/s
    args = ap.parse_args()
    if args.bare:  # one "epoch" of steps per figure, as many figures as the Ray run has epochs
        spec = json.loads(args.bare)
        torch.set_num_threads(1)
        cfg = smoke(*spec["overrides"]).cfg
        print(json.dumps([bare_loop(cfg, spec["frames"], spec["n_traj"], spec["steps"]) for _ in range(spec["n"])]))
        return
    overrides = [
        "scaling.num_workers=1",
        "stages.autoencoder.epochs=1",
        f"stages.operator.epochs={args.epochs}",
        "stages.diffusion_residual.epochs=0",
        "stages.consistency_distill.epochs=0",
    ]
    loaded = smoke(*overrides)
    frames = len(range(0, loaded.cfg.data.generate.frames, loaded.cfg.data.t_stride))
    ray_sps, bare_sps = [], []
    for i in range(args.rounds):
        summary = run_pipeline(loaded, f"bench-loop-{i}")
        rows = stage_rows(summary, "operator")[1:]  # the first epoch pays one-off warm-up costs
        ray_sps += [r["samples_per_s"] for r in rows]
        per_epoch = rows[0]["global_step"] // 2  # global_step after the first two epochs
        spec = {"frames": frames, "n_traj": summary["latent_cache"]["rows"]["train"], "steps": per_epoch}
        bare_sps += bare_in_fresh_process(overrides, **spec, n=len(rows))
    ray_med, bare_med = statistics.median(ray_sps), statistics.median(bare_sps)
    spread = lambda xs: [round(min(xs), 1), round(max(xs), 1)]  # noqa: E731
    emit(
        "loop_overhead",
        {
            "ray_samples_per_s": round(ray_med, 1),
            "bare_samples_per_s": round(bare_med, 1),
            "ratio": round(ray_med / bare_med, 3),
            "goal": 0.97,
            "ray_range": spread(ray_sps),
            "bare_range": spread(bare_sps),
        },
        setting={
            "stage": "operator",
            "workers": 1,
            "batch": loaded.cfg.training.batch_size,
            "rounds": args.rounds,
            "epochs_per_round": len(rows),
            "steps_per_epoch": per_epoch,
            "torch_threads": 1,
        },
    )


if __name__ == "__main__":
    main()
