"""1 vs 2 training workers on the operator stage: throughput, and wall time to a target
validation metric (the worse of the two runs' best, so both reach it).

    .venv/bin/python bench/scaling.py [--epochs 6]

Both runs are the whole pipeline on the Ray backend (the operator trained by StageTrainer under
TorchTrainer); figures are the trainer's own metrics rows. On this 2-core box two workers share
the cores with Ray itself; on a GPU cluster each worker is a GPU. The global batch is the same in
both runs (per-worker batch halves at 2 workers).
"""

from __future__ import annotations

import argparse

from _common import emit, run_pipeline, smoke, stage_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    from ups import ray_session

    def config(workers: int):
        return smoke(
            f"scaling.num_workers={workers}",
            "stages.autoencoder.epochs=2",
            f"stages.operator.epochs={args.epochs}",
            "stages.diffusion_residual.epochs=0",
            "stages.consistency_distill.epochs=0",
        )

    ray_session.connect(config(2).cfg)  # one embedded Ray for both runs, sized for the larger one
    runs = {}
    for workers in (1, 2):
        runs[workers] = stage_rows(run_pipeline(config(workers), f"bench-scaling-{workers}w"), "operator")
    batch = config(1).cfg.training.batch_size
    target = max(min(r["val_rollout_nrmse"] for r in rows) for rows in runs.values())

    def time_to_target(rows: list[dict]) -> float:
        elapsed = 0.0
        for r in rows:
            elapsed += r["epoch_time_s"]
            if r["val_rollout_nrmse"] <= target:
                return round(elapsed, 2)
        return float("nan")

    sps = {w: sorted(r["samples_per_s"] for r in rows[1:])[len(rows[1:]) // 2] for w, rows in runs.items()}
    emit(
        "scaling",
        {
            "samples_per_s_1w": sps[1],
            "samples_per_s_2w": sps[2],
            "throughput_ratio": round(sps[2] / sps[1], 3),
            "target_val_rollout_nrmse": round(target, 5),
            "time_to_target_s_1w": time_to_target(runs[1]),
            "time_to_target_s_2w": time_to_target(runs[2]),
        },
        setting={"stage": "operator", "epochs": args.epochs, "global_batch": batch},
    )


if __name__ == "__main__":
    main()
