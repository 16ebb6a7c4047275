"""The small interface through which the one training loop knows a stage.

A stage owns its networks, its loss on a batch, its validation metric and what it hands to later
stages; it knows nothing of Ray. The loop owns everything else: data order, DDP, AMP,
accumulation, clipping, EMA, schedules, checkpoints, early stopping and logging.

The trainable networks live in one `nn.Module` whose `forward(batch)` returns the loss, so DDP
sees every forward pass. Frozen networks from earlier stages (teachers, the decoder) live on the
stage object and are used while building batches and validating, outside DDP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from torch import nn

from ups.data.views import DataMeta
from ups.schema import ConfigBase, CorrectorKind, StageConfig
from ups.train.shard import Trajectories

# (sum, count) pairs that the loop all-reduces across ranks before dividing.
Sums = dict[str, tuple[float, float]]
ReduceSum = Callable[[torch.Tensor], torch.Tensor]

Inputs = Literal["fields", "latents"]  # physical trajectories, or the latent cache
ModuleT = TypeVar("ModuleT", bound=nn.Module)  # the stage's trainable module, as `build()` returns it
ConfigT = TypeVar("ConfigT", bound=StageConfig)  # the stage's `stages.<name>` config section

# What a stage's export can provide to a trained surrogate. Evaluation, preflight, `ray_jobs.evaluate`
# and the artifact assemble the surrogate from these declarations (ups/stages/registry.py `provider`),
# never from stage names. Every surrogate needs SURROGATE_ROLES; a corrector is optional; a baseline
# trained alone is the run's model.
Role = Literal["encoder", "decoder", "operator", "corrector", "baseline", "prior"]
SURROGATE_ROLES: tuple[Role, ...] = ("encoder", "decoder", "operator")


class Stage(Generic[ModuleT, ConfigT]):
    """One stage: declared once, registered with `ups.stages.registry.register`.

    Subclasses name their module and config types, `Stage[MyObjective, MyStageConfig]`, so the
    hooks that receive the module (unwrapped, or its EMA copy) and `stage_cfg` are typed."""

    name: ClassVar[str]
    config_cls: ClassVar[type[StageConfig]] = StageConfig  # its `stages.<name>` config section
    inputs: ClassVar[Inputs] = "latents"  # "fields": physical trajectories; "latents": the latent cache
    needs: ClassVar[tuple[str, ...]] = ()  # earlier stages whose exports this one reads
    val_metric: ClassVar[str]  # lower is better; early stopping and the best weights follow it
    export_keys: ClassVar[tuple[str, ...]] = ()  # what `export()` returns (checked when it is written)
    corrector: ClassVar[CorrectorKind | None] = None  # the `eval.corrector` kind this stage's export provides
    provides: ClassVar[dict[Role, str]] = {}  # role -> the key of `export()` that holds its weights
    # The networks (`model.<role>` of ups/models/factory.py) this stage holds in memory while it
    # trains, trainable or frozen: preflight sizes a run's memory from the active stages' networks.
    builds: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, cfg: ConfigBase, meta: DataMeta, handoff: dict[str, dict[str, Any]], device: torch.device
    ) -> None:
        """`cfg`: the run's whole config (ups.config.Config), known here by its stage-independent part
        (ups.schema.ConfigBase), so that stages sit below the config that is assembled from them."""
        missing = [n for n in self.needs if n not in handoff]
        if missing:
            raise RuntimeError(f"stage {self.name} needs the output of {missing}, which was not handed over")
        self.cfg, self.meta, self.handoff, self.device = cfg, meta, handoff, device
        # As the stage trains on this data (a data-dependent default, like the FNO's protocol, filled in).
        self.stage_cfg: ConfigT = getattr(cfg.stages, self.name).resolved(len(meta.spatial_shape))
        self.dts = torch.tensor(meta.dts, device=device)

    @classmethod
    def samples_per_trajectory(cls, frames: int, stage_cfg: ConfigT, initial_step: int = 1) -> int:
        """Training samples one trajectory yields; the driver checks the batch fits before Ray starts."""
        raise NotImplementedError

    def build(self) -> ModuleT:
        """The trainable networks, freshly initialised (the loop seeds the RNG first)."""
        raise NotImplementedError

    def setup(self, train: Trajectories, val: Trajectories, reduce_sum: ReduceSum) -> None:
        """Work done once per (re)start before training, e.g. residuals of a frozen operator."""

    def num_samples(self, train: Trajectories) -> int:
        return len(train) * self.samples_per_trajectory(self.meta.frames, self.stage_cfg, self.meta.initial_step)

    def batch(self, train: Trajectories, ids: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Tensors for one micro-batch; all randomness comes from `gen` (a function of the step).
        The module's forward(batch) returns (loss, auxiliary losses); the trainer logs both."""
        raise NotImplementedError

    def after_step(self, module: ModuleT) -> None:
        """Called after every optimizer step with the unwrapped module."""

    @torch.no_grad()
    def validate(self, module: ModuleT, val: Trajectories, rows: torch.Tensor) -> Sums:
        """Validation sums over `rows` of the val set (this rank's share); uses EMA weights."""
        raise NotImplementedError

    def export(self, module: ModuleT) -> dict[str, Any]:
        """What later stages and evaluation read: state dicts and the tensors they need."""
        raise NotImplementedError

    # Extra training state beyond the module (e.g. a consistency target network).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def dt(self, task: torch.Tensor) -> torch.Tensor:
        return self.dts[task]


def pair_index(ids: torch.Tensor, per_traj: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat sample ids -> (trajectory row, start frame)."""
    return ids // per_traj, ids % per_traj


def relative_l2(pred: torch.Tensor, target: torch.Tensor, start: int = 1) -> torch.Tensor:
    """‖pred − target‖ / ‖target‖ over the dimensions from `start` on, per index before it (a sample,
    or a sample's frame): the error nRMSE scores, so a state of small amplitude weighs as much in a
    loss as a large one (a mean squared error lets the largest states decide)."""
    diff = (pred - target).flatten(start).norm(dim=-1)
    return diff / target.flatten(start).norm(dim=-1).clamp_min(1e-12)


def task_sums(name: str, values: torch.Tensor, task: torch.Tensor, tasks: list[str]) -> Sums:
    """Sums of a per-sample metric, overall and (for multi-task runs) per task as `name/<task>`."""
    values = values.reshape(len(task), -1)
    out = {name: (values.sum().item(), float(values.numel()))}
    if len(tasks) > 1:
        for i, t in enumerate(tasks):
            v = values[task == i]
            out[f"{name}/{t}"] = (v.sum().item(), float(v.numel()))
    return out
