"""`DiskArray`: float32 rows in a local file that index like the in-memory tensor they stand for.

A spilled shard (ups/train/spill.py) holds its tensor columns as DiskArrays, and `Trajectories`
(ups/train/shard.py) holds either; this module imports neither, so both can name the type.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import numpy as np
import torch

_INDEX = (torch.Tensor, np.ndarray, int, np.integer)


class DiskArray:
    """float32 rows `(n, T, *frame)` in a local file, presented in the order `order` gives
    (logical row i is stored at row order[i]); indexing returns tensors, as the in-memory tensor
    would, for the index forms the stages use."""

    def __init__(self, path: str, row_shape: tuple[int, ...], order: np.ndarray, owner: Any = None) -> None:
        self.path, self.row_shape, self.order = path, tuple(row_shape), np.asarray(order, np.int64)
        self.owner = owner  # what must outlive the file (its SpillFolder)
        self.frame_bytes = int(np.prod(row_shape[1:])) * 4
        self.row_bytes = self.frame_bytes * row_shape[0]
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.order), *self.row_shape))

    def __len__(self) -> int:
        return len(self.order)

    def _read(self, rows: np.ndarray, t0: int, frames: int) -> np.ndarray:
        """Frames [t0, t0 + frames) of each logical row: (len(rows), frames, *frame)."""
        out = np.empty((len(rows), frames, *self.row_shape[1:]), np.float32)
        size = frames * self.frame_bytes
        for i, r in enumerate(self.order[rows]):
            got = os.preadv(self.fd, [memoryview(out[i]).cast("B")], int(r) * self.row_bytes + t0 * self.frame_bytes)
            if got != size:
                raise OSError(f"{self.path}: short read ({got} of {size} bytes) at row {r}")
        return out

    def __getitem__(self, key: Any) -> torch.Tensor:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n, frames = len(self), self.row_shape[0]
        if rest and isinstance(rest[0], _INDEX) and not isinstance(first, slice):
            # Advanced (row, frame) pairs, broadcast against each other: one frame per pair.
            rows, ts = np.broadcast_arrays(_ints(first, n), _ints(rest[0], frames))
            flat_r, flat_t = rows.ravel(), ts.ravel()
            out = np.empty((len(flat_r), *self.row_shape[1:]), np.float32)
            for i in range(len(flat_r)):
                out[i] = self._read(flat_r[i : i + 1], int(flat_t[i]), 1)[0, 0]
            picked = torch.from_numpy(out.reshape(*rows.shape, *self.row_shape[1:]))
            return picked[(slice(None),) * rows.ndim + rest[1:]] if len(rest) > 1 else picked
        ids = np.arange(n)[first] if isinstance(first, slice) else _ints(first, n)
        span = range(frames)[rest[0]] if rest and isinstance(rest[0], slice) else range(frames)
        if span.step == 1:  # contiguous frames: one read per row
            out = self._read(np.atleast_1d(ids).ravel(), span.start, len(span))
            later = rest[1:] if rest and isinstance(rest[0], slice) else rest
        else:
            out = self._read(np.atleast_1d(ids).ravel(), 0, frames)
            later = rest
        picked = torch.from_numpy(out.reshape(*np.shape(ids), *out.shape[1:]))
        return picked[(slice(None),) * np.ndim(ids) + later] if later else picked


def _ints(index: Any, size: int) -> np.ndarray:
    """An integer index as non-negative positions, bounds-checked like tensor indexing."""
    a = index.cpu().numpy().astype(np.int64) if isinstance(index, torch.Tensor) else np.asarray(index, np.int64)
    if a.size and (a.max() >= size or a.min() < -size):
        raise IndexError(f"index {int(a.max() if a.max() >= size else a.min())} is out of bounds for size {size}")
    return a % size if size else a
