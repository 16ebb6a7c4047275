"""The config sections that do not depend on which stages and networks exist: data, latent,
optimizers, schedules, training, scaling, checkpoints, evaluation, sweeps, gates, logging, and
the base class of every architecture's config.

Stage-specific sections live with their stage (`ups/stages/<stage>.py`), each architecture's
`model.<role>` section with its network (`ups/models/*.py`), and `ups/config.py` assembles the
whole schema from the stage and model registries. This module sits on the bottom floor: models,
data and stages import it; it imports only the leaf modules whose rules its checks apply (errors,
names, storage's URI redaction).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator

from ups.errors import ConfigError, KeyedError  # noqa: F401  (ConfigError re-exported: readers of the schema catch it)
from ups.names import name_problem

# ----------------------------------------------------------------------------------------------
# Schema. Sections own their keys; defaults make a tiny file a complete config.


class Section(BaseModel):
    # No NaN or infinity anywhere: `lr: .inf` is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _rule(ok: Callable[[Any], bool], rule: str) -> AfterValidator:
    """A bound as part of a key's type, so a subclass that changes a default keeps the bound.
    None (an optional key left unset) always passes."""

    def check(v: Any) -> Any:
        if v is not None and not ok(v):
            raise ValueError(f"must be {rule} (got {v})")
        return v

    return AfterValidator(check)


PosInt = Annotated[int, _rule(lambda v: v > 0, "> 0")]
PosFloat = Annotated[float, _rule(lambda v: v > 0, "> 0")]
NonNegInt = Annotated[int, _rule(lambda v: v >= 0, ">= 0")]
NonNegFloat = Annotated[float, _rule(lambda v: v >= 0, ">= 0")]
Fraction = Annotated[float, _rule(lambda v: 0 <= v < 1, "in [0, 1)")]  # fractions, EMA decays
Decay = Annotated[float, _rule(lambda v: 0 < v <= 1, "in (0, 1]")]  # multiplicative LR decays


def at_least(n: int) -> AfterValidator:
    """The bound `>= n`, used as `Annotated[int, at_least(n)]`."""
    return _rule(lambda v: v >= n, f">= {n}")


class GenerateConfig(Section):
    """How to create `data.path` when it is missing (and what `ray_jobs.generate` writes)."""

    pde: Literal["burgers", "advection", "advection2d", "navier_stokes2d"] = "burgers"
    nu: PosFloat = 0.001  # PDEBench's Nu: u_t + (u²/2)_x = (Nu/π) u_xx; navier_stokes2d: the viscosity ν
    beta: float = 1.0  # advection speed (along x in 2D)
    beta_y: float = 0.5  # advection2d: speed along y
    samples: PosInt = 1000
    resolution: Annotated[int, at_least(8)] = 1024  # cells per axis; the solvers need a few cells per wave
    frames: Annotated[int, at_least(2)] = 201  # saved frames, t = 0 .. t_end
    t_end: PosFloat = 2.0
    dt: PosFloat = 0.01  # navier_stokes2d: the largest solver step (each save interval splits evenly)
    seed: NonNegInt = 0
    chunk_size: PosInt = 128  # trajectories per Ray task

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The grid the generator writes: `resolution` cells per axis, 1D or 2D."""
        return (self.resolution,) * (2 if self.pde in ("advection2d", "navier_stokes2d") else 1)


REMOTE_SCHEMES = ("s3", "gs", "gcs")  # object stores `data.path` may name (read by ups.data.files); file:// is local


