"""The operator stage's training step on one GPU: throughput, MFU and peak memory, fp32 vs bf16
autocast, with and without torch.compile.

The step is the loop's: forward of the stage objective (one-step + unrolled rollout loss),
backward, grad clipping, AdamW, EMA. FLOPs per step are counted by torch's FlopCounterMode
(matmuls and attention, forward + backward); MFU = achieved FLOP/s / the GPU's dense bf16 peak.

    python bench/gpu_step.py [--steps 50]        # run by bench/gpu.sh on the device machine
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import emit

from ups.config import Config
from ups.models.latent import LatentOperator
from ups.stages.operator import OperatorObjective
from ups.train.optim import build_optimizer, ema_model

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, no sparsity

RECIPES = {  # latent tokens x dim, operator width/depth/heads, global batch, rollout horizon
    "burgers1d": (
        {
            "latent": {"tokens": 32, "dim": 32},
            "model": {"operator": {"hidden": 128, "depth": 4, "heads": 4}},
            "stages": {"operator": {"rollout_horizon": 4}},
        },
        512,
    ),
    "scale": (
        {
            "latent": {"tokens": 128, "dim": 128},
            "model": {"operator": {"hidden": 512, "depth": 8, "heads": 8}},
            "stages": {"operator": {"rollout_horizon": 4}},
        },
        256,
    ),
}


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(recipe: str, dtype: str, compiled: bool | str, steps: int) -> dict:
    tree, batch = RECIPES[recipe]
    cfg = Config.model_validate(tree)
    h = cfg.stages.operator.rollout_horizon
    torch.manual_seed(0)
    dev = torch.device("cuda")
    module = OperatorObjective(
        LatentOperator(cfg.latent.tokens, cfg.latent.dim, cfg.model.operator), cfg.stages.operator.lambda_rollout
    ).to(dev)
    opt = build_optimizer(module, cfg.stages.operator.optimizer)
    ema = ema_model(module, cfg.training.ema_decay)
    mode = compiled if isinstance(compiled, str) else None
    model = torch.compile(module, mode=mode) if compiled else module
    data = {
        "z": torch.randn(batch, h + 1, cfg.latent.tokens, cfg.latent.dim, device=dev),
        "dt": torch.full((batch,), 0.05, device=dev),
        "task": torch.zeros(batch, dtype=torch.long, device=dev),
    }
    amp = dtype == "bf16"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss, _ = model(data)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update_parameters(module)

    t0 = time.perf_counter()
    for _ in range(5):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss, _ = module(data)
        loss.float().backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = peak_flops()
    return {
        "recipe": recipe,
        "dtype": dtype,
        "compile": compiled,
        "batch": batch,
        "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 2),
        "steps_per_s": round(1 / dt, 1),
        "samples_per_s": round(batch / dt),
        "tflops_per_s": round(flops / dt / 1e12, 1),
        "mfu": round(flops / dt / peak, 4) if peak else None,
        "warmup_s": round(warmup_s, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "bf16", "bf16+compile"],
        help="fp32 | bf16 | bf16+compile | bf16+reduce-overhead (CUDA graphs)",
    )
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    parse = {
        "fp32": ("fp32", False),
        "bf16": ("bf16", False),
        "bf16+compile": ("bf16", True),
        "bf16+reduce-overhead": ("bf16", "reduce-overhead"),
    }
    for recipe in args.recipes:
        for dtype, compiled in (parse[v] for v in args.variants):
            results.append(run(recipe, dtype, compiled, args.steps))
            print(results[-1], flush=True)
    emit("gpu_step", {"results": results}, setting={"peak_bf16_flops": peak_flops(), "tf32_matmul": True})


if __name__ == "__main__":
    main()
