"""The latent cache: trajectories encoded once by the trained encoder, as Parquet shards.

A Ray Data job maps the encoder (a callable class, on GPU actors when there are GPUs) over all
trajectories and writes Parquet files per split with fixed-shape tensor columns: `idx`, `task`,
`z` (T, tokens, dim) and the normalised fields `u` (T, X[, Y], C), which decoded validation
compares against (and which are smaller than the latents on PDEBench grids). A manifest records
the encoder's weight digest and the data digest; the cache is reused only when both match and is
rebuilt (into a temporary folder, then swapped in) when either differs.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ups import config as C
from ups.config import Config
from ups.data.views import SPLITS, DataMeta, FieldReader, Task
from ups.exports import read_export
from ups.models import factory
from ups.storage import Storage
from ups.train.shard import Trajectories, from_table, read_parquet
from ups.train.spill import SpillFolder, spill

if TYPE_CHECKING:
    from ray.data import Dataset

CACHE_DIR, MANIFEST, FORMAT = "latent_cache", "manifest.json", 2
ENCODE_BATCH = 32  # trajectories per encoder batch, hence per Parquet file


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
    return pa.table(
        {
            "idx": np.concatenate(idx).astype(np.int64),
            "task": np.concatenate(task),
            "split": pa.array(split_col),
            "u": pa.FixedShapeTensorArray.from_numpy_ndarray(u_all),
        }
    )


def streamed(tasks: list[Task]) -> bool:
    """Whether the tasks are readers of their files (`data.mode` streams) rather than arrays."""
    return any(isinstance(t.u, FieldReader) for t in tasks)


def _chunk(tasks: list[Task]) -> int:
    """Trajectories per read (`data.chunk_trajectories`, which every reader carries)."""
    return next((t.u.chunk for t in tasks if isinstance(t.u, FieldReader)), ENCODE_BATCH)


def field_chunks(tasks: list[Task], splits: tuple[str, ...], size: int) -> list[dict[str, Any]]:
    """Chunks of at most `size` trajectories, in the row order of `fields_table`: (task, split,
    start, stop), positions within that task's split."""
    return [
        {"task": i, "split": split, "start": a, "stop": min(a + size, len(t.splits[split]))}
        for i, t in enumerate(tasks)
        for split in splits
        for a in range(0, len(t.splits[split]), size)
    ]


def read_chunk(tasks: list[Task], chunk: dict[str, Any], with_split: bool = True) -> dict[str, np.ndarray]:
    """One chunk's columns, read from its file: idx (global trajectory id), task, [split,] u."""
    ti, split = int(chunk["task"]), str(chunk["split"])
    offset = sum(len(t.u) for t in tasks[:ti])
    rows = tasks[ti].splits[split][int(chunk["start"]) : int(chunk["stop"])]
    out: dict[str, np.ndarray] = {
        "idx": (rows + offset).astype(np.int64),
        "task": np.full(len(rows), ti, np.int32),
        "u": np.ascontiguousarray(tasks[ti].u[rows], dtype=np.float32),
    }
    return {**out, "split": np.array([split] * len(rows))} if with_split else out


def _read_chunks(batch: dict[str, np.ndarray], tasks: list[Task], with_split: bool) -> dict[str, np.ndarray]:
    """Ray Data: a batch of one chunk descriptor -> that chunk's rows (read by the Ray task)."""
    chunk = {k: v[0] for k, v in batch.items()}
    return read_chunk(tasks, chunk, with_split)


def stream_dataset(tasks: list[Task], splits: tuple[str, ...], size: int, with_split: bool = True) -> Dataset:
    """Fields as a Ray Dataset whose blocks are chunks read by Ray tasks: the driver ships the
    chunk list and the readers (paths and statistics), never an array."""
    import ray.data

    chunks = field_chunks(tasks, splits, size)
    read = functools.partial(_read_chunks, tasks=tasks, with_split=with_split)
    return ray.data.from_items(chunks, override_num_blocks=max(len(chunks), 1)).map_batches(
        read, batch_size=1, batch_format="numpy"
    )


def fields_dataset(tasks: list[Task], split: str) -> Dataset:
    """A split's fields as a Ray Dataset (the autoencoder's input under Ray)."""
    import ray.data

    if streamed(tasks):
        return stream_dataset(tasks, (split,), _chunk(tasks), with_split=False)
    return ray.data.from_arrow(fields_table(tasks, (split,)).drop_columns(["split"]))


