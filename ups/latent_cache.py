"""The latent cache: trajectories encoded once by the trained encoder, as Parquet shards.

A Ray Data job maps the encoder (a callable class, on GPU actors when there are GPUs) over all
trajectories and writes Parquet partitioned by split, with fixed-shape tensor columns: `idx`,
`task`, `z` (T, tokens, dim) and the normalised fields `u` (T, X[, Y], C), which decoded
validation compares against (and which are smaller than the latents on PDEBench grids). A manifest records
the encoder's weight digest and the data digest; the cache is reused only when both match and is
rebuilt (into a temporary folder, then swapped in) when either differs.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray.data
import torch

from ups.config import Config
from ups.data.views import SPLITS, DataMeta, Task
from ups.models.codec import GridEncoder
from ups.storage import Storage
from ups.train.state import from_bytes

CACHE_DIR, MANIFEST, FORMAT = "latent_cache", "manifest.json", 1
ROWS_PER_BLOCK = 256  # trajectories per block when the cache is read back


def fields_table(tasks: list[Task], splits: tuple[str, ...]) -> pa.Table:
    """Rows of some splits over all tasks: idx (global trajectory id), task, split, u (T, X[, Y], C)."""
    idx, task, split_col, u, offset = [], [], [], [], 0
    for i, t in enumerate(tasks):
        for split in splits:
            rows = t.splits[split]
            idx.append(rows + offset)
            task.append(np.full(len(rows), i, np.int32))
            split_col += [split] * len(rows)
            u.append(t.u[rows])
        offset += len(t.u)
    u_all = np.ascontiguousarray(np.concatenate(u)).astype(np.float32)
    return pa.table({"idx": np.concatenate(idx).astype(np.int64), "task": np.concatenate(task),
                     "split": pa.array(split_col), "u": pa.FixedShapeTensorArray.from_numpy_ndarray(u_all)})


def fields_dataset(tasks: list[Task], split: str) -> ray.data.Dataset:
    return ray.data.from_arrow(fields_table(tasks, (split,)).drop_columns(["split"]))


class Encode:
    """Ray Data callable class: loads the encoder once per actor, encodes whole trajectories."""

    def __init__(self, export_uri: str, cfg: dict, meta: dict):
        cfg_, meta_ = Config.model_validate(cfg), DataMeta.from_dict(meta)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = GridEncoder(torch.as_tensor(meta_.grid), meta_.channels, cfg_.latent.tokens, cfg_.latent.dim,
                                   cfg_.model.encoder)
        self.encoder.load_state_dict(from_bytes(Storage(export_uri).read_bytes())["tensors"]["encoder"])
        self.encoder.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        u = torch.as_tensor(np.array(batch["u"]), device=self.device)  # a writable copy
        # One trajectory per encoder call: the result of a row never depends on its batch-mates.
        z = torch.stack([self.encoder(traj) for traj in u]).cpu().numpy()
        return {"idx": batch["idx"], "task": batch["task"], "split": batch["split"], "z": z, "u": batch["u"]}


@dataclass
class LatentCache:
    uri: str  # folder holding {split}/ shards and the manifest
    manifest: dict

    def dataset(self, split: str) -> ray.data.Dataset:
        """One split sorted by trajectory id, with block boundaries fixed by its row count alone.

        Ray's partitioned write appends blocks in completion order, so row order and row
        groups vary from one cache build to the next; the trainer's equal split across ranks
        follows rows and blocks. Sorting and re-blocking makes each rank's share a function of
        the data only, so separate runs (and restarts) shard identically.
        """
        ds = ray.data.read_parquet(f"{self.uri}/split={split}", partitioning=None)
        if split == "train":
            ds = ds.drop_columns(["u"])
        blocks = max(1, math.ceil(self.manifest["rows"][split] / ROWS_PER_BLOCK))
        return ds.sort("idx").repartition(blocks)


def build_or_reuse(run: Storage, tasks: list[Task], meta: DataMeta, cfg: Config, encoder_export_uri: str,
                   encoder_sha256: str, data_sha256: str) -> tuple[LatentCache, bool]:
    """Return the run's cache and whether it was reused."""
    expect = {"format": FORMAT, "encoder_sha256": encoder_sha256, "data_sha256": data_sha256,
              "latent": [cfg.latent.tokens, cfg.latent.dim]}
    if run.exists(CACHE_DIR, MANIFEST):
        manifest = run.read_json(CACHE_DIR, MANIFEST)
        if all(manifest.get(k) == v for k, v in expect.items()):
            return LatentCache(run.uri_of(CACHE_DIR), manifest), True

    t0 = time.perf_counter()
    tmp = f"{CACHE_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    # One Ray Data job for all splits (one encoder actor start), written partitioned by split.
    ds = ray.data.from_arrow(fields_table(tasks, SPLITS)).map_batches(
        Encode, fn_constructor_kwargs={"export_uri": encoder_export_uri, "cfg": cfg.model_dump(mode="json"),
                                       "meta": meta.to_dict()},
        batch_size=32, compute=ray.data.ActorPoolStrategy(size=1), batch_format="numpy",
        num_gpus=1 if cfg.scaling.use_gpu else 0, num_cpus=0 if cfg.scaling.use_gpu else 1)
    ds.write_parquet(run.uri_of(tmp), partition_cols=["split"])
    rows = {split: sum(len(t.splits[split]) for t in tasks) for split in SPLITS}
    manifest = {**expect, "normalizers": [n.to_dict() for n in meta.normalizers], "tasks": meta.tasks,
                "shapes": {"z": [meta.frames, cfg.latent.tokens, cfg.latent.dim],
                           "u": [meta.frames, *meta.spatial_shape, meta.channels]},
                "dtype": "float32", "rows": rows, "build_time_s": round(time.perf_counter() - t0, 2)}
    run.write_json(manifest, tmp, MANIFEST)
    run.delete_dir(CACHE_DIR)
    run.move((tmp,), (CACHE_DIR,))
    return LatentCache(run.uri_of(CACHE_DIR), manifest), False
