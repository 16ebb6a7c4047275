"""The operator stage's training step on one GPU, run by the real trainer: throughput, MFU and
peak memory, fp32 vs bf16 autocast, with and without torch.compile.

Each variant is a `StageTrainer` for the operator stage over a `LocalContext` on cuda, built by
the stage and the model factory from configs/burgers1d.yaml (+ the recipe's overrides and the
variant's `training.amp` / `training.compile` / `training.compile_mode`), on random latent
trajectories and a freshly initialised autoencoder export. One `train_epoch()` of 5 steps is the
warm-up (and compilation); then:

- step: `micro_step` + `optimizer_step` (forward of the stage objective with one-step + unrolled
  rollout loss, backward, clipping, AdamW, EMA, LR schedule) on one fixed device batch;
- epoch: a timed `train_epoch()` (the trainer's own loop, batches built by the stage from the
  CPU-resident trajectories as a worker's shard is) of the same steps.

FLOPs per step are counted by torch's FlopCounterMode (forward + backward of the objective);
MFU = achieved FLOP/s / the GPU's dense bf16 peak.

    python bench/gpu_step.py [--steps 50]        # run by bench/gpu.sh on the device machine
    .venv/bin/python bench/gpu_step.py --device cpu --steps 2 --recipes burgers1d --variants fp32   # dry run
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time

import torch
from _common import (
    ROOT,
    emit,
    fixed_batch,
    ready_trainer,
    stage_job,
    step,
    synthetic_handoff,
    synthetic_latents,
    synthetic_meta,
)

from ups.config import load_config

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, no sparsity
WARMUP_STEPS = 5

RECIPES = {  # configs/burgers1d.yaml plus these overrides
    "burgers1d": ["training.batch_size=512"],  # 32 tokens x 32, width 128, depth 4, horizon 4
    "scale": [
        "latent.tokens=128",
        "latent.dim=128",
        "model.operator.hidden=512",
        "model.operator.depth=8",
        "model.operator.heads=8",
        "training.batch_size=256",
    ],
}
VARIANTS = {  # -> training.* overrides
    "fp32": ["training.amp=none"],
    "bf16": ["training.amp=bf16"],
    "fp32+compile": ["training.amp=none", "training.compile=true", "training.compile_mode=default"],
    "bf16+compile": ["training.amp=bf16", "training.compile=true", "training.compile_mode=default"],
    "bf16+reduce-overhead": ["training.amp=bf16", "training.compile=true", "training.compile_mode=reduce-overhead"],
}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run(recipe: str, variant: str, steps: int, device: str, extra: list[str]) -> dict:
    base = ["logging.wandb.enabled=false", "checkpoint.every_steps=null", "stages.operator.epochs=1000"]
    loaded = load_config(ROOT / "configs" / "burgers1d.yaml", [*base, *RECIPES[recipe], *VARIANTS[variant], *extra])
    cfg = loaded.cfg
    meta = synthetic_meta(cfg)
    windows = meta.frames - cfg.stages.operator.rollout_horizon
    batch_size = cfg.training.batch_size
    # Trajectories for exactly `steps` optimizer steps per epoch (the warm-up epoch runs 5 of them).
    n_steps = max(steps, WARMUP_STEPS)
    folder = tempfile.mkdtemp(prefix=f"gpu-step-{recipe}-")
    try:
        data = synthetic_latents(cfg, meta, math.ceil(n_steps * batch_size / windows), 2)
        job = stage_job("operator", cfg, meta, folder, synthetic_handoff("operator", cfg, meta, folder))
        torch._dynamo.reset()
        trainer = ready_trainer(job, data, device)
        dev = trainer.device
        trainer.micro_per_epoch = WARMUP_STEPS  # the warm-up epoch: the trainer's loop, 5 steps
        t0 = time.perf_counter()
        trainer.train_epoch()
        sync(dev)
        warmup_s = time.perf_counter() - t0

        batch = fixed_batch(trainer)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            amp = trainer.amp_dtype
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                loss, _ = trainer.module(batch)
            loss.float().backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step(trainer, batch)  # one more untimed step on this batch's shapes
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(trainer, batch)
        sync(dev)
        dt = (time.perf_counter() - t0) / steps
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None

        trainer.progress.micro, trainer.micro_per_epoch = 0, steps  # a fresh epoch of `steps` steps
        t0 = time.perf_counter()
        trainer.train_epoch()
        sync(dev)
        epoch_dt = (time.perf_counter() - t0) / steps
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    peak = peak_flops()
    return {
        "recipe": recipe,
        "variant": variant,
        "amp": cfg.training.amp,
        "compile": cfg.training.compile_mode if cfg.training.compile else False,
        "batch": batch_size,
        "params_m": round(sum(p.numel() for p in trainer.module.parameters()) / 1e6, 2),
        "steps_per_s": round(1 / dt, 1),
        "samples_per_s": round(batch_size / dt),
        "epoch_samples_per_s": round(batch_size / epoch_dt),
        "tflops_per_s": round(flops / dt / 1e12, 1),
        "mfu": round(flops / dt / peak, 4) if peak else None,
        "warmup_s": round(warmup_s, 1),
        "peak_mem_gib": round(peak_mem, 2) if peak_mem is not None else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "bf16", "bf16+compile"],
        choices=list(VARIANTS),
        help="bf16+reduce-overhead = CUDA graphs (training.compile_mode)",
    )
    ap.add_argument("--device", default="cuda", help="cuda; cpu only as a dry run of the script")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device (use --device cpu for a dry run)")
    if args.device == "cpu":
        torch.set_num_threads(1)  # a dry run on a shared box: 2 spinning threads on busy cores stall
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for recipe in args.recipes:
        for variant in args.variants:
            results.append(run(recipe, variant, args.steps, args.device, args.set))
            print(results[-1], flush=True)
    emit(
        "gpu_step",
        {"results": results},
        setting={
            "trainer": "ups.train.trainer.StageTrainer over LocalContext",
            "config": "configs/burgers1d.yaml",
            "overrides": args.set,
            "device": args.device,
            "steps": args.steps,
            "peak_bf16_flops": peak_flops(),
            "tf32_matmul": True,
        },
    )


if __name__ == "__main__":
    main()