class DataConfig(Section):
    # One HDF5 file, or a list (multi-task): a local path, a file:// URI, or s3:// / gs:// (ups.data.files).
    path: Union[str, list[str]] = "data/burgers_nu0.001.h5"
    generate: GenerateConfig | None = None
    test_fraction: Fraction = 0.1  # PDEBench protocol: the first 10% of samples are the test set
    val_fraction: Fraction = 0.1  # of the samples that remain
    max_samples: PosInt | None = None  # read only the first N samples of each file
    x_stride: PosInt = 1  # PDEBench: 4 (1024 -> 256)
    t_stride: PosInt = 1  # PDEBench: 5 (201 -> 41)
    initial_step: PosInt = 10  # input frames; metrics exclude them
    normalize: bool = True
    # Where trajectories live while training. memory: the driver reads the strided views and every
    # worker holds its shard in memory (fast, exact). stream: the driver keeps metadata only, Ray
    # tasks read chunks of `chunk_trajectories`, every worker spills its shard to local disk
    # (`spill_dir`) and reads each batch from there: memory is bounded by chunk and batch sizes,
    # not by the dataset; the same order, so the same weights. auto: stream when the strided views
    # of all files exceed `memory_budget_mb`.
    mode: Literal["memory", "stream", "auto"] = "memory"
    memory_budget_mb: PosFloat = 4096.0
    chunk_trajectories: PosInt = 32
    spill_dir: str | None = None  # worker-local folder for spilled shards; None: the system temp folder

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | list[str]) -> str | list[str]:
        paths = [v] if isinstance(v, str) else v
        if not paths or any(not p for p in paths):
            raise ValueError("must name at least one HDF5 file")
        from urllib.parse import urlsplit

        from ups.storage import redact

        for p in paths:
            scheme = p.split("://", 1)[0] if "://" in p else None
            if scheme == "file" and not p.startswith("file:///"):
                raise ValueError(f"{redact(p)}: a file:// URI needs an absolute path (file:///...)")
            if scheme == "file" and ("?" in p or "#" in p):
                raise ValueError(f"{redact(p)}: a file:// URI takes no query or fragment (it would be ignored)")
            if scheme is None or scheme == "file":
                continue
            if scheme not in REMOTE_SCHEMES:
                known = ", ".join(f"{s}://" for s in ("file", *REMOTE_SCHEMES))
                raise ValueError(f"{redact(p)}: unknown scheme {scheme!r} (known: {known}; or a local path)")
            if redact(p) != p:  # a URI is printed and recorded: a secret in it would be too
                raise ValueError(
                    f"{redact(p)}: holds credentials; give them through the environment "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS) or a credentials file"
                )
            if "?" in p:  # a signed URL's or pyarrow's options: the readers take neither
                raise ValueError(
                    f"{redact(p)}: a query string ('?...') is not supported in a data URI; give the region "
                    "and endpoint through the environment (AWS_REGION, AWS_ENDPOINT_URL)"
                )
            if not urlsplit(p).hostname or urlsplit(p).path in ("", "/"):
                raise ValueError(f"{p}: needs a bucket and an object ({scheme}://BUCKET/PATH.h5)")
        return v

    @property
    def paths(self) -> list[str]:
        """The files as every reader opens them: a file:// URI becomes its local path, an object-store
        URI stays as it is."""
        return [local_path(p) for p in ([self.path] if isinstance(self.path, str) else self.path)]


def local_path(path: str) -> str:
    """`file:///a/b%20c.h5` -> `/a/b c.h5`; a plain path is returned as it is."""
    if path.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(path).path)
    return path


class LatentConfig(Section):
    tokens: PosInt = 16
    dim: PosInt = 32


@dataclass(frozen=True)
class NetSize:
    """What a network's parameter count depends on besides its own config: preflight's estimate."""

    dims: int  # spatial dimensions of the data
    channels: int  # field channels
    tokens: int  # latent tokens
    dim: int  # numbers per latent token
    frames: int  # frames a grid network is given (data.initial_step)


class ArchConfig(Section):
    """`model.<role>`: one architecture's own keys. Each architecture subclasses this next to its
    network (ups/models/*.py), narrows `arch` to its name (`arch: Literal["spectral"] = "spectral"`)
    and registers both (`ups.models.registry.register(..., config=...)`); ups/config.py makes each
    role's section the union of its registered classes, told apart by `arch`. So a key belongs to
    the architecture that reads it: `heads` on a spectral operator is an unknown key, not a silent
    no-op."""

    arch: str

    def estimate_parameters(self, size: NetSize) -> int:
        """The network's dominant parameter count, computed without building it, so preflight can
        refuse a model that cannot fit before anything is allocated. 0 = not estimated."""
        return 0

    # The key that scales the network (preflight names it when a model is too large).
    width_key: ClassVar[str] = "hidden"


