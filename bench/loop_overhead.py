"""The same trainer with and without Ray Train: the operator stage's StageTrainer under
TorchTrainer (1 worker, `--threads` CPUs) vs over a LocalContext in a fresh process with as many
torch threads, same
config, TrainJob and latent cache. Figure: median over rounds of the paired samples/s ratio
ray / local (goal >= 0.97).

    .venv/bin/python bench/loop_overhead.py [--rounds 6] [--epochs 6] [--threads 1] [--full-pipeline]
                                            [--config configs/smoke.yaml]

`--config configs/quickstart.yaml` measures a burgers1d-shaped stage (the anchored spectral
operator on 256 points, a 4-step unroll): 20x the smoke step's work.

Both sides report the trainer's own `samples_per_s` (training steps only: validation, the
checkpoint and Ray's report() are outside it) for each epoch after the first, read from the
round's metrics.jsonl; a round's figure is the median over its epochs.

- Ray: round 0 runs the whole pipeline on the Ray backend (autoencoder 1 epoch, latent cache,
  operator, evaluation). Later rounds launch the operator's worker group with
  `RayBackend.train`, the call the pipeline makes for that group, on the same materialized cache
  (`--full-pipeline`: the whole pipeline every round, and that round's cache for both sides).
- Local: `LocalBackend.train` (StageTrainer over a LocalContext: the `--no-ray` path) on that
  cache in a fresh process with OMP_NUM_THREADS=N and torch.set_num_threads(N), N = `--threads`,
  the CPUs the Ray worker is given.

This VM's single-thread speed drifts by +-25% over tens of seconds, so the two alternate in
ABBA order (Ray local, local Ray, Ray local, ...) and each round's ratio pairs measurements a few
seconds apart; the median of those ratios and their spread are the figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    OUT,
    ROOT,
    cache_latents,
    data_meta,
    emit,
    quiet,
    read_rows,
    run_handoff,
    run_pipeline,
    smoke,
    stage_job,
    stage_rows,
)

STAGE = "operator"


def overrides(epochs: int, threads: int) -> list[str]:
    return [
        "scaling.num_workers=1",
        f"scaling.cpus_per_worker={threads}",
        "stages.autoencoder.epochs=1",
        f"stages.{STAGE}.epochs={epochs}",
        f"stages.{STAGE}.patience=null",
        "stages.diffusion_residual.epochs=0",
        "stages.consistency_distill.epochs=0",
        "stages.fno_baseline.epochs=0",
    ]


def local_main(spec_path: str) -> None:
    """In the fresh process: train the job with LocalBackend on the run's latent cache."""
    import torch

    from ups import config as C
    from ups.backend.local_backend import LocalBackend
    from ups.contracts import TrainJob

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    job = TrainJob.from_dict(spec["job"])
    results, _ = LocalBackend(device="cpu", say=quiet).train(
        job.stage, [job], cache_latents(spec["summary"]), C.from_dict(job.cfg), []
    )
    assert results[0].status == "completed", results[0]


def local_round(job, summary: dict, threads: int) -> list[dict]:
    spec = Path(job.run_uri) / "local_job.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"job": job.to_dict(), "summary": {"latent_cache": summary["latent_cache"]},
                                "threads": threads}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, __file__, "--local", str(spec)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"local round failed:\n{proc.stderr[-4000:]}")
    return read_rows(job.run_uri, STAGE)


