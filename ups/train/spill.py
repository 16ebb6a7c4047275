"""A worker's shard on its local disk instead of in its memory (`data.mode: stream`).

The shard arrives as a stream of batches (a Ray Data shard, or chunks read without Ray) and is
written once, in arrival order, to one raw float32 file per tensor column; trajectory ids and
task ids (a few bytes per trajectory) stay in memory. `DiskArray` then answers the indexing the
stages do on in-memory tensors (`z[traj, t]`, `z[traj[:, None], frames]`, `u[rows]`,
`u[rows, a:b]`, `z[i:j]`) by reading only the frames asked for, with `os.preadv` into the result.

Rows are presented sorted by trajectory id, exactly as `shard.collect` sorts them in memory, so a
stage draws the same batches in the same order, a function of (seed, stage, epoch, rank) alone,
in both modes: a streamed run trains the same weights as an in-memory one, and resumes mid-epoch
bit for bit in the same way. Memory holds a batch; the page cache, not the process, holds the
rest (and gives it back under pressure). The cost is local disk the size of the shard.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ups.train.diskarray import DiskArray
from ups.train.shard import Trajectories


class SpillFolder:
    """A worker-local folder for spilled shards, deleted when the worker lets go of it (or exits).
    A worker killed outright cannot delete its own: the next folder made on that node removes
    the folders of processes that are gone. Names carry the host and the pid,
    `ups-shard-<host>-<pid>-<random>`, and only this host's are ever removed: a `spill_dir` shared
    between nodes (a network disk) holds other nodes' live folders, whose pids mean nothing here."""

    PREFIX = "ups-shard-"

    def __init__(self, parent: str | None = None) -> None:
        if parent:
            os.makedirs(parent, exist_ok=True)
        parent = parent or tempfile.gettempdir()
        _remove_orphans(parent, self.PREFIX)
        self.path = tempfile.mkdtemp(prefix=f"{self.PREFIX}{host_tag()}-{os.getpid()}-", dir=parent)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)
        self._n = 0

    def new_file(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.path, f"{self._n:03d}-{name}.f32")

    def close(self) -> None:
        self._cleanup()


def host_tag() -> str:
    """This host's name as it appears in spill folder names (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def spill_owner(name: str, prefix: str = SpillFolder.PREFIX) -> tuple[str, int] | None:
    """(host, pid) of a spill folder's name, or None for anything else (including the old
    `ups-shard-<pid>-<random>` names, whose host is unknown). The random tail (tempfile's letters,
    digits and '_') holds no '-', so the name splits from the right; a host name may hold '-'."""
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix) :].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _remove_orphans(parent: str, prefix: str) -> None:
    """Remove this host's spill folders whose process is gone (never another host's)."""
    me = host_tag()
    for name in os.listdir(parent):
        owner = spill_owner(name, prefix)
        if owner is None or owner[0] != me:
            continue
        try:
            os.kill(owner[1], 0)
        except (OverflowError, ValueError):
            continue  # not a pid this system can have
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def spill(batches: Iterable[dict[str, np.ndarray]], folder: SpillFolder, name: str) -> Trajectories:
    """Write a stream of column batches (idx, task, and tensor columns z and/or u) to `folder`;
    the trajectories, sorted by id, read from there."""
    ids: list[np.ndarray] = []
    tasks: list[np.ndarray] = []
    files: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    with contextlib.ExitStack() as open_files:
        for batch in batches:
            ids.append(np.asarray(batch["idx"], np.int64))
            tasks.append(np.asarray(batch["task"], np.int64))
            for col in ("z", "u"):
                if col not in batch:
                    continue
                v = np.ascontiguousarray(batch[col], dtype=np.float32)
                if col not in files:
                    files[col] = open_files.enter_context(open(folder.new_file(f"{name}-{col}"), "wb"))
                    shapes[col] = tuple(v.shape[1:])
                elif tuple(v.shape[1:]) != shapes[col]:
                    raise ValueError(f"spilled column {col}: rows of shape {v.shape[1:]} after {shapes[col]}")
                files[col].write(v.data.cast("B"))
    idx = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    task = np.concatenate(tasks) if tasks else np.zeros(0, np.int64)
    order = np.argsort(idx, kind="stable")
    arrays = {col: DiskArray(fh.name, shapes[col], order, owner=folder) for col, fh in files.items()}
    return Trajectories(
        idx=torch.from_numpy(idx[order]), task=torch.from_numpy(task[order]), z=arrays.get("z"), u=arrays.get("u")
    )


def spill_iterator(iterator: Any, folder: SpillFolder, name: str, batch_rows: int = 32) -> Trajectories:
    """`spill` of a Ray Data iterator (anything with `iter_batches` of numpy columns)."""
    return spill(iterator.iter_batches(batch_size=batch_rows, batch_format="numpy"), folder, name)
