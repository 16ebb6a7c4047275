"""The one stage trainer: every stage, under Ray Train or in a plain process.

    trainer = StageTrainer(job, ctx)     # ctx: ups.train.context.LocalContext, or the Ray one
    result = trainer.fit()               # build -> ingest -> restore -> prepare -> epochs -> export

Phases, in order, on every (re)start: seed and build the stage, take this rank's data, restore
the newest valid checkpoint of the stage, wrap for data parallelism, then run epochs from the
exact micro-batch where the checkpoint left off; each epoch ends with validation, a metrics
row and a checkpoint; the best-epoch EMA weights are exported at the end.

Data order is a function of (seed, stage name, epoch, rank) and noise of (seed, stage name,
epoch, micro-batch, rank), so replaying from a checkpoint reproduces an uninterrupted run bit
for bit. Guaranteed: same world size, same hardware and thread count, CPU or deterministic GPU
kernels. Not guaranteed: a different world size (an elastic resize restarts the interrupted
epoch on the new shards), or non-deterministic GPU kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ups import config as C
from ups.contracts import BestMetric, StageResult, TrainJob
from ups.data.views import DataMeta
from ups.events import Emit, EpochRow, Say, StageDone, StepProgress, ignore
from ups.exports import read_export, write_export
from ups.latent_cache import build_or_reuse
from ups.stages import registry
from ups.stages.base import Stage
from ups.storage import Storage
from ups.tracking import MetricsLog
from ups.train.context import TrainContext, restore_newest
from ups.train.optim import LRSchedule, build_optimizer, ema_model
from ups.train.shard import Trajectories
from ups.train.state import rng_state, save_checkpoint, set_rng_state

# Ranks agree on a stop request every this many optimizer steps: one tiny all-reduce, and on a
# GPU one host sync, per check. Every step would put that sync on the hot path.
STOP_CHECK_STEPS = 8
PROGRESS_S = 2.0  # rank 0 tells the driver where it is inside an epoch this often (display only)
RESULT_FILE = "result.json"


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of its parts (no state to checkpoint)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def stage_seed(seed: int, stage: str) -> int:
    """A stage's seed: a function of its name, so adding a stage never changes another's."""
    return derive_seed(seed, "stage", stage)


@dataclass
class Progress:
    """Where a stage is: everything but the tensors that a checkpoint must bring back."""

    epoch: int = 0  # epochs finished
    micro: int = 0  # micro-batches done in the current epoch
    global_step: int = 0
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    loss_sum: float = 0.0  # the interrupted epoch's loss so far (sum over samples)
    loss_count: int = 0
    aux_sums: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    world_sizes: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of the finished epochs (with validation), for stages.*.time_budget_s
    out_of_time: bool = False  # stopped because the next epoch would overrun the stage's time budget

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Phases:
    """Wall time of each named phase of a stage on this worker (returned to the driver)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(self.times.get(name, 0.0) + now - self._last, 3)
        self._last = now