if TYPE_CHECKING:

    class ModelSection(Section):
        """`model`: one section per role, each of the registered class its `arch` names
        (assembled by ups/config.py from the model registry)."""

        encoder: ArchConfig
        decoder: ArchConfig
        operator: ArchConfig
        denoiser: ArchConfig
        steady: ArchConfig
        baseline: ArchConfig


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd", "muon"] = "adamw"  # muon: Muon for >=2-D weights + AdamW
    lr: PosFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    eps: PosFloat = 1e-8
    momentum: NonNegFloat = 0.9  # sgd
    muon_momentum: NonNegFloat = 0.95
    muon_ns_steps: PosInt = 5


class SchedulerConfig(Section):
    """Warmup, then a schedule. Epoch-valued keys are converted to optimizer steps at stage start."""

    name: Literal["constant", "step", "cosine", "plateau"] = "constant"
    warmup_epochs: NonNegFloat = 0.0
    step_size: PosInt = 10  # step: epochs between decays
    gamma: Decay = 0.5  # step
    t_max: PosInt | None = None  # cosine: epochs to eta_min (default: the stage's epochs)
    eta_min: NonNegFloat = 0.0  # cosine: absolute floor
    factor: Decay = 0.5  # plateau: decay on a validation plateau
    patience: NonNegInt = 2  # plateau: epochs without improvement


class StageConfig(Section):
    epochs: NonNegInt = 10
    batch_size: PosInt | None = None  # this stage's global batch; None = training.batch_size
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    patience: PosInt | None = None  # early stopping on the validation metric; None = never
    # This stage's own EMA decay and gradient clip; None = training.ema_decay / training.grad_clip, 0 = off.
    ema_decay: Fraction | None = None
    grad_clip: NonNegFloat | None = None
    # Wall-clock seconds this stage may train (its epochs, validation and checkpoints): it stops
    # before an epoch that would overrun, keeping its best epoch so far. None = no budget.
    time_budget_s: PosFloat | None = None

    def resolved(self, dims: int) -> StageConfig:
        """This section as the stage trains it on `dims`-dimensional data: a stage whose defaults
        depend on the data (the FNO baseline's protocol) fills them here; most have none."""
        return self


class TrainingConfig(Section):
    batch_size: PosInt = 64  # global: samples per optimizer step over all workers and micro-steps
    accum_steps: PosInt = 1  # micro-steps per optimizer step; the per-worker batch adapts to the world size
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: PosFloat | None = 1.0
    ema_decay: Fraction | None = 0.999
    compile: bool = False
    # "reduce-overhead" = CUDA graphs: 7x faster steps for small launch-bound models on a GPU
    # (bench/RESULTS.md); "default" keeps plain inductor.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    seed: NonNegInt = 0
    deterministic: bool = True


class ScalingConfig(Section):
    num_workers: Union[int, tuple[int, int]] = 1  # an int, or [min, max] for an elastic run
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1.0
    gpus_per_worker: PosFloat = 1.0
    resources: dict[str, float] = {}  # extra custom resources per worker (e.g. a node label resource)
    elastic_resize_interval_s: PosFloat = 60.0  # how often an elastic run reconsiders its size
    # Preflight refuses a model, in-memory data or generated file estimated larger than this machine's
    # memory or free disk (ups/preflight.py); true: the workers run where there is more. Not digested.
    allow_large: bool = False

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> int | tuple[int, int]:
        if isinstance(v, bool):
            raise ValueError(f"must be an int or [min, max] (got {v!r})")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"must be >= 1 (got {v})")
            return v
        if (
            isinstance(v, (list, tuple))
            and len(v) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
        ):
            lo, hi = v
            if not 1 <= lo <= hi:
                raise ValueError(f"needs 1 <= min <= max (got [{lo}, {hi}])")
            return (lo, hi)
        raise ValueError(f"must be an int or [min, max] (got {v!r})")

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        for k, n in v.items():
            if k in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{k}: set by cpus_per_worker / gpus_per_worker, not as a custom resource")
            if not n > 0:
                raise ValueError(f"{k}: must be > 0 (got {n})")
        return v

    @property
    def world_sizes(self) -> range:
        lo, hi = (self.num_workers, self.num_workers) if isinstance(self.num_workers, int) else self.num_workers
        return range(lo, hi + 1)


