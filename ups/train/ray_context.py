"""The trainer on Ray Train: `train_loop_per_worker` is what each TorchTrainer worker runs.

This is the only training module that imports Ray. It supplies the trainer's context: rank,
world and device from Ray Train, this rank's Ray Data shard (pulled into memory once per worker
group, shared by every stage the group trains), DDP via `prepare_model`, `ray.train.report`
for metrics and checkpoints, Ray's checkpoint storage, and the driver's actor: the stop flag,
and the mailbox through which rank 0's events (lines, rows, progress) reach the driver's console.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from ups.contracts import TrainJob
from ups.data.views import Task
from ups.events import Emit, ignore, remote_emit
from ups.ray_session import quiet_train_logs
from ups.storage import Storage
from ups.train.context import Dist
from ups.train.shard import DirectRows, Trajectories, collect, from_table
from ups.train.spill import SpillFolder, spill_iterator
from ups.train.stop import StopWatcher
from ups.train.trainer import run_stages

_WATCHER_ON = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1").lower() not in ("0", "false")
PREEMPTION_PATIENCE_S = 60.0  # past a notice's deadline, how long to wait for the restart


class RayContext:
    def __init__(
        self, mailbox: str | None, spill: SpillFolder | None = None, direct: dict[str, DirectRows] | None = None,
        tasks: Any = None,
    ) -> None:  # fmt: skip
        """`direct`: the splits this group reads without Ray Data (a group of one process);
        `tasks`: the run's tasks in the object store, for a group that builds the latent cache."""
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.comm = Dist(self.device)
        self._data: dict[str, Trajectories] = {}
        self._stop = StopWatcher(mailbox if self.rank == 0 else None)
        self._spill = spill
        self._direct = direct or {}
        self._tasks = tasks

    def dataset(self, split: str) -> Trajectories:
        if split not in self._data and split in self._direct:
            rows = self._direct[split]
            self._data[split] = from_table(ray.get(rows.table) if rows.table is not None else rows.read_files())
        if split not in self._data:  # a shard can be iterated once per worker group
            shard = ray.train.get_dataset_shard(split)
            self._data[split] = spill_iterator(shard, self._spill, split) if self._spill else collect(shard)
        return self._data[split]

    def provide(self, split: str, rows: Trajectories) -> None:
        self._data[split] = rows

    def tasks(self) -> list[Task]:
        if self._tasks is None:
            raise RuntimeError("this group was given no tasks to build a latent cache from")
        return ray.get(self._tasks)

    def prepare(self, module: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(module)

    def checkpoints(self, job: TrainJob) -> Iterator[str]:
        latest = ray.train.get_checkpoint()
        if latest is None:
            return
        runs = Storage(job.checkpoint_uri)
        others = [
            ray.train.Checkpoint(runs.path(d), filesystem=runs.fs)
            for d in reversed(runs.listdir(dirs_only=True))
            if d.startswith("checkpoint_")
        ]
        for ck in [latest] + [c for c in others if c.path.rstrip("/") != latest.path.rstrip("/")]:
            with ck.as_directory() as d:
                yield d

    def report(self, job: TrainJob, row: dict[str, Any], checkpoint_dir: str | None) -> None:
        ck = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(row, checkpoint=ck)

    def stop_requested(self) -> bool:
        return self._stop.requested()

    def preemption_notice(self) -> float | None:
        # Ray Train's PreemptionWatcher (one actor per worker group, on by default on a cluster)
        # watches Ray Core's node drains; without it there is nothing to ask, and asking is a barrier.
        if not _WATCHER_ON:
            return None
        info = ray.train.get_preemption_info()
        if info is None:
            return None
        return info.deadline_ms / 1000 if info.deadline_ms else 0.0

    def wait_out_preemption(self, deadline: float) -> None:
        # At the deadline Ray Train's controller stops this worker group (whatever the loop is doing)
        # and restarts it from the newest checkpoint, charged to the preemption budget: a step taken
        # after the notice's checkpoint would be thrown away, so none is. Without a deadline the
        # controller waits DEFAULT_PREEMPTION_DEADLINE_S (120 s). If the group is still alive well
        # after that (the drain was cancelled), the stage trains on.
        until = (deadline or time.time() + 120) + PREEMPTION_PATIENCE_S
        while time.time() < until:
            time.sleep(0.5)

    def close(self) -> None:
        self._stop.close()
        if self._spill is not None:
            self._spill.close()


def use_threads(cpus_per_worker: float) -> None:
    """Torch's intra-op threads = the CPUs this worker was given (at least one), as the `--no-ray`
    trainer uses the cores it has. Said explicitly rather than left to how Ray sets OMP_NUM_THREADS
    for an actor: a worker with more threads than CPUs spins against Ray's own processes on a small
    machine, one with fewer leaves its CPUs idle. Each metrics row records what was used."""
    torch.set_num_threads(max(1, int(cpus_per_worker)))


def train_loop_per_worker(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Train `payload["jobs"]` (TrainJob dicts) in turn; returns their StageResult dicts."""
    quiet_train_logs()
    jobs = [TrainJob.from_dict(j) for j in payload["jobs"]]
    use_threads(jobs[0].cfg.get("scaling", {}).get("cpus_per_worker", 1.0))
    spill_dir = jobs[0].cfg.get("data", {}).get("spill_dir")
    spill = SpillFolder(spill_dir) if jobs[0].spill else None
    ctx = RayContext(jobs[0].mailbox, spill, payload.get("direct"), payload.get("tasks"))
    emit: Emit = ignore
    if ctx.rank == 0 and jobs[0].mailbox:
        with contextlib.suppress(ValueError):  # no driver-side actor: a test driving the loop directly
            emit = remote_emit(ray.get_actor(jobs[0].mailbox))  # the driver's actor carries the events
    try:
        return [r.to_dict() for r in run_stages(jobs, ctx, emit)]
    finally:
        ctx.close()
