"""Ray Data ingest vs training consumption in one training worker.

Iterates the worker's shard of the Parquet latent cache with `iter_torch_batches`, alone and
then while the same worker trains the operator in a second thread, and measures what training
consumes. The training is the real trainer: a `StageTrainer` for the operator stage (over a
LocalContext inside the worker, on the run's latent cache in memory) running whole epochs of its
own `train_epoch()`; its rate is optimizer steps (= batches) per second. Each pass restarts
Ray Data's streaming execution, so a pass has a fixed start-up (time to the first batch) and then
a steady rate; both are reported. The smoke cache has only ~100 rows (all start-up), so its files
are listed `--repeat` times to make a pass long enough to measure the steady rate. Figure: steady
ingest batches/s while training / training batches/s, the headroom (goal >= 5x).

    .venv/bin/python bench/ingest.py [--repeat 100]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from _common import OUT, cache_latents, data_meta, emit, ready_trainer, run_handoff, run_pipeline, smoke, stage_job


def worker(config: dict) -> dict:
    import ray.train
    import torch

    from ups.contracts import TrainJob

    job = TrainJob.from_dict(config["job"])
    shard = ray.train.get_dataset_shard("train")
    b = job.cfg["training"]["batch_size"]

    def one_pass() -> tuple[float, float]:
        """(seconds to the first batch, batches/s after it)."""
        n, start, first = 0, time.perf_counter(), None
        for _batch in shard.iter_torch_batches(batch_size=b, dtypes=torch.float32, device="cpu"):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return first - start, (n - 1) / max(end - first, 1e-9)

    def passes(k: int) -> tuple[float, float]:
        runs = [one_pass() for _ in range(k)]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    # The consumer: the real trainer (operator stage, LocalContext in this worker) on the run's
    # latent cache in memory, running whole epochs of its own loop.
    trainer = ready_trainer(job, cache_latents(config["summary"]))
    stop, steps = threading.Event(), [0]

    def train() -> None:
        start = trainer.progress.global_step
        while not stop.is_set():
            trainer.progress.micro = 0  # the next epoch (epoch-0 order again; no validation)
            trainer.train_epoch()
            steps[0] = trainer.progress.global_step - start

    def start_training() -> threading.Thread:
        stop.clear()
        steps[0] = 0
        t = threading.Thread(target=train)
        t.start()
        return t

    startup_alone, rate_alone = passes(config["passes"])
    t0, t = time.perf_counter(), start_training()
    time.sleep(5.0)  # what training consumes when nothing else runs in the worker
    stop.set()
    t.join()
    train_rate = steps[0] / (time.perf_counter() - t0)
    t = start_training()
    startup_during, rate_during = passes(config["passes"])
    stop.set()
    t.join()
    return {
        "ingest_startup_s_alone": round(startup_alone, 2),
        "ingest_batches_per_s_alone": round(rate_alone, 1),
        "ingest_startup_s_while_training": round(startup_during, 2),
        "ingest_batches_per_s_while_training": round(rate_during, 1),
        "training_batches_per_s": round(train_rate, 1),
    }


def main() -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from ups.latent_cache import LatentCache
    from ups.storage import Storage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    loaded = smoke(
        "scaling.num_workers=1",
        "stages.autoencoder.epochs=1",
        "stages.operator.epochs=1",
        "stages.diffusion_residual.epochs=0",
        "stages.consistency_distill.epochs=0",
    )
    summary = run_pipeline(loaded, "bench-ingest")  # builds the Parquet latent cache
    cache_uri = summary["latent_cache"]["uri"]
    cache = LatentCache(cache_uri, Storage(cache_uri).read_json("manifest.json"))
    files = [f"{cache.uri}/{f}" for f in cache.manifest["files"]["train"]] * args.repeat
    ds = ray.data.read_parquet(files).select_columns(["z"])
    rows = cache.manifest["rows"]["train"] * args.repeat
    job = stage_job("operator", loaded.cfg, data_meta(loaded.cfg), OUT / f"{summary['name']}-consumer",
                    run_handoff(summary, "operator"))  # fmt: skip
    res = TorchTrainer(
        worker,
        train_loop_config={
            "job": job.to_dict(),
            "summary": {"latent_cache": summary["latent_cache"]},
            "passes": args.passes,
        },  # fmt: skip
        datasets={"train": ds},
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name=f"ingest-{int(time.time())}", storage_path=str(OUT)),
    ).fit()
    r = res.return_value
    emit(
        "ingest",
        {
            **r,
            "headroom": round(r["ingest_batches_per_s_while_training"] / r["training_batches_per_s"], 1),
            "goal": 5.0,
        },
        setting={
            "rows_per_pass": rows,
            "batch": loaded.cfg.training.batch_size,
            "row_shape_z": cache.manifest["shapes"]["z"],
            "passes": args.passes,
        },
    )


if __name__ == "__main__":
    main()