class RayConfig(Section):
    """The embedded local Ray (ignored when RAY_ADDRESS points at a cluster)."""

    num_cpus: PosInt | None = None  # logical CPUs; default: enough for the workers plus Ray Data
    object_store_mb: Annotated[int, at_least(75)] | None = None  # Ray refuses less than 75 MiB
    data_cpus: PosFloat = 1.0  # CPU budget of Ray Data pipelines (encoding, ingest)
    # Ray's dashboard (http://127.0.0.1:8265) while the run lasts. Off by default: an idle embedded
    # Ray burns 5.6% of a core with it, 3.8% without (bench/ray_idle.py, bench/RESULTS.md).
    dashboard: bool = False


class CheckpointConfig(Section):
    keep: PosInt = 2  # newest checkpoints kept per stage (a corrupt newest one falls back to the previous)
    every_steps: PosInt | None = None  # also checkpoint inside an epoch, every N optimizer steps
    max_failures: Annotated[int, at_least(-1)] = 3  # worker-group restarts per stage; -1 = unlimited
    # Restarts after a node's preemption (a spot reclaim: the node was drained with a preemption
    # reason), counted apart from max_failures; -1 = unlimited.
    max_preemptions: Annotated[int, at_least(-1)] = -1


# The residual correctors a stage can provide (`Stage.corrector`), besides "auto" and "none" in
# `eval.corrector`.
CorrectorKind = Literal["diffusion", "consistency"]


class EvalConfig(Section):
    horizon: PosInt | None = None  # predicted frames after the input frames; None = to the end
    max_samples: PosInt | None = None  # trajectories per split; None = all
    corrector: Literal["auto", "none", "diffusion", "consistency"] = "auto"  # auto: kept only if it beats
    # the bare operator on val nRMSE (ups/pipeline.py)
    noise_scale: NonNegFloat = 0.0  # initial noise of the corrector's sampler; 0 = its deterministic estimate
    test: bool = True  # also report the test split at the end (never used to select anything)
    plots: bool = True
    batch_size: PosInt = 32


class SchedulerSpec(Section):
    name: Literal["asha", "fifo"] = "asha"
    stage: str = "operator"  # a registered stage (checked against the registry in ups.config)
    grace_period: PosInt = 1  # epochs of that stage before a trial can be stopped
    reduction_factor: Annotated[float, _rule(lambda v: v > 1, "> 1 (ASHA keeps 1 in reduction_factor trials)")] = 2.0


_SPACE_KINDS = {"choice", "uniform", "loguniform", "randint", "grid"}


class SweepConfig(Section):
    """A Ray Tune sweep: each trial runs the whole pipeline with sampled keys."""

    space: dict[str, dict[str, list[Any]]] = {}  # dotted config key -> {choice|uniform|loguniform|randint|grid: [...]}
    num_samples: PosInt = 1
    max_concurrent_trials: PosInt = 1
    scheduler: SchedulerSpec = SchedulerSpec()
    seed: NonNegInt = 0
    trial_cpus: PosFloat = 0.01  # the trial's own driver process; its TorchTrainers reserve their own

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in _SPACE_KINDS:
                raise ValueError(f"{key}: give exactly one of {sorted(_SPACE_KINDS)} (got {sorted(spec)})")
            kind, args = next(iter(spec.items()))
            if kind in ("choice", "grid") and not args:
                raise ValueError(f"{key}: {kind} needs at least one value")
            if kind not in ("uniform", "loguniform", "randint"):
                continue
            number = int if kind == "randint" else (int, float)
            if len(args) != 2 or not all(isinstance(a, number) and not isinstance(a, bool) for a in args):
                what = "integers" if kind == "randint" else "numbers"
                raise ValueError(f"{key}: {kind} takes [low, high], two {what} (got {args})")
            if not all(math.isfinite(a) for a in args) or not args[0] < args[1]:
                raise ValueError(f"{key}: {kind} needs low < high, both finite (got {args})")
            if kind == "loguniform" and not args[0] > 0:
                raise ValueError(f"{key}: loguniform needs 0 < low < high (got {args})")
        return space


