"""Configs: YAML files with `include:`, `--set` overrides, one typed schema, validation before Ray.

A config file only says what differs from the schema's defaults. Every error a user can make in a
file or on the command line becomes a `ConfigError` whose message is one line naming the file and
the key, so entry points can print it and exit 2 before any cluster resource is used.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator, model_validator

STAGE_NAMES = ("autoencoder", "operator", "diffusion_residual", "consistency_distill", "steady_prior")


class ConfigError(ValueError):
    """A bad config, include, override or data file; the message is one line for the user."""


# ----------------------------------------------------------------------------------------------
# Schema. Sections own their keys; defaults make a tiny file a complete config.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _rule(ok: Callable[[Any], bool], rule: str) -> AfterValidator:
    """A bound as part of a key's type, so a subclass that changes a default keeps the bound.
    None (an optional key left unset) always passes."""

    def check(v):
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


def AtLeast(n: int) -> Any:
    return Annotated[int, _rule(lambda v: v >= n, f">= {n}")]


class GenerateConfig(_Section):
    """How to create `data.path` when it is missing (and what `ray_jobs.generate` writes)."""

    pde: Literal["burgers", "advection"] = "burgers"
    nu: PosFloat = 0.001  # PDEBench's Nu: u_t + (u²/2)_x = (Nu/π) u_xx
    beta: float = 1.0  # advection speed
    samples: PosInt = 1000
    resolution: PosInt = 1024
    frames: AtLeast(2) = 201  # saved frames, t = 0 .. t_end
    t_end: PosFloat = 2.0
    seed: int = 0
    chunk_size: PosInt = 128  # trajectories per Ray task


class DataConfig(_Section):
    path: Union[str, list[str]] = "data/burgers_nu0.001.h5"  # one HDF5 file, or a list (multi-task)
    generate: GenerateConfig | None = None
    test_fraction: Fraction = 0.1  # PDEBench protocol: the first 10% of samples are the test set
    val_fraction: Fraction = 0.1  # of the samples that remain
    max_samples: PosInt | None = None  # read only the first N samples of each file
    x_stride: PosInt = 1  # PDEBench: 4 (1024 -> 256)
    t_stride: PosInt = 1  # PDEBench: 5 (201 -> 41)
    initial_step: PosInt = 10  # input frames; metrics exclude them
    normalize: bool = True

    @field_validator("path")
    @classmethod
    def _path(cls, v):
        paths = [v] if isinstance(v, str) else v
        if not paths or any(not p for p in paths):
            raise ValueError("must name at least one HDF5 file")
        return v

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class LatentConfig(_Section):
    tokens: PosInt = 16
    dim: PosInt = 32


class _Net(_Section):
    hidden: PosInt = 64
    depth: NonNegInt = 2
    heads: PosInt = 4
    mlp_ratio: PosFloat = 2.0

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        return self


class EncoderConfig(_Net):
    patch_size: PosInt = 4
    depth: NonNegInt = 1
    frequencies: PosInt = 6  # Fourier features of patch centres


class DecoderConfig(_Net):
    frequencies: PosInt = 8  # Fourier features of the query coordinates


class OperatorNetConfig(_Net):
    hidden: PosInt = 96
    depth: NonNegInt = 3


class DenoiserNetConfig(_Net):
    hidden: PosInt = 96
    depth: NonNegInt = 2


class SteadyNetConfig(_Net):
    steps: PosInt = 4  # refinement iterations


class ModelConfig(_Section):
    encoder: EncoderConfig = EncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    operator: OperatorNetConfig = OperatorNetConfig()
    denoiser: DenoiserNetConfig = DenoiserNetConfig()
    steady: SteadyNetConfig = SteadyNetConfig()


class OptimizerConfig(_Section):
    name: Literal["adam", "adamw", "sgd", "muon"] = "adamw"  # muon: Muon for >=2-D weights + AdamW
    lr: PosFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PosFloat = 1e-8
    momentum: NonNegFloat = 0.9  # sgd
    muon_momentum: NonNegFloat = 0.95
    muon_ns_steps: PosInt = 5


class SchedulerConfig(_Section):
    """Warmup, then a schedule. Epoch-valued keys are converted to optimizer steps at stage start."""

    name: Literal["constant", "step", "cosine", "plateau"] = "constant"
    warmup_epochs: NonNegFloat = 0.0
    step_size: PosInt = 10  # step: epochs between decays
    gamma: Decay = 0.5  # step
    t_max: PosInt | None = None  # cosine: epochs to eta_min (default: the stage's epochs)
    eta_min: NonNegFloat = 0.0  # cosine: absolute floor
    factor: Decay = 0.5  # plateau: decay on a validation plateau
    patience: int = 2  # plateau: epochs without improvement


class StageConfig(_Section):
    epochs: NonNegInt = 10
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    patience: PosInt | None = None  # early stopping on the validation metric; None = never


class AutoencoderStageConfig(StageConfig):
    epochs: NonNegInt = 20
    query_points: PosInt | None = None  # decoder points per frame in training; None = the whole grid


class OperatorStageConfig(StageConfig):
    epochs: NonNegInt = 20
    rollout_horizon: PosInt = 1  # unrolled steps in the training loss (1 = one-step only)
    lambda_rollout: float = 0.5  # weight of the unrolled part when rollout_horizon > 1


class DiffusionStageConfig(StageConfig):
    epochs: NonNegInt = 10
    optimizer: OptimizerConfig = OptimizerConfig(lr=3e-4)
    sigma_min: PosFloat = 0.002  # in units of the residual's std
    sigma_max: PosFloat = 20.0
    p_mean: float = -1.2  # log-normal noise-level distribution for training (EDM)
    p_std: PosFloat = 1.2
    sample_steps: PosInt = 4  # Heun steps of the few-step sampler

    @model_validator(mode="after")
    def _range(self):
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min={self.sigma_min} must be < sigma_max={self.sigma_max}")
        return self


class ConsistencyStageConfig(StageConfig):
    epochs: NonNegInt = 5
    optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4)
    num_scales: AtLeast(2) = 18  # discretisation of the teacher's probability-flow ODE
    target_ema: Fraction = 0.95  # EMA of the student that provides the consistency target


class SteadyStageConfig(StageConfig):
    epochs: NonNegInt = 0  # off: transient problems have no steady state


class StagesConfig(_Section):
    autoencoder: AutoencoderStageConfig = AutoencoderStageConfig()
    operator: OperatorStageConfig = OperatorStageConfig()
    diffusion_residual: DiffusionStageConfig = DiffusionStageConfig()
    consistency_distill: ConsistencyStageConfig = ConsistencyStageConfig()
    steady_prior: SteadyStageConfig = SteadyStageConfig()


class TrainingConfig(_Section):
    batch_size: PosInt = 64  # global: samples per optimizer step over all workers and micro-steps
    accum_steps: PosInt = 1  # micro-steps per optimizer step; the per-worker batch adapts to the world size
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: PosFloat | None = 1.0
    ema_decay: Fraction | None = 0.999
    compile: bool = False
    # "reduce-overhead" = CUDA graphs: 7x faster steps for small launch-bound models on a GPU
    # (bench/RESULTS.md); "default" keeps plain inductor.
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    seed: int = 0
    deterministic: bool = True


class ScalingConfig(_Section):
    num_workers: Union[int, tuple[int, int]] = 1  # an int, or [min, max] for an elastic run
    use_gpu: bool = False
    cpus_per_worker: PosFloat = 1.0
    gpus_per_worker: PosFloat = 1.0
    resources: dict[str, float] = {}  # extra custom resources per worker (e.g. a node label resource)
    elastic_resize_interval_s: PosFloat = 60.0  # how often an elastic run reconsiders its size

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, v):
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

    @property
    def world_sizes(self) -> range:
        lo, hi = (self.num_workers, self.num_workers) if isinstance(self.num_workers, int) else self.num_workers
        return range(lo, hi + 1)

    @property
    def elastic(self) -> bool:
        return not isinstance(self.num_workers, int)


class RayConfig(_Section):
    """The embedded local Ray (ignored when RAY_ADDRESS points at a cluster)."""

    num_cpus: PosInt | None = None  # logical CPUs; default: enough for the workers plus Ray Data
    object_store_mb: PosInt | None = None
    data_cpus: PosFloat = 1.0  # CPU budget of Ray Data pipelines (encoding, ingest)


class CheckpointConfig(_Section):
    keep: PosInt = 2  # newest checkpoints kept per stage (a corrupt newest one falls back to the previous)
    every_steps: PosInt | None = None  # also checkpoint inside an epoch, every N optimizer steps
    max_failures: AtLeast(-1) = 3  # worker-group restarts per stage; -1 = unlimited


class EvalConfig(_Section):
    horizon: PosInt | None = None  # predicted frames after the input frames; None = to the end
    max_samples: PosInt | None = None  # trajectories per split; None = all
    corrector: Literal["auto", "none", "diffusion", "consistency"] = "auto"  # auto: kept only if it beats
    # the bare operator on val nRMSE (ups/pipeline.py)
    noise_scale: NonNegFloat = 0.0  # initial noise of the corrector's sampler; 0 = its deterministic estimate
    test: bool = True  # also report the test split at the end (never used to select anything)
    plots: bool = True
    batch_size: PosInt = 32


class SchedulerSpec(_Section):
    name: Literal["asha", "fifo"] = "asha"
    stage: Literal["autoencoder", "operator", "diffusion_residual", "consistency_distill", "steady_prior"] = "operator"
    grace_period: PosInt = 1  # epochs of that stage before a trial can be stopped
    reduction_factor: PosFloat = 2.0


_SPACE_KINDS = {"choice", "uniform", "loguniform", "randint", "grid"}


class SweepConfig(_Section):
    """A Ray Tune sweep: each trial runs the whole pipeline with sampled keys."""

    space: dict[str, dict[str, list]] = {}  # dotted config key -> {choice|uniform|loguniform|randint|grid: [...]}
    num_samples: PosInt = 1
    max_concurrent_trials: PosInt = 1
    scheduler: SchedulerSpec = SchedulerSpec()
    seed: int = 0
    trial_cpus: PosFloat = 0.01  # the trial's own driver process; its TorchTrainers reserve their own

    @field_validator("space")
    @classmethod
    def _space(cls, space):
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in _SPACE_KINDS:
                raise ValueError(f"{key}: give exactly one of {sorted(_SPACE_KINDS)} (got {sorted(spec)})")
            kind, args = next(iter(spec.items()))
            if kind in ("uniform", "loguniform", "randint") and len(args) != 2:
                raise ValueError(f"{key}: {kind} takes [low, high] (got {args})")
            if kind in ("choice", "grid") and not args:
                raise ValueError(f"{key}: {kind} needs at least one value")
            if kind == "loguniform" and not 0 < args[0] < args[1]:
                raise ValueError(f"{key}: loguniform needs 0 < low < high (got {args})")
        return space


class SmallEvalConfig(_Section):
    max_samples: PosInt = 8  # val trajectories
    horizon: PosInt = 5  # predicted frames


class GateConfig(_Section):
    """When a sweep's best trial replaces its family's champion."""

    family: str | None = None  # default: tasks + grid + frames + protocol
    min_improvement: Fraction = 0.02  # relative nRMSE margin over the champion
    min_delta: float | None = None  # optional absolute nRMSE margin, applied as well
    ratios: dict[str, float] = {"cRMSE": 1.25, "bRMSE": 1.25, "wall_clock": 2.0}  # candidate <= ratio x champion
    small: SmallEvalConfig = SmallEvalConfig()

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        for k, r in v.items():
            if not r > 0:
                raise ValueError(f"{k}: ratio must be > 0 (got {r})")
        return v


class WandbConfig(_Section):
    enabled: bool = True
    mode: Literal["auto", "offline", "online", "disabled"] = "auto"  # auto: online iff WANDB_API_KEY is set
    project: str = "ups-ray"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = []


class LoggingConfig(_Section):
    wandb: WandbConfig = WandbConfig()


class Config(_Section):
    data: DataConfig = DataConfig()
    latent: LatentConfig = LatentConfig()
    model: ModelConfig = ModelConfig()
    stages: StagesConfig = StagesConfig()
    training: TrainingConfig = TrainingConfig()
    scaling: ScalingConfig = ScalingConfig()
    ray: RayConfig = RayConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    sweep: SweepConfig = SweepConfig()
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        if not isinstance(self.data.path, str) and self.data.generate is not None:
            raise _KeyedError("data.generate", "can only create a single file, but data.path is a list")
        tr = self.training
        for world in self.scaling.world_sizes:
            if tr.batch_size % (world * tr.accum_steps):
                raise _KeyedError(
                    "training.batch_size",
                    f"{tr.batch_size} is not divisible by world size {world} x accum_steps {tr.accum_steps}",
                )
        return self


class _KeyedError(ValueError):
    """A cross-field error that knows which dotted key to blame."""

    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key, self.msg = key, msg


# ----------------------------------------------------------------------------------------------
# Loading: YAML + includes + overrides, remembering which file set each key.


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 insists on `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path, shown: str) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{shown}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{shown}{line}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{shown}: YAML error: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge; lists and scalars replace."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _leaves(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, dict):
            keys += _leaves(v, key + ".")
    return keys


def _load_file(path: Path, stack: tuple[Path, ...], sources: dict[str, str]) -> dict:
    shown = _show(path)
    if path in stack:
        cycle = " -> ".join(_show(p) for p in (*stack[stack.index(path) :], path))
        raise ConfigError(f"{shown}: include cycle: {cycle}")
    raw = _read_yaml(path, shown)
    includes = raw.pop("include", None)
    if includes is None:
        includes = []
    elif isinstance(includes, str):
        includes = [includes]
    elif not (isinstance(includes, list) and all(isinstance(i, str) for i in includes)):
        raise ConfigError(f"{shown}: include: must be a path or a list of paths")
    merged: dict = {}
    for inc in includes:
        inc_path = (path.parent / inc).resolve()
        if not inc_path.exists():
            raise ConfigError(f"{shown}: include: file not found: {inc} (looked for {_show(inc_path)})")
        merged = _deep_merge(merged, _load_file(inc_path, (*stack, path), sources))
    for key in _leaves(raw):
        sources[key] = shown
    return _deep_merge(merged, raw)


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def apply_override(tree: dict, item: str, sources: dict[str, str]) -> dict:
    """Apply one `dotted.key=yaml_value` override."""
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = parse_yaml_value(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = nxt
    node[parts[-1]] = value
    for k in [key] + ([f"{key}.{leaf}" for leaf in _leaves(value)] if isinstance(value, dict) else []):
        sources.pop(k, None)  # re-insert so the newest setting comes last
        sources[k] = "--set"
    return tree


class LoadedConfig:
    """A validated config plus where it came from."""

    def __init__(self, cfg: Config, path: Path, sources: dict[str, str]):
        self.cfg, self.path, self.sources = cfg, path, sources

    @property
    def name(self) -> str:
        return self.path.stem


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    path = Path(path)
    sources: dict[str, str] = {}
    tree = _load_file(path.resolve(), (), sources)
    for item in overrides:
        tree = apply_override(tree, item, sources)
    cfg = validate(tree, sources, default_source=_show(path))
    return LoadedConfig(cfg, path, sources)


def validate(tree: dict, sources: dict[str, str] | None = None, default_source: str = "config") -> Config:
    sources = sources or {}
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_explain(e, tree, sources, default_source)) from None


def _source_of(key: str, sources: dict[str, str], default: str) -> str:
    """The file that last set `key`, one of its sections, or something inside it."""
    inside = [src for k, src in sources.items() if k.startswith(key + ".")]
    if key in sources or inside:
        return sources.get(key) or inside[-1]
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in sources:
            return sources[".".join(parts[:n])]
    return default


def _explain(e: ValidationError, tree: dict, sources: dict[str, str], default: str) -> str:
    err = e.errors()[0]
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _KeyedError):
        return f"{_source_of(ctx_err.key, sources, default)}: {ctx_err.key}: {ctx_err.msg}"
    loc = [str(p) for p in err["loc"] if isinstance(p, str)]
    # Pydantic appends union-member tags such as 'int' or 'tuple[int,int]'; keep field names only.
    loc = [p for p in loc if not re.search(r"[\[\],]|^(int|str|float|list|tuple|none)$", p)]
    key = ".".join(loc)
    where = _source_of(key, sources, default)
    if err["type"] == "extra_forbidden":
        parent, _, leaf = key.rpartition(".")
        known = _known_keys(parent)
        hint = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{where}: unknown key '{key}'{suggestion}"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    got = "" if "got" in msg or isinstance(value, dict) else f" (got {value!r})"
    return f"{where}: {key}: {msg}{got}"


def _known_keys(dotted_parent: str) -> list[str]:
    model: type[BaseModel] = Config
    for part in filter(None, dotted_parent.split(".")):
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        ann = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if ann is None:
            return []
        model = ann
    return list(model.model_fields)


# ----------------------------------------------------------------------------------------------
# The resolved config, as saved with every run.

# Keys that change how a run is watched, not what it computes: they do not enter the digest.
_NOT_DIGESTED = ("logging", "sweep", "gate")


def to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def digest(cfg: Config) -> str:
    d = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_DIGESTED}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ: what a user is told when a resumed run's config changed."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and not k.startswith(_NOT_DIGESTED))