def fields_trajectories(tasks: list[Task], split: str, spill_to: SpillFolder | None = None) -> Trajectories:
    """A split's fields without Ray: in memory, or (streaming) spilled chunk by chunk to `spill_to`."""
    if spill_to is not None:
        chunks = field_chunks(tasks, (split,), _chunk(tasks))
        return spill((read_chunk(tasks, c, with_split=False) for c in chunks), spill_to, f"fields-{split}")
    return from_table(fields_table(tasks, (split,)).drop_columns(["split"]))


class Encode:
    """Ray Data callable class: loads the encoder once per actor, encodes whole trajectories and
    writes each (split, batch) as one Parquet file named by its first trajectory id.

    Writing here rather than with `write_parquet(partition_cols=...)` keeps row order fixed:
    Ray's partitioned write appends blocks in completion order, which would change each rank's
    shard from one cache build to the next. Files hold pyarrow's canonical fixed-shape tensor
    type, readable without Ray. Each file's sha256 goes into the manifest, so a reused cache is
    checked against its files, not only against the digests it recorded.
    """

    def __init__(
        self, export_uri: str, export_sha256: str, cfg: dict[str, Any], meta: dict[str, Any], out_uri: str
    ) -> None:
        cfg_, meta_ = C.from_dict(cfg), DataMeta.from_dict(meta)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = factory.build("encoder", cfg_.model, meta_, cfg_.latent)
        self.encoder.load_state_dict(read_export(export_uri, export_sha256)["encoder"])
        self.encoder.to(self.device).eval()
        self.out = Storage(out_uri)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        u = np.array(batch["u"], dtype=np.float32)  # a writable copy
        # One trajectory per encoder call: the result of a row never depends on its batch-mates.
        z = torch.stack([self.encoder(traj) for traj in torch.as_tensor(u, device=self.device)]).cpu().numpy()
        files, counts, splits, shas = [], [], [], []
        for split in sorted(set(batch["split"].tolist())):
            m = batch["split"] == split
            table = pa.table(
                {
                    "idx": batch["idx"][m],
                    "task": batch["task"][m],
                    "z": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(z[m])),
                    "u": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(u[m])),
                }
            )
            name = f"part-{int(batch['idx'][m][0]):010d}.parquet"
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            data = sink.getvalue().to_pybytes()
            self.out.write_bytes(data, split, name)
            files.append(f"{split}/{name}")
            counts.append(int(m.sum()))
            splits.append(split)
            shas.append(hashlib.sha256(data).hexdigest())
        return {"split": np.array(splits), "file": np.array(files), "rows": np.array(counts), "sha256": np.array(shas)}


@dataclass
class LatentCache:
    uri: str  # folder holding {split}/part-*.parquet and the manifest
    manifest: dict[str, Any]

    def files(self, split: str) -> list[str]:
        return [f"{self.uri}/{f}" for f in self.manifest["files"][split]]

    def dataset(self, split: str) -> Dataset:
        """One split as a Ray Dataset, files in trajectory order (every run shards identically)."""
        import ray.data

        ds = ray.data.read_parquet(self.files(split))
        return ds.drop_columns(["u"]) if split == "train" else ds

    def trajectories(self, split: str, spill_to: SpillFolder | None = None) -> Trajectories:
        """One split without Ray (the same rows the Ray dataset holds): in memory, or spilled file
        by file to `spill_to`."""
        store = Storage(self.uri)
        if spill_to is not None:
            drop = ["u"] if split == "train" else []

            def batches() -> Any:
                for f in self.manifest["files"][split]:
                    table = pq.read_table(pa.BufferReader(store.read_bytes(f))).drop_columns(drop)
                    yield {c: _column(table, c) for c in table.column_names}

            return spill(batches(), spill_to, f"latents-{split}")
        table = read_parquet(self.files(split))
        return from_table(table.drop_columns(["u"]) if split == "train" else table)

    def verify(self) -> str | None:
        """None if every file matches the manifest's sha256, else what does not."""
        store = Storage(self.uri)
        for f, sha in self.manifest.get("sha256", {}).items():
            if not store.exists(f):
                return f"{f} is missing"
            if hashlib.sha256(store.read_bytes(f)).hexdigest() != sha:
                return f"{f} does not match its sha256"
        if set(self.manifest.get("sha256", {})) != {f for fs in self.manifest["files"].values() for f in fs}:
            return "the manifest does not list a digest for every file"
        return None


def cache_build_id(run: Storage) -> str | None:
    """The build id of the run's latent cache (None: no cache, or one built before ids)."""
    if not run.exists(CACHE_DIR, MANIFEST):
        return None
    try:
        found = run.read_json(CACHE_DIR, MANIFEST).get("build_id")
    except (ValueError, AttributeError):  # a damaged manifest: build_or_reuse rebuilds the cache
        return None
    return found if isinstance(found, str) else None


