"""The trainer on Ray Train: `train_loop_per_worker` is what each TorchTrainer worker runs.

This is the only training module that imports Ray. It supplies the trainer's context: rank,
world and device from Ray Train, this rank's Ray Data shard (pulled into memory once per worker
group, shared by every stage the group trains), DDP via `prepare_model`, `ray.train.report`
for metrics and checkpoints, Ray's checkpoint storage, and the driver's actor: the stop flag,
and the mailbox through which rank 0's events (lines, rows, progress) reach the driver's console.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import ray
import ray.train
import ray.train.torch
from torch import nn

from ups.contracts import TrainJob
from ups.events import Emit, ignore, remote_emit
from ups.runtime import quiet_train_logs
from ups.storage import Storage
from ups.train.context import Dist
from ups.train.shard import Trajectories, collect
from ups.train.stop import StopWatcher
from ups.train.trainer import run_stages


class RayContext:
    def __init__(self, stop_flag: str | None) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.comm = Dist(self.device)
        self._data: dict[str, Trajectories] = {}
        self._stop = StopWatcher(stop_flag if self.rank == 0 else None)

    def dataset(self, split: str) -> Trajectories:
        if split not in self._data:  # a shard can be iterated once per worker group
            self._data[split] = collect(ray.train.get_dataset_shard(split))
        return self._data[split]

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

    def close(self) -> None:
        self._stop.close()


def train_loop_per_worker(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Train `payload["jobs"]` (TrainJob dicts) in turn; returns their StageResult dicts."""
    quiet_train_logs()
    jobs = [TrainJob.from_dict(j) for j in payload["jobs"]]
    ctx = RayContext(jobs[0].stop_flag)
    emit: Emit = ignore
    if ctx.rank == 0 and jobs[0].stop_flag:
        with contextlib.suppress(ValueError):  # no driver-side actor: a test driving the loop directly
            emit = remote_emit(ray.get_actor(jobs[0].stop_flag))  # the driver's actor carries the events
    try:
        return [r.to_dict() for r in run_stages(jobs, ctx, emit)]
    finally:
        ctx.close()
