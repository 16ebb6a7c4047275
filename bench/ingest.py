"""Ray Data ingest vs training consumption in one training worker.

Iterates the worker's shard of the Parquet latent cache with `iter_torch_batches` alone, then
again while the same worker trains the operator from memory in its main thread, and measures
what training consumes. Figure: ingest batches/s (while training) / training batches/s, the
headroom (goal >= 5x).

    .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

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

    def ingest(epochs: int) -> float:
        n, start = 0, time.perf_counter()
        for _ in range(epochs):
            for _batch in shard.iter_torch_batches(batch_size=b, dtypes=torch.float32, device="cpu"):
                n += 1
        return n / (time.perf_counter() - start)

    alone = ingest(config["epochs"])
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

    def train_for(seconds: float) -> float:
        stop.clear()
        steps[0] = 0
        t = threading.Thread(target=train)
        t0 = time.perf_counter()
        t.start()
        time.sleep(seconds)
        stop.set()
        t.join()
        return steps[0] / (time.perf_counter() - t0)

    train_alone = train_for(5.0)  # what training consumes when nothing else runs
    stop.clear()
    steps[0] = 0
    t = threading.Thread(target=train)
    t.start()
    during = ingest(config["epochs"])
    stop.set()
    t.join()
    return {"ingest_alone_batches_per_s": round(alone, 1), "ingest_while_training_batches_per_s": round(during, 1),
            "training_batches_per_s": round(train_alone, 1)}


def main() -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from ups.config import to_dict

    loaded = smoke("scaling.num_workers=1", "stages.autoencoder.epochs=1", "stages.operator.epochs=1",
                   "stages.diffusion_residual.epochs=0", "stages.consistency_distill.epochs=0")
    summary = run_pipeline(loaded, "bench-ingest")  # builds the Parquet latent cache
    from ups.latent_cache import LatentCache
    from ups.storage import Storage

    cache_uri = summary["latent_cache"]["uri"]
    cache = LatentCache(cache_uri, Storage(cache_uri).read_json("manifest.json"))
    ds = cache.dataset("train").select_columns(["z"])
    res = TorchTrainer(worker, train_loop_config={"cfg": to_dict(loaded.cfg), "epochs": 5}, datasets={"train": ds},
                       scaling_config=ray.train.ScalingConfig(num_workers=1),
                       run_config=ray.train.RunConfig(name=f"ingest-{int(time.time())}", storage_path=str(OUT))).fit()
    r = res.return_value
    emit("ingest", {**r, "headroom": round(r["ingest_while_training_batches_per_s"] / r["training_batches_per_s"], 1),
                    "goal": 5.0},
         setting={"rows": cache.manifest["rows"]["train"], "batch": loaded.cfg.training.batch_size,
                  "row_shape_z": cache.manifest["shapes"]["z"], "epochs": 5})


if __name__ == "__main__":
    main()