def figures(rows: list[dict]) -> list[float]:
    return [r["samples_per_s"] for r in rows[1:]]  # the first epoch pays one-off warm-up costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="paired rounds (Ray + local each)")
    ap.add_argument("--epochs", type=int, default=6, help="operator epochs per run (the first is not counted)")
    ap.add_argument("--threads", type=int, default=1, help="CPUs of the Ray worker = torch threads of the local side")
    ap.add_argument("--full-pipeline", action="store_true", help="run the whole Ray pipeline in every Ray round")
    ap.add_argument("--config", default=str(ROOT / "configs" / "smoke.yaml"), help="the recipe whose operator is timed")
    ap.add_argument("--local", help=argparse.SUPPRESS)  # internal: the local side, in a fresh process
    args = ap.parse_args()
    if args.local:
        local_main(args.local)
        return
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is not counted)")

    from ups.backend.ray_backend import RayBackend

    loaded = smoke(*overrides(args.epochs, args.threads), config=args.config)
    cfg = loaded.cfg
    meta = data_meta(cfg)
    backend = RayBackend(say=quiet)
    base = OUT / f"bench-loop-{int(time.time())}"
    ray_sps: list[list[float]] = []
    local_sps: list[list[float]] = []
    summary: dict = {}
    latents = None
    t_start = time.perf_counter()

    def ray_side(i: int) -> list[dict]:
        nonlocal summary, latents
        if i == 0 or args.full_pipeline:
            summary = run_pipeline(loaded, f"bench-loop-pipeline-{i}", backend=backend)
            latents = None
            return stage_rows(summary, STAGE)
        if latents is None:
            from ups.latent_cache import LatentCache
            from ups.storage import Storage

            uri = summary["latent_cache"]["uri"]
            latents = backend.latent_data(LatentCache(uri, Storage(uri).read_json("manifest.json")))
        job = stage_job(STAGE, cfg, meta, base / f"ray-{i}", run_handoff(summary, STAGE))
        job = dataclasses.replace(job, mailbox=backend.mailbox_name())  # as the pipeline's job
        results, _ = backend.train(STAGE, [job], latents, cfg, [])
        assert results[0].status == "completed", results[0]
        return read_rows(job.run_uri, STAGE)

    def local_side(i: int) -> list[dict]:
        job = stage_job(STAGE, cfg, meta, base / f"local-{i}", run_handoff(summary, STAGE))
        return local_round(job, summary, args.threads)

    for i in range(args.rounds):
        # ABBA: round 0 must start on Ray (it builds the cache); odd rounds start locally.
        if i % 2 == 0:
            ray_rows, local_rows = ray_side(i), local_side(i)
        else:
            local_rows, ray_rows = local_side(i), ray_side(i)
        ray_sps.append(figures(ray_rows))
        local_sps.append(figures(local_rows))
        print(
            f"round {i}: ray {statistics.median(ray_sps[-1]):.0f}  local {statistics.median(local_sps[-1]):.0f} "
            f"samples/s  ({time.perf_counter() - t_start:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    ray_threads = ray_rows[0].get("torch_threads")  # what the Ray worker's torch actually used
    ratios = [statistics.median(r) / statistics.median(b) for r, b in zip(ray_sps, local_sps)]
    ray_all = [x for xs in ray_sps for x in xs]
    local_all = [x for xs in local_sps for x in xs]
    iqr = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    r3 = lambda xs: [round(x, 3) for x in xs]  # noqa: E731
    r1 = lambda xs: [round(min(xs), 1), round(max(xs), 1)]  # noqa: E731
    median_ratio = statistics.median(ratios)
    emit(
        "loop_overhead",
        {
            "ratio_median": round(median_ratio, 3),
            "ratio_range": r3([min(ratios), max(ratios)]),
            "ratio_iqr": r3([iqr[0], iqr[2]]),
            "goal": 0.97,
            "met": median_ratio >= 0.97,
            "ray_samples_per_s": round(statistics.median(ray_all), 1),
            "local_samples_per_s": round(statistics.median(local_all), 1),
            "ray_range": r1(ray_all),
            "local_range": r1(local_all),
            "round_ratios": r3(ratios),
        },
        setting={
            "stage": STAGE,
            "config": os.path.relpath(args.config, ROOT),
            "trainer": "ups.train.trainer.StageTrainer (Ray: RayContext under TorchTrainer; local: LocalContext)",
            "workers": 1,
            "cpus_per_worker": args.threads,
            "batch": cfg.training.batch_size,
            "rounds": args.rounds,
            "order": "ABBA",
            "epochs_counted_per_round": len(ray_sps[0]),
            "steps_per_epoch": ray_rows[0]["global_step"],
            "ray_rounds": "pipeline every round"
            if args.full_pipeline
            else "pipeline in round 0, RayBackend.train after",
            "torch_threads": args.threads,
            "ray_worker_torch_threads": ray_threads,
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
    )


if __name__ == "__main__":
    main()
