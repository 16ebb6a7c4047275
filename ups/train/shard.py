"""A worker's share of trajectories, pulled once from its Ray Data shard into memory.

Each stage iterates its shard exactly once, on every rank at the same time (Ray Data's split
coordinator needs all consumers), and keeps the rows as tensors sorted by trajectory id. Every
later epoch then draws batches from memory in an order that is a function of (seed, epoch,
rank) alone, which is what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Trajectories:
    idx: torch.Tensor  # (n,) global trajectory ids
    task: torch.Tensor  # (n,) task ids
    z: torch.Tensor | None = None  # (n, T, tokens, dim) latents
    u: torch.Tensor | None = None  # (n, T, X[, Y], C) normalised fields

    def __len__(self) -> int:
        return len(self.idx)

    def to(self, device: torch.device) -> Trajectories:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Trajectories(move(self.idx), move(self.task), move(self.z), move(self.u))


def collect(iterator, batch_rows: int = 256) -> Trajectories:
    """Drain a Ray Data iterator (or any iterable of numpy column batches) into tensors."""
    cols: dict[str, list[np.ndarray]] = {}
    for batch in iterator.iter_batches(batch_size=batch_rows, batch_format="numpy"):
        for k, v in batch.items():
            cols.setdefault(k, []).append(np.asarray(v))
    if not cols:
        return Trajectories(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    data = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(data["idx"], kind="stable")
    get = lambda k, dt: torch.from_numpy(np.ascontiguousarray(data[k][order])).to(dt) if k in data else None  # noqa: E731
    return Trajectories(
        idx=get("idx", torch.long), task=get("task", torch.long), z=get("z", torch.float32), u=get("u", torch.float32)
    )