def build_or_reuse(
    run: Storage,
    tasks: list[Task],
    meta: DataMeta,
    cfg: Config,
    encoder_export_uri: str,
    encoder_sha256: str,
    data_sha256: str,
    *,
    use_ray: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[LatentCache, bool]:
    """Return the run's cache and whether it was reused (its digests and its files verified)."""
    expect = {
        "format": FORMAT,
        "encoder_sha256": encoder_sha256,
        "data_sha256": data_sha256,
        "latent": [cfg.latent.tokens, cfg.latent.dim],
    }
    if run.exists(CACHE_DIR, MANIFEST):
        manifest = run.read_json(CACHE_DIR, MANIFEST)
        if all(manifest.get(k) == v for k, v in expect.items()):
            cache = LatentCache(run.uri_of(CACHE_DIR), manifest)
            problem = cache.verify()
            if problem is None:
                return cache, True
            say(f"latent cache: {problem}; rebuilding it")

    t0 = time.perf_counter()
    tmp = f"{CACHE_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    kwargs: dict[str, Any] = {  # Encode's constructor arguments, for an actor or in process
        "export_uri": encoder_export_uri,
        "export_sha256": encoder_sha256,
        "cfg": C.to_wire(cfg),
        "meta": meta.to_dict(),
        "out_uri": run.uri_of(tmp),
    }
    stream = streamed(tasks)
    if use_ray:
        import ray.data

        # One Ray Data job for all splits (one encoder actor start); the actor writes the files.
        # Streaming: Ray tasks read chunks of ENCODE_BATCH trajectories, each chunk one batch and one
        # file (batch_size=None), so the files do not depend on how Ray Data groups blocks.
        # `max_restarts` has no named parameter in 2.60; the project pins ray < 2.61.
        source = (
            stream_dataset(tasks, SPLITS, ENCODE_BATCH) if stream else ray.data.from_arrow(fields_table(tasks, SPLITS))
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            written = source.map_batches(
                Encode,
                fn_constructor_kwargs=kwargs,
                batch_size=None if stream else ENCODE_BATCH,
                compute=ray.data.ActorPoolStrategy(size=1),
                batch_format="numpy",
                num_gpus=1 if cfg.scaling.use_gpu else 0,
                num_cpus=0 if cfg.scaling.use_gpu else 1,
                # No actor restarts: its constructor arguments live in the object store, which Ray
                # warns cannot be relied on for a restart; a failed build is rebuilt by the next run.
                max_restarts=0,
            ).take_all()
    elif stream:
        encode = Encode(**kwargs)
        written = []
        for chunk in field_chunks(tasks, SPLITS, ENCODE_BATCH):
            out = encode(read_chunk(tasks, chunk))
            written += [{k: out[k][i] for k in out} for i in range(len(out["file"]))]
    else:
        encode = Encode(**kwargs)
        written = []
        table = fields_table(tasks, SPLITS)
        for start in range(0, table.num_rows, ENCODE_BATCH):
            part = table.slice(start, ENCODE_BATCH)
            batch = {c: _column(part, c) for c in part.column_names}
            out = encode(batch)
            written += [{k: out[k][i] for k in out} for i in range(len(out["file"]))]
    files = {split: sorted(str(r["file"]) for r in written if r["split"] == split) for split in SPLITS}
    rows = {split: sum(int(r["rows"]) for r in written if r["split"] == split) for split in SPLITS}
    manifest = {
        **expect,
        "files": files,
        "sha256": {str(r["file"]): str(r["sha256"]) for r in written},
        "normalizers": [n.to_dict() for n in meta.normalizers],
        "tasks": meta.tasks,
        "shapes": {
            "z": [meta.frames, cfg.latent.tokens, cfg.latent.dim],
            "u": [meta.frames, *meta.spatial_shape, meta.channels],
        },
        "dtype": "float32",
        "rows": rows,
        "build_time_s": round(time.perf_counter() - t0, 2),
        "build_id": uuid.uuid4().hex,  # tells a rebuilt cache from the one found before (cache_build_id)
    }
    run.write_json(manifest, tmp, MANIFEST)
    run.delete_dir(CACHE_DIR)
    run.move((tmp,), (CACHE_DIR,))
    return LatentCache(run.uri_of(CACHE_DIR), manifest), False


def _column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if isinstance(col.type, pa.FixedShapeTensorType):
        return col.to_numpy_ndarray()
    return col.to_numpy(zero_copy_only=False)
