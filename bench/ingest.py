"""Ray Data ingest vs training consumption in one training worker.

Iterates the worker's shard of the Parquet latent cache with `iter_torch_batches`, alone and
then while the same worker trains the operator in a second thread, and measures what training
consumes. Each pass restarts Ray Data's streaming execution, so a pass has a fixed start-up
(time to the first batch) and then a steady rate; both are reported. The smoke cache has only
~100 rows (all start-up), so its files are listed `--repeat` times to make a pass long enough to
measure the steady rate. Figure: steady ingest batches/s while training / training batches/s,
the headroom (goal >= 5x).

    .venv/bin/python bench/ingest.py [--repeat 100]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from _common import OUT, emit, run_pipeline, smoke


def worker(config: dict) -> dict:
    import ray.train
    import torch

    from ups.config import Config
    from ups.models.latent import LatentOperator
    from ups.stages.operator import OperatorObjective
    from ups.train.optim import build_optimizer

    cfg = Config.model_validate(config["cfg"])
    shard = ray.train.get_dataset_shard("train")
    b = cfg.training.batch_size

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

    module = OperatorObjective(LatentOperator(cfg.latent.tokens, cfg.latent.dim, cfg.model.operator), 0.5)
    opt = build_optimizer(module, cfg.stages.operator.optimizer)
    seq = torch.randn(b, 2, cfg.latent.tokens, cfg.latent.dim)
    batch = {"z": seq, "dt": torch.full((b,), 0.1), "task": torch.zeros(b, dtype=torch.long)}
    stop, steps = threading.Event(), [0]

    def train() -> None:
        while not stop.is_set():
            loss, _ = module(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps[0] += 1

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

    from ups.config import to_dict
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
    res = TorchTrainer(
        worker,
        train_loop_config={"cfg": to_dict(loaded.cfg), "passes": args.passes},
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
