"""What the trainer needs from whoever runs it: rank, world, device, this rank's data, a few
collectives, checkpoint storage and a stop signal.

`TrainContext` is that interface. `LocalContext` implements it in one process without Ray (unit
tests, benchmarks, a bare GPU box, `python -m ray_jobs.train --no-ray`); `ups/train/ray_context.py`
implements it on Ray Train. The trainer itself never imports Ray.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ups.contracts import TrainJob
from ups.storage import Storage
from ups.train.shard import Trajectories
from ups.train.state import MANIFEST_FILE, CorruptCheckpoint, OtherStage, load_checkpoint

if TYPE_CHECKING:
    from ups.data.views import Task

# A group's data key for the run's tasks (the fields of every split), given only to a group that
# builds the latent cache itself (TrainJob.latent_build).
TASKS = "tasks"


class Dist:
    """The few collectives the trainer needs; no-ops on a single worker."""

    def __init__(self, device: torch.device) -> None:
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.device = device

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return t
        t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu()

    def min_int(self, n: int) -> int:
        if not self.on:
            return n
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        if not self.on:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        self.any(False)

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


class TrainContext(Protocol):
    rank: int
    world: int
    device: torch.device
    comm: Dist

    def dataset(self, split: str) -> Trajectories:
        """This rank's share of a split (train: a shard; val: every row)."""
        ...

    def provide(self, split: str, rows: Trajectories) -> None:
        """Make `rows` the split's data from now on (a latent cache built inside the group)."""
        ...

    def tasks(self) -> list[Task]:
        """The run's tasks, for a group that builds the latent cache (its data's TASKS entry)."""
        ...

    def prepare(self, module: nn.Module) -> nn.Module:
        """Wrap the trainable module for data parallelism (DDP under Ray; itself locally)."""
        ...

    def checkpoints(self, job: TrainJob) -> Iterator[str]:
        """Local folders of the job's checkpoints, newest first (each valid while iterated)."""
        ...

    def report(self, job: TrainJob, row: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Publish a metrics row and, from rank 0, a checkpoint folder. Every rank calls it."""
        ...

    def stop_requested(self) -> bool:
        """This rank's view of an external stop request (the trainer makes the ranks agree)."""
        ...

    def preemption_notice(self) -> float | None:
        """A node of this worker group is about to be taken away (a spot reclaim, announced by
        draining the node): the Unix time it goes, 0.0 when no deadline was given; None when no
        notice has come. A collective: every rank calls it at the same step and gets one answer."""
        ...

    def wait_out_preemption(self, deadline: float) -> None:
        """After the notice's checkpoint: wait for the worker group to be stopped and restarted
        elsewhere (returning, if that never happens, lets the stage train on)."""
        ...

    def close(self) -> None: ...


def restore_newest(ctx: TrainContext, job: TrainJob, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The newest checkpoint of this stage whose manifest verifies; corrupt ones are reported and
    skipped, other stages' checkpoints (a worker group trains several in turn) passed over."""
    skipped = False
    for folder in ctx.checkpoints(job):
        try:
            return load_checkpoint(folder, stage=job.stage)
        except OtherStage:
            continue
        except CorruptCheckpoint as e:
            skipped = True
            say(f"corrupt checkpoint skipped: {e}; trying the previous one")
    if skipped:
        say("no valid checkpoint left; starting the stage over")
    return None


class LocalContext:
    """One process, no Ray: the data is handed in, checkpoints are folders under the job's
    `checkpoint_uri` named `checkpoint_<UTC time>` (the newest `keep` are kept)."""

    def __init__(self, data: dict[str, Any], device: torch.device | str = "cpu", keep: int = 2) -> None:
        self.rank, self.world = 0, 1
        self.device = torch.device(device)
        self.comm = Dist(self.device)
        self.data: dict[str, Trajectories] = {k: v for k, v in data.items() if k != TASKS}
        self._tasks: list[Task] | None = data.get(TASKS)
        self.keep = keep
        self._tmp: list[str] = []

    def dataset(self, split: str) -> Trajectories:
        return self.data[split]

    def provide(self, split: str, rows: Trajectories) -> None:
        self.data[split] = rows

    def tasks(self) -> list[Task]:
        if self._tasks is None:
            raise RuntimeError("this group was given no tasks to build a latent cache from")
        return self._tasks

    def prepare(self, module: nn.Module) -> nn.Module:
        return module

    def checkpoints(self, job: TrainJob) -> Iterator[str]:
        store = Storage(job.checkpoint_uri)
        if not store.exists():
            return
        for name in sorted((d for d in store.listdir(dirs_only=True) if d.startswith("checkpoint_")), reverse=True):
            with _local_copy(store.sub(name)) as folder:
                yield folder

    def report(self, job: TrainJob, row: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            return
        store = Storage(job.checkpoint_uri)
        name = "checkpoint_" + dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S.%f")
        dest = store.sub(name)
        # The manifest goes last: a folder cut off mid-copy has none and is never loaded.
        files = sorted(os.listdir(checkpoint_dir), key=lambda f: f == MANIFEST_FILE)
        for f in files:
            with open(os.path.join(checkpoint_dir, f), "rb") as fh:
                dest.write_bytes(fh.read(), f)
        old = sorted(d for d in store.listdir(dirs_only=True) if d.startswith("checkpoint_"))
        for stale in old[: max(len(old) - self.keep, 0)]:
            store.delete_dir(stale)

    def stop_requested(self) -> bool:
        return False

    def preemption_notice(self) -> float | None:
        return None  # one process: no node to lose but this one

    def wait_out_preemption(self, deadline: float) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _local_copy(store: Storage) -> Iterator[str]:
    if store.local:
        yield store.path()
        return
    tmp = tempfile.mkdtemp(prefix="ups-ckpt-")
    try:
        for f in store.listdir():
            with open(os.path.join(tmp, f), "wb") as fh:
                fh.write(store.read_bytes(f))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