class SmallEvalConfig(Section):
    max_samples: PosInt = 8  # val trajectories
    horizon: PosInt = 5  # predicted frames


class GateConfig(Section):
    """When a sweep's best trial replaces its family's champion."""

    family: str | None = None  # default: tasks + grid + frames + protocol
    min_improvement: Fraction = 0.02  # relative nRMSE margin over the champion
    min_delta: float | None = None  # optional absolute nRMSE margin, applied as well
    ratios: dict[str, float] = {"cRMSE": 1.25, "bRMSE": 1.25, "wall_clock": 2.0}  # candidate <= ratio x champion
    small: SmallEvalConfig = SmallEvalConfig()

    @field_validator("family")
    @classmethod
    def _family(cls, v: str | None) -> str | None:
        """The family is a folder, `{storage}/registry/{family}/`; empty or unset means derived."""
        if v and (problem := name_problem(v)):
            raise KeyedError("gate.family", f"{problem} (got {v!r})")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for k, r in v.items():
            if not r > 0:
                raise ValueError(f"{k}: ratio must be > 0 (got {r})")
        return v


# What W&B refuses in a project, entity or group name (its server answers "Invalid project name").
_WANDB_FORBIDDEN = set("/\\#?%:")


def _wandb_name(v: str | None) -> str | None:
    if v is None:
        return v
    bad = sorted({c for c in v if c in _WANDB_FORBIDDEN or not c.isprintable()})
    if not v.strip() or len(v) > 128 or bad:
        what = f"holds {' '.join(map(repr, bad))}" if bad else "must be 1 to 128 characters"
        raise ValueError(f"{what}: W&B refuses such names (no / \\ # ? % :, at most 128 characters)")
    return v


class WandbConfig(Section):
    enabled: bool = True
    mode: Literal["auto", "offline", "online", "disabled"] = "auto"  # auto: online iff WANDB_API_KEY is set
    project: str = "ups-ray"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = []

    _names = field_validator("project", "entity", "group")(_wandb_name)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not tag.strip() or len(tag) > 64:
                raise ValueError(f"tag {tag[:70]!r}: W&B takes tags of 1 to 64 characters")
        return v


class LoggingConfig(Section):
    wandb: WandbConfig = WandbConfig()


# ----------------------------------------------------------------------------------------------
# The whole config but the stages' own sections. `ups/config.py` adds `stages` (one section per
# registered stage) and the checks against the registries; code below it (stages, models) is
# typed against this class and never imports the assembled `Config`.


if TYPE_CHECKING:

    class StagesSection(Section):
        """`stages.<name>`: one section per registered stage (each of its stage's config class)."""

        def __getattr__(self, name: str) -> Any: ...


class ConfigBase(Section):
    """Every section but `stages`, and the checks that span sections and need nothing but the schema."""

    data: DataConfig = DataConfig()
    latent: LatentConfig = LatentConfig()
    training: TrainingConfig = TrainingConfig()
    scaling: ScalingConfig = ScalingConfig()
    ray: RayConfig = RayConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    sweep: SweepConfig = SweepConfig()
    gate: GateConfig = GateConfig()
    if TYPE_CHECKING:
        model: ModelSection  # added by ups.config from the model registry
        stages: StagesSection  # added by ups.config from the stage registry

    @model_validator(mode="after")
    def _cross_checks(self) -> ConfigBase:
        if not isinstance(self.data.path, str) and self.data.generate is not None:
            raise KeyedError("data.generate", "can only create a single file, but data.path is a list")
        tr = self.training
        batches = {"training.batch_size": tr.batch_size}
        stages = getattr(self, "stages", None)  # the section the stage registry adds (ups.config.Config)
        for name in type(stages).model_fields if stages is not None else ():
            b = getattr(stages, name).batch_size
            if b is not None:
                batches[f"stages.{name}.batch_size"] = b
        for key, b in batches.items():
            for world in self.scaling.world_sizes:
                if b % (world * tr.accum_steps):
                    raise KeyedError(
                        key,
                        f"{b} is not divisible by world size {world} x accum_steps {tr.accum_steps}",
                        also=("scaling.num_workers", "training.accum_steps"),
                    )
        return self
