"""A worker's share of trajectories, pulled once from its Ray Data shard into memory.

Each stage iterates its shard exactly once, on every rank at the same time (Ray Data's split
coordinator needs all consumers), and keeps the rows as tensors sorted by trajectory id. Every
later epoch then draws batches from memory in an order that is a function of (seed, epoch,
rank) alone, which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pyarrow as pa
import torch

if TYPE_CHECKING:
    from ups.train.diskarray import DiskArray

Rows = Union[torch.Tensor, "DiskArray"]  # in memory, or spilled to local disk (data.mode: stream)


@dataclass
class Trajectories:
    idx: torch.Tensor  # (n,) global trajectory ids
    task: torch.Tensor  # (n,) task ids
    z: Rows | None = None  # (n, T, tokens, dim) latents
    u: Rows | None = None  # (n, T, X[, Y], C) normalised fields

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def latents(self) -> Rows:
        """`z`, for a stage that reads the latent cache."""
        if self.z is None:
            raise RuntimeError("these trajectories carry no latents (z): the stage reads the latent cache")
        return self.z

    @property
    def fields(self) -> Rows:
        """`u`, for a stage (or validation) that reads the physical fields."""
        if self.u is None:
            raise RuntimeError("these trajectories carry no fields (u): train splits of the latent cache drop them")
        return self.u

    def to(self, device: torch.device) -> Trajectories:
        def move(t: Rows | None) -> Rows | None:
            return t.to(device) if isinstance(t, torch.Tensor) else t  # a DiskArray stays on disk

        return Trajectories(self.idx.to(device), self.task.to(device), move(self.z), move(self.u))


@dataclass(frozen=True)
class DirectRows:
    """A split that a worker group of one process reads itself, without Ray Data: the latent
    cache's Parquet `files` (in trajectory order, minus the `drop` columns), or a `table` of fields
    the driver put in the object store (an ObjectRef, resolved by the Ray context).

    Why: Ray Data's streaming split exists to divide rows between workers, and a group of one has
    nothing to divide. Measured on the burgers1d-sized operator (bench/RESULTS.md, "Where `make
    run`'s wall goes"), a
    shard read through it costs 2 s of iterator start, 7 s of split coordinator and 3 s of a
    footer-reader actor for 0.2 s of Parquet; the validation split another 3-6 s. The rows are
    the same either way and are sorted by trajectory id on arrival (`_tensors`), so training
    is bit-identical on both paths."""

    files: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    table: Any = None

    def read_files(self) -> pa.Table:
        return read_parquet(self.files).drop_columns(list(self.drop))


def read_parquet(uris: list[str] | tuple[str, ...]) -> pa.Table:
    """Parquet files (any storage URI) as one table, in the order given."""
    import pyarrow.parquet as pq

    from ups.storage import Storage

    return pa.concat_tables([pq.read_table(pa.BufferReader(Storage(u).read_bytes())) for u in uris])


def collect(iterator: Any, batch_rows: int = 256) -> Trajectories:
    """Drain a Ray Data iterator (or anything with `iter_batches` of numpy columns) into tensors."""
    cols: dict[str, list[np.ndarray]] = {}
    for batch in iterator.iter_batches(batch_size=batch_rows, batch_format="numpy"):
        for k, v in batch.items():
            cols.setdefault(k, []).append(np.asarray(v))
    return _tensors({k: np.concatenate(v) for k, v in cols.items()})


def from_table(table: pa.Table) -> Trajectories:
    """The same, from a pyarrow table in memory (the path without Ray)."""
    cols = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        cols[name] = col.to_numpy_ndarray() if isinstance(col.type, pa.FixedShapeTensorType) else col.to_numpy()
    return _tensors(cols)


def _tensors(data: dict[str, np.ndarray]) -> Trajectories:
    """Columns -> tensors sorted by trajectory id."""
    if not data:
        return Trajectories(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    order = np.argsort(data["idx"], kind="stable")

    def get(k: str, dt: torch.dtype) -> torch.Tensor | None:
        return torch.from_numpy(np.ascontiguousarray(data[k][order])).to(dt) if k in data else None

    idx, task = get("idx", torch.long), get("task", torch.long)
    assert idx is not None and task is not None
    return Trajectories(idx=idx, task=task, z=get("z", torch.float32), u=get("u", torch.float32))
