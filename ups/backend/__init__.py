"""Where the pipeline's work runs: on Ray (`RayBackend`: TorchTrainer worker groups, Ray Data,
evaluation as Ray tasks) or in this process (`LocalBackend`: the same trainer and files, no Ray).

The pipeline (ups/pipeline.py) talks to a backend through the few methods of `Backend` and
never imports Ray itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from ups.config import Config, GenerateConfig
from ups.contracts import EvalResult, StageResult, TrainJob
from ups.data.views import DataMeta, Task
from ups.events import Emit
from ups.exports import Exports
from ups.latent_cache import LatentCache
from ups.rundir import RunDir


class Preempted(RuntimeError):
    """A stop was requested (SIGTERM); the interrupted stage checkpointed where it was."""


class Backend(Protocol):
    name: str
    emit: Emit  # where the training processes' events go; the pipeline points it at its console
    # The driver's latent cache is encoded by the backend's workers (a cluster's, a GPU), not in the
    # driver: on one machine without a GPU the driver encodes as fast, without an actor to start.
    remote_encode: bool

    def start(self, cfg: Config, rundir: RunDir) -> None:
        """Connect (Ray) and install the SIGTERM handler."""
        ...

    def generate(self, gen: GenerateConfig, path: str) -> None: ...

    def field_data(self, tasks: list[Task]) -> Any:
        """The autoencoder's train/val data, in this backend's form."""
        ...

    def latent_data(self, cache: LatentCache, stream: bool = False) -> Any:
        """The latent stages' train/val data from the cache, read once per pipeline run (`stream`:
        never held whole, by the driver, the object store or a worker)."""
        ...

    def mixes_inputs(self, stream: bool) -> bool:
        """Whether one worker group may train every stage, of both inputs, encoding the latent
        cache itself after the autoencoder (a group of one process that holds its data in memory):
        on Ray that pays one worker-group start for the whole pipeline instead of one per input."""
        ...

    def train(
        self, group: str, jobs: list[TrainJob], data: Any, cfg: Config, callbacks: list[Any]
    ) -> tuple[list[StageResult], str | None]:
        """Train a group of stages in one worker group; returns their results and the newest checkpoint."""
        ...

    def evaluate(
        self, cfg: Config, meta: DataMeta, tasks: list[Task], exports: Exports, split: str,
        max_samples: int | None = None, horizon: int | None = None,
    ) -> EvalResult: ...  # fmt: skip

    def check_stop(self, next_step: str) -> None:
        """Raise Preempted if a stop was requested before `next_step`."""
        ...

    def mailbox_name(self) -> str | None: ...


def eval_config(cfg: Config, max_samples: int | None, horizon: int | None) -> Config:
    """The config an evaluation runs under (a gate's small evaluation narrows samples and horizon)."""
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "max_samples": max_samples or cfg.eval.max_samples, "horizon": horizon or cfg.eval.horizon})})  # fmt: skip
