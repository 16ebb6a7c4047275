"""The pipeline on Ray: a TorchTrainer worker group per group of stages, Ray Data for the
fields and the latent cache, evaluation as a Ray task, and SIGTERM turned into a stop flag that
the workers poll (ups/train/stop.py)."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ups import config as C
from ups.backend import Preempted, eval_config
from ups.config import Config, GenerateConfig
from ups.contracts import EvalResult, StageResult, TrainJob
from ups.data.views import DataMeta, Task
from ups.events import Emit, ignore
from ups.exports import Exports
from ups.latent_cache import LatentCache, fields_dataset, fields_table, streamed
from ups.rundir import RunDir
from ups.train.context import TASKS
from ups.train.shard import DirectRows

if TYPE_CHECKING:
    from ray.data import Dataset


TRAINED_SPLITS = ("train", "val")  # what a worker group reads: it trains on one and validates on the other


class RayBackend:
    name = "ray"

    def __init__(self, trials: int = 0, say: Callable[[str], None] | None = None) -> None:
        self.trials = trials  # concurrent sweep trials an embedded Ray must hold
        self.reason: str | None = None
        self.mailbox: Any = None
        self._mailbox_name: str | None = None
        self.say: Callable[[str], None] = say or (lambda msg: print(msg, flush=True))
        self.emit: Emit = ignore  # where the workers' events go (the pipeline's console)
        self.one_process = False  # every worker group is one process: it reads its data without Ray Data
        self.remote_encode = True

    def start(self, cfg: Config, rundir: RunDir) -> None:
        from ups import ray_session
        from ups.train.stop import DriverMailbox, mailbox_name

        embedded = ray_session.connect(cfg, trials=self.trials)
        self.remote_encode = not embedded or cfg.scaling.use_gpu
        self.one_process = cfg.scaling.num_workers == 1  # an elastic [min, max] may grow: it splits
        logs = ray_session.logs_dir()
        self.say(f"Ray's logs: {logs}" if logs else "Ray's logs: on the cluster's head (`ray logs`, the dashboard)")
        self._mailbox_name = mailbox_name(f"{rundir.dir.uri}#{uuid.uuid4().hex}")
        # Ray types `@ray.remote(num_cpus=0)` on a class as returning the bare class (no .options).
        self.mailbox = DriverMailbox.options(name=self._mailbox_name).remote()  # type: ignore[attr-defined]
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reason = "SIGTERM"
        print("SIGTERM: asking the running stage to checkpoint and stop", flush=True)
        self.mailbox.set.remote(self.reason)

    def check_stop(self, next_step: str) -> None:
        if self.reason:
            raise Preempted(f"stopped on {self.reason} before {next_step}; run the same command to resume")

    def mailbox_name(self) -> str | None:
        return self._mailbox_name

    def generate(self, gen: GenerateConfig, path: str) -> None:
        from ups.data.generate import generate

        generate(gen, path, use_ray=True)

    def field_data(self, tasks: list[Task]) -> dict[str, Dataset | DirectRows]:
        if self.one_process and not streamed(tasks):  # the group reads the table the driver puts (DirectRows)
            import ray

            table = lambda split: fields_table(tasks, (split,)).drop_columns(["split"])  # noqa: E731
            return {s: DirectRows(table=ray.put(table(s))) for s in TRAINED_SPLITS}
        return {s: fields_dataset(tasks, s) for s in TRAINED_SPLITS}

    def latent_data(self, cache: LatentCache, stream: bool = False) -> dict[str, Dataset | DirectRows]:
        # Lazy in both modes: every worker group reads the cache's files afresh (the worker then
        # holds its shard in memory or spills it, by `stream`). Materializing once would save those
        # reads, but its blocks live in the object stores of the nodes that read them: a spot
        # reclaim of such a node leaves the restarted group to Ray's lineage reconstruction, and in
        # CI that replay failed the run (StreamingGeneratorReplayInconsistentError, Ray 2.60).
        if self.one_process and not stream:  # the group reads the cache's files itself (DirectRows)
            return {s: DirectRows(tuple(cache.files(s)), ("u",) if s == "train" else ()) for s in TRAINED_SPLITS}
        return {s: cache.dataset(s) for s in TRAINED_SPLITS}

    def mixes_inputs(self, stream: bool) -> bool:
        # A group of one process reads every split itself (DirectRows), so it can hold both kinds;
        # Ray Data's split takes only the datasets given at the group's start, named train and val.
        return self.one_process and not stream

    def train(
        self, group: str, jobs: list[TrainJob], data: Any, cfg: Config, callbacks: list[Any]
    ) -> tuple[list[StageResult], str | None]:
        import ray.train
        from ray.data import ExecutionOptions

        # Train V2's own classes (what `ray.train.*` and `ray.train.torch.TorchTrainer` are when V2
        # is on, the default): type checkers resolve those re-exports to the V1 classes.
        from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
        from ray.train.v2.api.result import Result
        from ray.train.v2.torch.torch_trainer import TorchTrainer

        from ups.train.ray_context import train_loop_per_worker

        tasks = data.get(TASKS)  # for a group that builds the latent cache itself (one process)
        direct = {split: rows for split, rows in data.items() if isinstance(rows, DirectRows)}
        datasets = {split: ds for split, ds in data.items() if split not in direct and split != TASKS}
        sc = cfg.scaling
        resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {}), **sc.resources}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"jobs": [j.to_dict() for j in jobs], "direct": direct,
                               "tasks": ray.put(tasks) if tasks is not None else None},  # fmt: skip
            scaling_config=ScalingConfig(
                num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources,
                elastic_resize_monitor_interval_s=sc.elastic_resize_interval_s,
            ),
            run_config=RunConfig(
                name=group, storage_path=jobs[0].checkpoint_uri.rsplit("/", 1)[0],
                failure_config=FailureConfig(
                    max_failures=cfg.checkpoint.max_failures,
                    max_preemption_failures=cfg.checkpoint.max_preemptions,
                ),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                logging_config=LoggingConfig(log_level="WARNING"), callbacks=callbacks,
            ),
            datasets=datasets or None,
            dataset_config=ray.train.DataConfig(
                datasets_to_split=["train"] if "train" in datasets else [],
                execution_options=ExecutionOptions(preserve_order=True),
            ),
        )  # fmt: skip
        from ups.events import MailboxPump

        with MailboxPump(self.mailbox, self.emit):
            result = trainer.fit()
        assert isinstance(result, Result)  # fit() is annotated with the V1 class; V2 returns its own
        results = [StageResult.from_dict(r) for r in (result.return_value or [])]
        return results, result.checkpoint.path if result.checkpoint else None

    def evaluate(
        self, cfg: Config, meta: DataMeta, tasks: list[Task], exports: Exports, split: str,
        max_samples: int | None = None, horizon: int | None = None,
    ) -> EvalResult:  # fmt: skip
        """Decoded evaluation as a Ray task (see `task_options`)."""
        import ray

        cfg = eval_config(cfg, max_samples, horizon)
        task = ray.remote(_evaluate_job).options(**task_options(cfg))
        return ray.get(task.remote(C.to_wire(cfg), meta.to_dict(), exports, tasks, split))


def task_options(cfg: Config) -> dict[str, Any]:
    """Options of a driver-side Ray task (evaluation, gate timing): a GPU one when the run uses
    GPUs, outside any placement group (a Tune trial's would otherwise capture it)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 0} if cfg.scaling.use_gpu else {"num_cpus": 1}
    # Ray documents placement_group=None as "no group" but annotates it as PlacementGroup.
    opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=None)  # type: ignore[arg-type]
    return opts


def _evaluate_job(
    cfg_dict: dict[str, Any], meta_dict: dict[str, Any], exports: Exports, tasks: list[Task], split: str
) -> EvalResult:
    from ups.eval.evaluate import evaluate_split

    return evaluate_split(C.from_dict(cfg_dict), DataMeta.from_dict(meta_dict), tasks, exports, split)
