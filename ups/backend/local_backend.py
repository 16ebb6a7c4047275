"""The pipeline in this process, without Ray: the same trainer, files and evaluation.

For a bare GPU box, a notebook, unit tests and benchmarks (`python -m ray_jobs.train --no-ray`).
One process is one worker: world size 1, so `scaling.num_workers` is taken as 1 (the global
batch is unchanged). Checkpoints are folders under `ray/<group>/` like Ray's, a SIGTERM makes
the running stage checkpoint where it is and stop, and the same command resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from ups.backend import Preempted, eval_config
from ups.config import Config, GenerateConfig
from ups.contracts import EvalResult, StageResult, TrainJob
from ups.data.views import DataMeta, Task
from ups.events import Emit, ignore
from ups.exports import Exports
from ups.latent_cache import LatentCache, fields_trajectories, streamed
from ups.rundir import RunDir
from ups.train.context import LocalContext
from ups.train.shard import Trajectories
from ups.train.spill import SpillFolder
from ups.train.trainer import run_stages


class _StoppableContext(LocalContext):
    def __init__(self, backend: LocalBackend, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend

    def stop_requested(self) -> bool:
        return self.backend.reason is not None


class LocalBackend:
    name = "local"
    remote_encode = False

    def __init__(self, device: str | None = None, say: Callable[[str], None] | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.reason: str | None = None
        self.say: Callable[[str], None] = say or (lambda msg: print(msg, flush=True))
        self.emit: Emit = ignore  # where the trainer's events go (the pipeline's console)
        self.spill_dir: str | None = None

    def start(self, cfg: Config, rundir: RunDir) -> None:
        self.spill_dir = cfg.data.spill_dir
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reason = "SIGTERM"
        print("SIGTERM: asking the running stage to checkpoint and stop", flush=True)

    def generate(self, gen: GenerateConfig, path: str) -> None:
        from ups.data.generate import generate

        generate(gen, path, use_ray=False)

    def field_data(self, tasks: list[Task]) -> dict[str, Trajectories]:
        folder = SpillFolder(self.spill_dir) if streamed(tasks) else None
        return {s: fields_trajectories(tasks, s, folder) for s in ("train", "val")}

    def latent_data(self, cache: LatentCache, stream: bool = False) -> dict[str, Trajectories]:
        folder = SpillFolder(self.spill_dir) if stream else None
        return {s: cache.trajectories(s, folder) for s in ("train", "val")}

    def mixes_inputs(self, stream: bool) -> bool:
        # The data is in this process; streamed, the latent splits spill to disk, which the
        # group's own cache build (ups.train.trainer.build_latents) does not do.
        return not stream

    def train(
        self, group: str, jobs: list[TrainJob], data: Any, cfg: Config, callbacks: list[Any]
    ) -> tuple[list[StageResult], str | None]:
        ctx = _StoppableContext(self, data, device=self.device, keep=cfg.checkpoint.keep)
        results = run_stages(jobs, ctx, self.emit)
        newest = next(iter(sorted(_checkpoint_dirs(jobs[0].checkpoint_uri), reverse=True)), None)
        return results, newest

    def evaluate(
        self, cfg: Config, meta: DataMeta, tasks: list[Task], exports: Exports, split: str,
        max_samples: int | None = None, horizon: int | None = None,
    ) -> EvalResult:  # fmt: skip
        from ups.eval.evaluate import evaluate_split

        return evaluate_split(eval_config(cfg, max_samples, horizon), meta, tasks, exports, split, self.device)

    def check_stop(self, next_step: str) -> None:
        if self.reason:
            raise Preempted(f"stopped on {self.reason} before {next_step}; run the same command to resume")

    def mailbox_name(self) -> str | None:
        return None


def _checkpoint_dirs(uri: str) -> list[str]:
    from ups.storage import Storage

    store = Storage(uri)
    return [store.uri_of(d) for d in store.listdir(dirs_only=True) if d.startswith("checkpoint_")]