class StageTrainer:
    def __init__(self, job: TrainJob, ctx: TrainContext, emit: Emit = ignore) -> None:
        self.job, self.ctx = job, ctx
        self.name = job.stage
        self.cfg = C.from_dict(job.cfg)
        self.tcfg, self.scfg = self.cfg.training, C.stage_config(self.cfg, self.name)
        # The driver's budget (a baseline given the surrogate's time) wins over the stage's own.
        self.time_budget_s = job.time_budget_s if job.time_budget_s is not None else self.scfg.time_budget_s
        self.seed = stage_seed(self.tcfg.seed, self.name)
        self.rank, self.world, self.device = ctx.rank, ctx.world, ctx.device
        self.emit = emit if ctx.rank == 0 else ignore  # what the user sees comes from rank 0, via the driver
        self.phases = Phases()
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stop_requested = False  # a stop was requested (SIGTERM): checkpointed and returning
        self.preemption_answered = False  # a node preemption notice was answered with a checkpoint
        self.first_step: float | None = None
        self.trained_with: dict[str, Any] = {}  # what prepare() settled on (StageResult.trained_with)

    # -- the whole stage ------------------------------------------------------------------------

    def fit(self) -> StageResult:
        self.build()
        if not any(q.requires_grad for q in self.module.parameters()):
            return self.fit_fixed()
        self.ingest()
        self.restore()
        self.prepare()
        while not self.progress.finished:
            if not self.train_epoch():
                break  # a stop was requested: checkpointed mid-epoch
            self.end_epoch()
        self.phases.done("epochs")
        return self.finish()

    def fit_fixed(self) -> StageResult:
        """A stage with nothing to train (a fixed codec): validated once and exported as it is, so
        its val metric is in the run's record like any stage's, and later stages read its export."""
        self.train_data: Trajectories = self.ctx.dataset(self.job.data_prefix + "train")
        self.val_data: Trajectories = self.ctx.dataset(self.job.data_prefix + "val")
        self.stage.setup(self.train_data, self.val_data, self.ctx.comm.sum)
        self.val_rows = torch.arange(self.rank, len(self.val_data), self.world)
        self.eval_module = self.module
        self.phases.done("ingest")
        metric = self.validate()[self.stage.val_metric]
        p = self.progress
        p.best, p.best_epoch, p.finished = metric, 0, True
        self._say(f"nothing to train: {self.stage.val_metric} {metric:.4g} as built")
        return self.finish()

    # -- phases ---------------------------------------------------------------------------------

    def build(self) -> None:
        """Seed, build the stage and its trainable module, the optimizer, schedule, scaler, EMA."""
        if self.tcfg.deterministic and self.device.type == "cuda":
            # CPU kernels used here are deterministic already; the switch imports torch._inductor (~2 s).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(self.seed)  # identical initial weights on every rank
        meta = DataMeta.from_dict(self.job.meta)
        handoff = {s: read_export(uri, self.job.handoff_sha256.get(s)) for s, uri in self.job.handoff.items()}
        self.stage: Stage[Any, Any] = registry.get(self.name)(self.cfg, meta, handoff, self.device)
        self.module: nn.Module = self.stage.build().to(self.device)
        self.scfg = self.stage.stage_cfg  # resolved on this data (e.g. the FNO baseline's protocol)
        self.phases.done("build")

    def ingest(self) -> None:
        """This rank's data, then the stage's once-per-start setup (e.g. frozen-operator residuals)."""
        self.train_data = self.ctx.dataset(self.job.data_prefix + "train")
        self.val_data = self.ctx.dataset(self.job.data_prefix + "val")
        self.phases.done("ingest")
        self.stage.setup(self.train_data, self.val_data, self.ctx.comm.sum)
        self.phases.done("stage_setup")
        self.val_rows = torch.arange(self.rank, len(self.val_data), self.world)

        tcfg, comm = self.tcfg, self.ctx.comm
        batch = self.scfg.batch_size or tcfg.batch_size
        self.micro_batch = batch // (self.world * tcfg.accum_steps)
        n = self.stage.num_samples(self.train_data)
        self.steps_per_epoch = comm.min_int(n // self.micro_batch) // tcfg.accum_steps
        if self.steps_per_epoch == 0:
            key = f"stages.{self.name}.batch_size" if self.scfg.batch_size else "training.batch_size"
            raise ValueError(
                f"{key}={batch} is larger than stage {self.name}'s data on one worker "
                f"({n} samples at world size {self.world})"
            )
        self.micro_per_epoch = self.steps_per_epoch * tcfg.accum_steps
        self.optimizer = build_optimizer(self.module, self.scfg.optimizer)
        self.schedule = LRSchedule(self.optimizer, self.scfg.scheduler, self.scfg.epochs, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tcfg.amp == "fp16")
        # A stage's own EMA decay and clip (0 = off) win over training.*'s.
        ema_decay = tcfg.ema_decay if self.scfg.ema_decay is None else self.scfg.ema_decay
        self.grad_clip = tcfg.grad_clip if self.scfg.grad_clip is None else self.scfg.grad_clip
        self.ema = ema_model(self.module, ema_decay) if ema_decay else None
        self.trained_with = {
            "batch_size": batch, "steps_per_epoch": self.steps_per_epoch, "world_size": self.world,
            "optimizer": self.scfg.optimizer.model_dump(mode="json"),
            "scheduler": self.scfg.scheduler.model_dump(mode="json"), "ema_decay": ema_decay or 0.0,
            "grad_clip": self.grad_clip or 0.0, "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        if self.time_budget_s is not None:
            self.trained_with["time_budget_s"] = round(self.time_budget_s, 2)
        self.phases.done("optimizer")  # includes waiting for the slowest rank at the first collective

    def restore(self) -> None:
        """Continue from the newest valid checkpoint of this stage, if there is one."""
        state = restore_newest(self.ctx, self.job, self._say)
        if state is not None:
            if state["config_digest"] != self.job.config_digest and not self.job.accept_config_change:
                raise RuntimeError(f"stage {self.name}: checkpoint was written under another config digest")
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.stage.load_state_dict(state["stage"])
            self.progress = Progress.from_dict(state["progress"])
            self.history, self.best_weights = state["history"], state["best_weights"]
            self.progress.restarts += 1
            if state["world_size"] == self.world:
                set_rng_state(state["rng"][self.rank])
            elif self.progress.micro:
                self._redo_epoch()  # new shards after a resize: the interrupted epoch again, on them
            self._say(
                f"resumed at epoch {self.progress.epoch + 1}, micro-batch {self.progress.micro} "
                f"(world size {state['world_size']} -> {self.world})"
            )
        self.progress.world_sizes = self.progress.world_sizes + [self.world]  # one entry per (re)start
        self.phases.done("restore")

    def _redo_epoch(self) -> None:
        """Forget the interrupted epoch's count (not its updates: the weights keep them): its
        steps leave the global step and the LR schedule, which would otherwise run ahead by them,
        and its losses leave the epoch's mean."""
        p = self.progress
        steps = p.micro // self.tcfg.accum_steps
        p.global_step -= steps
        self.schedule.load_state_dict({**self.schedule.state_dict(), "step": self.schedule.step_count - steps})
        p.micro, p.loss_sum, p.loss_count, p.aux_sums = 0, 0.0, 0, {}

    def prepare(self) -> None:
        """Data-parallel wrapping, compilation, and rank 0's metrics.jsonl."""
        self.ddp = self.ctx.prepare(self.module)
        self.model = torch.compile(self.ddp, mode=self.tcfg.compile_mode) if self.tcfg.compile else self.ddp
        self.eval_module = self.ema.module if self.ema is not None else self.module
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.tcfg.amp)
        self.log = MetricsLog(Storage(self.job.run_uri), self.name) if self.rank == 0 else None
        self.phases.done("prepare")

    def train_epoch(self) -> bool:
        """Micro-batches from the current position to the end of the epoch; False if stopped."""
        p, tcfg = self.progress, self.tcfg
        epoch = p.epoch
        order = torch.randperm(
            self.stage.num_samples(self.train_data),
            generator=torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch, self.rank)),
        )
        self._loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        self._aux_acc: dict[str, torch.Tensor] = {}
        self._count_acc = 0
        self._t_start = self._t_progress = time.perf_counter()
        self.module.train()
        self._micro_start = p.micro
        for m in range(p.micro, self.micro_per_epoch):
            ids = order[m * self.micro_batch : (m + 1) * self.micro_batch]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "step", epoch, m, self.rank))
            stepping = (m + 1) % tcfg.accum_steps == 0
            self.micro_step(self.stage.batch(self.train_data, ids, gen), len(ids), sync=stepping)
            if not stepping:
                continue
            self.optimizer_step()
            p.micro = m + 1
            if self.rank == 0 and time.perf_counter() - self._t_progress >= PROGRESS_S:
                self._tell_progress(m + 1 - self._micro_start)
            self.first_step = self.first_step or time.time()
            every = self.cfg.checkpoint.every_steps
            notice = None
            if p.global_step % STOP_CHECK_STEPS == 0:
                self.stop_requested = self.ctx.comm.any(self.ctx.stop_requested())
                if not self.stop_requested and not self.preemption_answered:
                    notice = self.ctx.preemption_notice()
            periodic = every and p.global_step % every == 0 and m + 1 < self.micro_per_epoch
            if self.stop_requested or notice is not None or periodic:
                self._carry_epoch_sums()
                self.checkpoint(
                    {
                        "stage": self.name,
                        "epoch": epoch + 1,
                        "global_step": p.global_step,
                        "mid_epoch": True,
                        "preempted": self.stop_requested,  # the row's key as older runs wrote it
                        "preemption_notice": notice is not None,
                    }
                )
            if self.stop_requested:
                return False
            if notice is not None:
                self.preemption_answered = True
                left = f", {max(notice - time.time(), 0):.0f} s before the node goes" if notice else ""
                self._say(
                    f"preemption notice{left}: checkpointed at epoch {epoch + 1}, micro-batch {p.micro}; "
                    "waiting for the restart on another node"
                )
                self.ctx.wait_out_preemption(notice)
        self._train_time = time.perf_counter() - self._t_start
        return True

    def _tell_progress(self, micro_done: int) -> None:
        """Rank 0's position in the epoch, for the driver's progress bar (no effect on training)."""
        now = time.perf_counter()
        self._t_progress = now
        elapsed = max(now - self._t_start, 1e-9)
        p = self.progress
        loss = (self._loss_acc.item() + p.loss_sum) / max(self._count_acc + p.loss_count, 1)
        rate = micro_done * self.micro_batch * self.world / elapsed  # global samples/s since this (re)start
        left = (self.micro_per_epoch - p.micro) * elapsed / max(micro_done, 1)
        self.emit(StepProgress(self.name, p.epoch + 1, self.scfg.epochs, p.micro // self.tcfg.accum_steps,
                               self.steps_per_epoch, loss, rate, left))  # fmt: skip

    def micro_step(self, batch: dict[str, torch.Tensor], n: int, sync: bool) -> None:
        """Forward and backward of one micro-batch (gradients all-reduced only when `sync`)."""
        no_sync = getattr(self.ddp, "no_sync", None)
        ctx = contextlib.nullcontext() if sync or no_sync is None else no_sync()
        with ctx:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss, aux = self.model(batch)
            self.scaler.scale(loss.float() / self.tcfg.accum_steps).backward()
        self._loss_acc += loss.detach().double() * n
        for k, v in aux.items():
            self._aux_acc[k] = self._aux_acc.get(k, 0) + v.detach().double() * n
        self._count_acc += n

    def optimizer_step(self) -> None:
        """Unscale, clip, step, EMA, the stage's hook, the LR schedule."""
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        self.stage.after_step(self.module)
        self.schedule.step()
        self.progress.global_step += 1

    def _carry_epoch_sums(self) -> None:
        """Move the epoch's running sums into the progress record, which travels with the state."""
        p = self.progress
        p.loss_sum += self._loss_acc.item()
        p.loss_count += self._count_acc
        for k, v in self._aux_acc.items():
            p.aux_sums[k] = p.aux_sums.get(k, 0.0) + float(v)
        self._loss_acc.zero_()
        self._aux_acc = {}
        self._count_acc = 0

    def end_epoch(self) -> None:
        """Validation, best weights, schedule, early stopping, the metrics row and a checkpoint."""
        p, comm = self.progress, self.ctx.comm
        epoch = p.epoch
        self._carry_epoch_sums()
        aux_keys = sorted(p.aux_sums)
        totals = comm.sum(
            torch.tensor([p.loss_sum, p.loss_count, *(p.aux_sums[k] for k in aux_keys)], dtype=torch.float64)
        )
        train_loss = (totals[0] / totals[1]).item()
        if not math.isfinite(train_loss) and not self.scaler.is_enabled():
            raise FloatingPointError(f"stage {self.name}: training loss is {train_loss} in epoch {epoch + 1}")
        aux = {f"train_{k}": (totals[2 + i] / totals[1]).item() for i, k in enumerate(aux_keys)}

        val_metrics = self.validate()
        metric = val_metrics[self.stage.val_metric]
        if metric < p.best:
            p.best, p.best_epoch, p.bad_epochs = metric, epoch + 1, 0
            self.best_weights = {k: v.detach().clone().cpu() for k, v in self.eval_module.state_dict().items()}
        else:
            p.bad_epochs += 1
        self.schedule.epoch_end(metric)
        p.epoch, p.micro, p.loss_sum, p.loss_count, p.aux_sums = epoch + 1, 0, 0.0, 0, {}
        early_stop = self.scfg.patience is not None and p.bad_epochs >= self.scfg.patience
        epoch_s = time.perf_counter() - self._t_start
        p.elapsed_s += epoch_s
        budget = self.time_budget_s
        # Stop before an epoch that would overrun the budget, judged by the one just done; every
        # rank stops together (any rank out of time stops all).
        p.out_of_time = budget is not None and self.ctx.comm.any(p.elapsed_s + epoch_s > budget)
        p.finished = early_stop or p.out_of_time or epoch + 1 >= self.scfg.epochs
        p.stopped_early = (early_stop or p.out_of_time) and epoch + 1 < self.scfg.epochs
        row = {
            "stage": self.name, "epoch": epoch + 1, "world_size": self.world, "train_loss": train_loss, **aux,
            **val_metrics, "lr": self.schedule.lr, "epoch_time_s": round(time.perf_counter() - self._t_start, 4),
            "samples_per_s": round(totals[1].item() / max(self._train_time, 1e-9), 2),
            "global_step": p.global_step, "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        self.history.append(row)
        if self.rank == 0:
            assert self.log is not None
            self.log.write(self.history)
            self.emit(EpochRow(self.name, row, self.stage.val_metric, self.scfg.epochs))
            if p.out_of_time and p.stopped_early:
                self._say(
                    f"time budget {budget:g}s: stopped after epoch {epoch + 1} "
                    f"({p.elapsed_s:.0f}s; the next would overrun), keeping epoch {p.best_epoch}"
                )
        self.checkpoint(row)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The stage's validation sums on this rank's val rows, reduced over ranks (EMA weights)."""
        self.module.eval()
        sums = self.stage.validate(self.eval_module, self.val_data, self.val_rows)
        keys = sorted(sums)
        totals = self.ctx.comm.sum(torch.tensor([[*sums[k]] for k in keys], dtype=torch.float64).reshape(-1, 2))
        return {k: (s / c).item() if c else float("nan") for k, (s, c) in zip(keys, totals)}

    def state_dict(self) -> dict[str, Any]:
        """The whole training state of this rank's trainer (rank 0's is what is saved)."""
        return {
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "stage": self.stage.state_dict(),
            "progress": dataclasses.asdict(self.progress), "history": self.history,
            "best_weights": self.best_weights, "world_size": self.world, "config_digest": self.job.config_digest,
        }  # fmt: skip

    def checkpoint(self, row: dict[str, Any]) -> None:
        """Every rank calls this (the report is a collective); rank 0 writes the state."""
        rngs = self.ctx.comm.gather(rng_state())
        tmp = None
        if self.rank == 0:
            tmp = tempfile.mkdtemp(prefix=f"ups-{self.name}-")
            manifest = {"stage": self.name, "epoch": self.progress.epoch, "micro": self.progress.micro,
                        "global_step": self.progress.global_step, "config_digest": self.job.config_digest}  # fmt: skip
            save_checkpoint(tmp, {**self.state_dict(), "rng": rngs}, manifest)
        self.ctx.report(self.job, row, tmp)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    def finish(self) -> StageResult:
        """Export the best-epoch weights (rank 0), or report where a stop left the stage."""
        p = self.progress
        best = BestMetric(self.stage.val_metric, p.best, p.best_epoch)
        result = StageResult(
            stage=self.name, status="interrupted" if self.stop_requested else "completed", epochs=p.epoch, best=best,
            stopped_early=p.stopped_early, world_size=self.world, restarts=p.restarts, world_sizes=p.world_sizes,
            first_step_unix=self.first_step, attempt=self.job.attempt, trained_with=self.trained_with,
            train_s=p.elapsed_s,
        )  # fmt: skip
        if self.stop_requested:
            if self.rank == 0:
                self._say(f"stop requested: checkpointed at epoch {p.epoch + 1}, micro-batch {p.micro}")
        elif self.rank == 0:
            if self.best_weights is not None:
                self.eval_module.load_state_dict(self.best_weights)
            tensors = self.stage.export(self.eval_module)
            missing = [k for k in self.stage.export_keys if k not in tensors]
            if missing:
                raise RuntimeError(f"stage {self.name}: export lacks {missing}")
            result.weights_sha256 = write_export(self.job.export_uri, self.name, tensors, best, self.job.config_digest)
        self.phases.done("export")
        result.phases_s = self.phases.times
        if not self.stop_requested:
            if self.rank == 0:
                stage_folder(self.job.export_uri).write_json(result.to_dict(), RESULT_FILE)
            # The other ranks may go on to a stage that reads this export: wait until it is written.
            self.ctx.comm.barrier()
        return result

    def _say(self, msg: str) -> None:
        self.emit(Say(self.name, msg))


def stage_folder(export_uri: str) -> Storage:
    return Storage(posixpath.dirname(export_uri))


def read_result(export_uri: str) -> StageResult | None:
    """The result a finished stage wrote beside its export, if it did."""
    folder = stage_folder(export_uri)
    if not folder.exists(RESULT_FILE):
        return None
    return StageResult.from_dict(folder.read_json(RESULT_FILE))


def run_stages(jobs: list[TrainJob], ctx: TrainContext, emit: Emit = ignore) -> list[StageResult]:
    """Train stages in turn on one context (one worker group): a stage that finished in an earlier
    attempt of the group (its result.json is there) is not trained again, a later stage reads the
    exports of earlier ones, and a stop request ends the group after the interrupted stage."""
    results: list[StageResult] = []
    done: dict[str, StageResult] = {}
    for job in jobs:
        job = dataclasses.replace(
            job,
            handoff_sha256={**job.handoff_sha256, **{n: r.weights_sha256 for n, r in done.items() if r.weights_sha256}},
        )
        if job.equal_time_with:  # the baseline's budget counts the surrogate stages this group just trained
            # Each stage's time rounded as summary.json records it, so the budget is the sum of the
            # figures a reader sees (summing raw seconds could land 0.01 s off that sum).
            spent = (job.time_budget_s or 0.0) + sum(
                round(done[n].train_s, 2) for n in job.equal_time_with if n in done
            )
            job = dataclasses.replace(job, time_budget_s=round(spent, 2), equal_time_with=[])
            if ctx.rank == 0:
                emit(Say(job.stage, f"time budget {job.time_budget_s:g}s: the surrogate's training time (equal_time)"))
        if job.latent_build is not None:
            build_latents(job, ctx, emit)
        prior = read_result(job.export_uri)
        if prior is not None and prior.status == "completed" and prior.attempt == job.attempt:
            result = prior
        else:
            result = StageTrainer(job, ctx, emit).fit()
        results.append(result)
        done[job.stage] = result
        if result.status != "completed":
            break
        emit(StageDone(job.stage, result.to_dict()))
    return results


def build_latents(job: TrainJob, ctx: TrainContext, emit: Emit = ignore) -> None:
    """Encode the latent cache inside the group (or reuse a valid one) with the autoencoder this
    group exported, and hand its train/val splits to the context under the job's data prefix.
    Only a group of one process does this (the pipeline asks for it only there): the rows it
    reads are the same files, in the same order, that the driver's cache would give it."""
    build = job.latent_build
    assert build is not None
    if ctx.world != 1:
        raise RuntimeError(f"stage {job.stage}: a latent cache is built inside a worker group of one process only")
    digest = job.handoff_sha256.get("autoencoder")
    if not digest:
        raise RuntimeError(f"stage {job.stage}: no autoencoder digest to build the latent cache with")
    t0 = time.perf_counter()
    cache, reused = build_or_reuse(
        Storage(build.run_uri), ctx.tasks(), DataMeta.from_dict(job.meta), C.from_dict(job.cfg),
        build.encoder_export_uri, digest, build.data_sha256, use_ray=False,
        say=lambda msg: emit(Say(job.stage, msg)),
    )  # fmt: skip
    for split in ("train", "val"):
        ctx.provide(job.data_prefix + split, cache.trajectories(split))
    emit(Say(job.stage, f"latent cache {'reused' if reused else 'built'} in {time.perf_counter() - t0:.1f}s"))
