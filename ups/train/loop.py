"""The one per-worker training loop, run by Ray's TorchTrainer for every stage.

Order of business on every (re)start: seed, build the stage, pull this rank's shard into memory,
restore the newest valid checkpoint, wrap for DDP, then run epochs from the exact micro-batch
where the checkpoint left off. Data order and noise are functions of (seed, stage, epoch/step,
rank), so replaying from a checkpoint reproduces an uninterrupted run bit for bit.

Guaranteed bit-identical on resume: same world size, same hardware and thread count, CPU or
deterministic GPU kernels. Not guaranteed: a different world size (elastic resize restarts the
interrupted epoch on the new shards), or non-deterministic GPU kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ups.config import STAGE_NAMES, Config
from ups.data.views import DataMeta
from ups.runtime import quiet_train_logs
from ups.stages import STAGES
from ups.stages.base import Stage
from ups.storage import Storage
from ups.tracking import MetricsLog, WandbRun
from ups.train.optim import LRSchedule, build_optimizer, ema_model
from ups.train.shard import collect
from ups.train.state import (
    CorruptCheckpoint,
    from_bytes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    tensors_sha256,
    to_bytes,
)
from ups.train.stop import StopWatcher

# Ranks agree on a stop request every this many optimizer steps: one tiny all-reduce, and on a
# GPU one host sync, per check. Every step would put that sync on the hot path.
STOP_CHECK_STEPS = 8


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of its parts (no state to checkpoint)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class Dist:
    """The few collectives the loop needs; no-ops on a single worker."""

    def __init__(self, device: torch.device):
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

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


class Phases:
    """Wall time of each named phase of a stage on this worker (returned to the driver)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = round(self.times.get(name, 0.0) + now - self._last, 3)
        self._last = now


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    phases = Phases()
    quiet_train_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = Config.model_validate(config["cfg"])
    name = config["stage"]
    tcfg, scfg = cfg.training, getattr(cfg.stages, name)
    seed = tcfg.seed + STAGE_NAMES.index(name)
    if tcfg.deterministic and device.type == "cuda":
        # CPU kernels used here are deterministic already; the switch imports torch._inductor (~2 s).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)  # identical initial weights on every rank

    meta = DataMeta.from_dict(config["meta"])
    handoff = {s: from_bytes(Storage(uri).read_bytes())["tensors"] for s, uri in config["handoff"].items()}
    stage: Stage = STAGES[name](cfg, meta, handoff, device)
    module = stage.build().to(device)
    comm = Dist(device)
    phases.done("build")

    train = collect(ray.train.get_dataset_shard("train"))
    val = collect(ray.train.get_dataset_shard("val"))
    phases.done("ingest")
    stage.setup(train, val, comm.sum)
    phases.done("stage_setup")
    val_rows = torch.arange(rank, len(val), world)

    micro = tcfg.batch_size // (world * tcfg.accum_steps)
    steps_per_epoch = comm.min_int(stage.num_samples(train) // micro) // tcfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"training.batch_size={tcfg.batch_size} is larger than stage {name}'s data on one worker "
            f"({stage.num_samples(train)} samples at world size {world})"
        )
    micro_per_epoch = steps_per_epoch * tcfg.accum_steps

    optimizer = build_optimizer(module, scfg.optimizer)
    schedule = LRSchedule(optimizer, scfg.scheduler, scfg.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp == "fp16")
    ema = ema_model(module, tcfg.ema_decay) if tcfg.ema_decay else None
    progress = {
        "epoch": 0,
        "micro": 0,
        "global_step": 0,
        "best": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "finished": False,
        "stopped_early": False,
        "loss_sum": 0.0,
        "loss_count": 0,
        "restarts": 0,
        "world_sizes": [],
    }
    history: list[dict] = []
    best_weights: dict[str, torch.Tensor] | None = None

    state = _restore(config, rank)
    if state is not None:
        if state["config_digest"] != config["config_digest"] and not config.get("accept_config_change"):
            raise RuntimeError(f"stage {name}: checkpoint was written under another config digest")
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        stage.load_state_dict(state["stage"])
        progress, history, best_weights = state["progress"], state["history"], state["best_weights"]
        progress["restarts"] = progress.get("restarts", 0) + 1
        if state["world_size"] == world:
            set_rng_state(state["rng"][rank])
        elif progress["micro"]:
            progress["micro"] = 0  # new shards after a resize: redo the interrupted epoch on them
        if rank == 0:
            print(
                f"[{name}] resumed at epoch {progress['epoch'] + 1}, micro-batch {progress['micro']} "
                f"(world size {state['world_size']} -> {world})",
                flush=True,
            )

    progress["world_sizes"] = progress.get("world_sizes", []) + [world]  # one entry per (re)start
    phases.done("restore")
    ddp = ray.train.torch.prepare_model(module)
    model = torch.compile(ddp, mode=tcfg.compile_mode) if tcfg.compile else ddp
    eval_module = ema.module if ema is not None else module
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tcfg.amp)
    log = MetricsLog(Storage(config["run_uri"]), name) if rank == 0 else None
    stop_watch = StopWatcher(config.get("stop_flag") if rank == 0 else None)
    wb = WandbRun(config.get("wandb"), config=config["cfg"]) if rank == 0 else None
    if wb:
        wb.define_stage(name)
    phases.done("prepare")

    def checkpoint(row: dict) -> None:
        """Every rank calls this (report() is a collective); rank 0 writes the state."""
        rngs = comm.gather(rng_state())
        ck, tmp = None, None
        if rank == 0:
            tmp = tempfile.mkdtemp(prefix=f"ups-{name}-")
            state = {
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "stage": stage.state_dict(),
                "progress": dict(progress),
                "history": history,
                "best_weights": best_weights,
                "rng": rngs,
                "world_size": world,
                "config_digest": config["config_digest"],
            }
            save_checkpoint(
                tmp,
                state,
                {
                    "stage": name,
                    "epoch": progress["epoch"],
                    "global_step": progress["global_step"],
                    "config_digest": config["config_digest"],
                },
            )
            ck = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(row, checkpoint=ck)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    preempted, first_step = False, None
    while not progress["finished"]:
        epoch = progress["epoch"]
        order = torch.randperm(
            stage.num_samples(train), generator=torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch, rank))
        )
        loss_acc, count_acc = torch.zeros((), dtype=torch.float64, device=device), 0
        t_start = time.perf_counter()
        module.train()
        for m in range(progress["micro"], micro_per_epoch):
            ids = order[m * micro : (m + 1) * micro]
            gen = torch.Generator().manual_seed(derive_seed(seed, "step", epoch, m, rank))
            batch = stage.batch(train, ids, gen)
            stepping = (m + 1) % tcfg.accum_steps == 0
            sync = contextlib.nullcontext() if stepping or not hasattr(ddp, "no_sync") else ddp.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, _ = model(batch)
                scaler.scale(loss.float() / tcfg.accum_steps).backward()
            loss_acc += loss.detach().double() * len(ids)
            count_acc += len(ids)
            if not stepping:
                continue
            scaler.unscale_(optimizer)
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), tcfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(module)
            stage.after_step(module)
            schedule.step()
            progress["global_step"] += 1
            progress["micro"] = m + 1
            first_step = first_step or time.time()
            every = cfg.checkpoint.every_steps
            if progress["global_step"] % STOP_CHECK_STEPS == 0:
                preempted = comm.any(stop_watch.requested())
            if preempted or (every and progress["global_step"] % every == 0 and m + 1 < micro_per_epoch):
                progress["loss_sum"] += loss_acc.item()  # the epoch's loss so far travels with the state
                progress["loss_count"] += count_acc
                loss_acc.zero_()
                count_acc = 0
                checkpoint(
                    {
                        "epoch": epoch + 1,
                        "global_step": progress["global_step"],
                        "mid_epoch": True,
                        "preempted": preempted,
                    }
                )
            if preempted:
                break
        if preempted:
            break
        train_time = time.perf_counter() - t_start
        train_loss = comm.sum(
            torch.tensor(
                [progress["loss_sum"] + loss_acc.item(), progress["loss_count"] + count_acc], dtype=torch.float64
            )
        )
        if not math.isfinite(train_loss[0].item()) and not scaler.is_enabled():
            raise FloatingPointError(f"stage {name}: training loss is {train_loss[0].item()} in epoch {epoch + 1}")
        loss_acc.zero_()
        count_acc = 0

        module.eval()
        sums = stage.validate(eval_module, val, val_rows)
        keys = sorted(sums)
        totals = comm.sum(torch.tensor([[*sums[k]] for k in keys], dtype=torch.float64).reshape(-1, 2))
        val_metrics = {k: (s / c).item() if c else float("nan") for k, (s, c) in zip(keys, totals)}
        metric = val_metrics[stage.val_metric]
        if metric < progress["best"]:
            progress.update(best=metric, best_epoch=epoch + 1, bad_epochs=0)
            best_weights = {k: v.detach().clone().cpu() for k, v in eval_module.state_dict().items()}
        else:
            progress["bad_epochs"] += 1
        schedule.epoch_end(metric)
        progress.update(epoch=epoch + 1, micro=0, loss_sum=0.0, loss_count=0)
        early_stop = scfg.patience is not None and progress["bad_epochs"] >= scfg.patience
        progress.update(
            finished=early_stop or epoch + 1 >= scfg.epochs, stopped_early=early_stop and epoch + 1 < scfg.epochs
        )
        row = {
            "stage": name,
            "epoch": epoch + 1,
            "world_size": world,
            "train_loss": (train_loss[0] / train_loss[1]).item(),
            **val_metrics,
            "lr": schedule.lr,
            "epoch_time_s": round(time.perf_counter() - t_start, 4),
            "samples_per_s": round(train_loss[1].item() / max(train_time, 1e-9), 2),
            "global_step": progress["global_step"],
        }
        history.append(row)
        if rank == 0:
            log.write(history)
            wb.log(f"train/{name}", row)
            print(
                f"[{name}] epoch {epoch + 1}/{scfg.epochs}  train_loss={row['train_loss']:.4g}  "
                f"{stage.val_metric}={metric:.4g}  lr={row['lr']:.2e}  {row['epoch_time_s']:.1f}s",
                flush=True,
            )
        checkpoint(row)

    phases.done("epochs")
    stop_watch.close()
    result = {
        "epochs": progress["epoch"],
        "stopped_early": progress["stopped_early"],
        "world_size": world,
        "restarts": progress["restarts"],
        "world_sizes": progress["world_sizes"],
        "preempted": preempted,
        "first_step_unix": first_step,
        "best": {"metric": stage.val_metric, "value": progress["best"], "epoch": progress["best_epoch"]},
    }
    if preempted:
        if rank == 0:
            print(
                f"[{name}] stop requested: checkpointed at epoch {progress['epoch'] + 1}, "
                f"micro-batch {progress['micro']}",
                flush=True,
            )
            if wb:
                wb.finish()
        return result
    if rank == 0:
        if best_weights is not None:
            eval_module.load_state_dict(best_weights)
        tensors = stage.export(eval_module)
        export = {"stage": name, "tensors": tensors, "best": result["best"], "config_digest": config["config_digest"]}
        Storage(config["export_uri"]).write_bytes(to_bytes(export))
        result["weights_sha256"] = tensors_sha256(tensors)
        if wb:
            wb.finish()
    phases.done("export")
    result["phases_s"] = phases.times
    return result


def _restore(config: dict, rank: int) -> dict | None:
    """The newest checkpoint whose manifest verifies; corrupt ones are reported and skipped."""
    latest = ray.train.get_checkpoint()
    if latest is None:
        return None
    runs = Storage(config["ray_run_uri"])
    others = [
        ray.train.Checkpoint(runs.path(d), filesystem=runs.fs)
        for d in reversed(runs.listdir(dirs_only=True))
        if d.startswith("checkpoint_")
    ]
    for ck in [latest] + [c for c in others if c.path.rstrip("/") != latest.path.rstrip("/")]:
        with ck.as_directory() as d:
            try:
                return load_checkpoint(d)
            except CorruptCheckpoint as e:
                if rank == 0:
                    print(f"[{config['stage']}] corrupt checkpoint skipped: {e}; trying the previous one", flush=True)
    if rank == 0:
        print(f"[{config['stage']}] no valid checkpoint left; starting the stage over", flush=True)
    return None
