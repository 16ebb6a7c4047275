"""Before any Ray resource: everything that can be wrong with a config and its data files.

Stage dependencies (from the registry), sizes against this machine (a model, in-memory data, a
generated file or spilled shards that cannot fit, workers it can never schedule), data files opened
and checked, the encoder's patch size against the grid, and whether the global batch fits every
active stage at every world size. Sizes are checked from declared shapes before anything
proportional to them is allocated or read. Raises ConfigError (one line naming the file and key;
the entry points exit 2).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ups import config as C
from ups.config import Config, ConfigError
from ups.data import files, pdebench, views
from ups.data.pdebench import FileInfo
from ups.models import factory
from ups.schema import GenerateConfig, NetSize
from ups.stages import registry
from ups.storage import check_creatable_parent

Where = Callable[[str], str]
BYTES_PER_PARAMETER = 20  # float32 weights, gradients, Adam's two moments and the EMA copy


def preflight(loaded: C.LoadedConfig, *, ray: bool = True, trials: int = 0) -> dict[str, FileInfo | None]:
    """Check stage dependencies, sizes against this machine, data files, batch sizes and (for an
    embedded Ray, `ray`) whether the workers can ever be scheduled; returns each data file's info
    (None: the file is missing and `data.generate` will create it). `trials`: concurrent sweep trials."""
    cfg, src = loaded.cfg, loaded.sources
    where = lambda key: C.source_of(key, src, str(loaded.path))
    check_stages(cfg, where)
    here = runs_here(ray)
    check_machine(cfg, where, trials, here=here, ray=ray)
    check_sizes(cfg, declared_shapes(cfg), where, here=here)
    infos: dict[str, FileInfo | None] = {}
    for path in cfg.data.paths:
        if files.is_remote(path):
            infos[path] = views.check_file(path, cfg.data, where("data.path"))  # data.generate writes local files only
            continue
        if not os.path.exists(path) and cfg.data.generate is not None:
            check_creatable_parent(f"{where('data.path')}: data.path {path}", path)
            infos[path] = None  # generated on first use
            continue
        infos[path] = views.check_file(path, cfg.data, where("data.path"))
    check_consistent(cfg, infos, where("data.path"))
    check_config(cfg, infos, where)
    check_environment(cfg)
    if ray:
        check_resources(cfg, where, trials)
    return infos


def check_config(cfg: Config, infos: dict[str, FileInfo | None], where: Where) -> None:
    """What the config alone decides, given its data files' infos (no file is read): stages, the
    grid against the networks, the model's size, the batches. A sweep runs it on every value of its
    search space."""
    check_stages(cfg, where)
    grid = grid_shape(cfg, infos)
    p = getattr(cfg.model.encoder, "patch_size", None)  # an encoder that reads the grid in patches
    if p is not None and any(n % p for n in grid):
        raise ConfigError(
            f"{where('model.encoder.patch_size')}: model.encoder.patch_size={p} does not divide "
            f"the grid {grid} (after data.x_stride={cfg.data.x_stride})"
        )
    info = next(iter(infos.values()))
    channels = len(info.channels) if info is not None else 1  # generated files hold one field, u
    shape_errors = factory.shape_errors(cfg.model, cfg.latent, grid, channels)
    if shape_errors:
        key, message = shape_errors[0]
        raise ConfigError(f"{where(key)}: {message}")
    check_model_size(cfg, len(grid), channels, where)
    check_batches(cfg, infos, where)


def check_stages(cfg: Config, where: Where) -> None:
    """Every active stage's dependencies are active; the corrector asked for has its stage on."""
    active = [s for s in registry.names() if C.stage_config(cfg, s).epochs > 0]
    if not active:
        raise ConfigError(f"{where('stages.autoencoder.epochs')}: every stage has 0 epochs: nothing to train")
    for s in active:
        for need in registry.get(s).needs:
            if need not in active:
                raise ConfigError(f"{where(f'stages.{s}.epochs')}: stages.{s} needs stages.{need}, which has 0 epochs")
    if not registry.surrogate_stages(active) and registry.provider("baseline", active):
        for s in active:  # the baseline trained alone (`train --only fno_baseline`): no surrogate to assemble
            if getattr(C.stage_config(cfg, s), "equal_time", False):
                raise ConfigError(
                    f"{where(f'stages.{s}.equal_time')}: stages.{s}.equal_time=true, but no surrogate stage "
                    f"trains in this run to take the time of: set stages.{s}.time_budget_s instead"
                )
        return
    for s in registry.surrogate_stages():  # the stages that provide the encoder, decoder and operator
        if s not in active:
            raise ConfigError(
                f"{where(f'stages.{s}.epochs')}: stages.{s}.epochs must be > 0 "
                f"(every surrogate needs an encoder and an operator)"
            )
    kind = cfg.eval.corrector
    if kind not in ("auto", "none"):
        providers = [s for s in registry.names() if registry.get(s).corrector == kind]
        if not any(s in active for s in providers):
            raise ConfigError(
                f"{where('eval.corrector')}: eval.corrector: {kind} needs stages.{providers[0]}, which has 0 epochs"
            )


# ----------------------------------------------------------------------------------------------
# This machine: what it can hold and run. Checked from declared sizes, before anything of that
# size is read or allocated. `scaling.allow_large: true` lifts the memory and disk checks (the
# workers run where there is more); `ray.num_cpus` says how many CPUs an embedded Ray may assume.


def runs_here(ray: bool) -> bool:
    """Whether this machine does the work: `--no-ray`, or an embedded Ray this driver will start
    (not a cluster, and not a Ray process already, such as a sweep trial on some node)."""
    if not ray:
        return True
    if os.environ.get("RAY_ADDRESS"):
        return False
    mod = sys.modules.get("ray")
    return not (mod is not None and getattr(mod, "is_initialized", lambda: False)())


def machine_memory() -> int:
    """Bytes of memory this process may use: physical memory, or a smaller cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def free_disk(path: str) -> int:
    """Free bytes on the filesystem `path` is, or would be created, on."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def check_machine(cfg: Config, where: Where, trials: int = 0, *, here: bool = True, ray: bool = True) -> None:
    """Workers and Ray's object store against this machine, when it is the one that runs them.

    An embedded Ray without `ray.num_cpus` gets as many logical CPUs as the workers ask for, so a
    typo like `num_workers: 100000` would start that many processes here: the workers' CPUs must fit
    the machine's. `ray.num_cpus` set says how many to assume (oversubscribing on purpose), and is
    checked against the workers by `check_resources`."""
    if not here:
        return
    _check_spill_dir(cfg, where)
    if not ray:
        return  # --no-ray: one worker in this process
    sc, cpus = cfg.scaling, os.cpu_count() or 1
    need = max(sc.world_sizes) * sc.cpus_per_worker * max(trials, 1)
    if cfg.ray.num_cpus is None and need > cpus:
        per = f" x {trials} concurrent trial(s)" if trials else ""
        raise ConfigError(
            f"{where('scaling.num_workers')}: scaling.num_workers: {max(sc.world_sizes)} worker(s) x "
            f"{sc.cpus_per_worker:g} CPU{per} need {need:g} CPUs, this machine has {cpus} "
            f"(set ray.num_cpus to oversubscribe it on purpose)"
        )
    store = cfg.ray.object_store_mb
    if store is not None and store * 2**20 > machine_memory():
        raise ConfigError(
            f"{where('ray.object_store_mb')}: ray.object_store_mb: {store} MiB is more than this machine's "
            f"memory ({human(machine_memory())})"
        )


def _check_spill_dir(cfg: Config, where: Where) -> None:
    """`data.spill_dir` is a local folder that exists or can be created, and is writable."""
    spill = cfg.data.spill_dir
    if spill is None:
        return
    shown = f"{where('data.spill_dir')}: data.spill_dir {spill!r}"
    if "://" in spill or not spill.strip():
        raise ConfigError(f"{shown}: must be a folder on the worker's local disk")
    check_creatable_parent(shown, os.path.join(spill, "shard"))


def declared_shapes(cfg: Config) -> dict[str, FileInfo]:
    """Each data file's shape as declared: its header (nothing of the data is read) or, for a file
    `data.generate` will write, the generator's. A file whose header cannot be read is left out:
    `views.check_file` says what is wrong with it."""
    out: dict[str, FileInfo] = {}
    for path in cfg.data.paths:
        g = cfg.data.generate
        if g is not None and not files.is_remote(path) and not os.path.exists(path):
            out[path] = _generated(path, g)
            continue
        try:
            out[path] = pdebench.inspect(path)
        except (pdebench.PDEBenchFormatError, ConfigError, OSError, ValueError):
            continue
    return out


def _generated(path: str, g: GenerateConfig) -> FileInfo:
    return FileInfo(path, "tensor", g.samples, g.frames, g.spatial_shape, ("u",))


def strided_bytes(cfg: Config, info: FileInfo, splits: tuple[str, ...] = ("train", "val", "test")) -> int:
    """float32 bytes of the strided view the run reads of one file (of the given splits)."""
    n = min(info.n_samples, cfg.data.max_samples or info.n_samples)
    sizes = split_sizes(n, cfg.data.test_fraction, cfg.data.val_fraction)
    frames = len(range(0, info.n_times, cfg.data.t_stride))
    cells = math.prod(len(range(0, x, cfg.data.x_stride)) for x in info.spatial_shape)
    return sum(sizes[s] for s in splits) * frames * cells * len(info.channels) * 4


def check_sizes(cfg: Config, declared: dict[str, FileInfo], where: Where, *, here: bool = True) -> None:
    """Generated files against free disk and memory, the data against memory (`data.mode: memory`)
    or, streamed on this machine, the spill folder's free disk."""
    if cfg.scaling.allow_large:
        return
    memory = machine_memory()
    hint = "; set scaling.allow_large: true if the run has more"
    for path in declared:
        if cfg.data.generate is not None and not files.is_remote(path) and not os.path.exists(path):
            check_generate_size(cfg.data.generate, path, where)
    total = sum(strided_bytes(cfg, info) for info in declared.values())
    d = cfg.data
    stream = d.mode == "stream" or (d.mode == "auto" and total > d.memory_budget_mb * 2**20)
    if not stream and total > memory:
        how = "data.mode: memory" if d.mode == "memory" else f"data.memory_budget_mb: {d.memory_budget_mb:g}"
        raise ConfigError(
            f"{where('data.mode' if d.mode == 'memory' else 'data.memory_budget_mb')}: {how} holds the strided data "
            f"({human(total)}) in memory, this machine has {human(memory)}; use data.mode: stream or auto{hint}"
        )
    if stream and here:
        spilled = sum(strided_bytes(cfg, info, ("train", "val")) for info in declared.values())
        folder = d.spill_dir or tempfile.gettempdir()
        free = free_disk(folder)
        if spilled > free:
            raise ConfigError(
                f"{where('data.spill_dir')}: data.spill_dir: streamed workers spill their shards "
                f"({human(spilled)}) to {folder}, which has {human(free)} free{hint}"
            )


def check_generate_size(g: GenerateConfig, path: str, where: Where, allow_large: bool = False) -> None:
    """The file `data.generate` writes against the free disk where it goes, and against memory
    (the generator holds every chunk, then the whole array, before writing)."""
    if allow_large:
        return
    size = g.samples * g.frames * math.prod(g.spatial_shape) * 4
    hint = "; set scaling.allow_large: true to generate it anyway"
    cells = "x".join(map(str, g.spatial_shape))
    what = f"{where('data.generate')}: data.generate: {g.samples} trajectories x {g.frames} frames x {cells} cells"
    free = free_disk(os.path.dirname(os.path.abspath(path)))
    if size > free:
        raise ConfigError(f"{what} make a {human(size)} file, {path} has {human(free)} free disk{hint}")
    memory = machine_memory()
    if 2 * size > memory:
        raise ConfigError(f"{what} need {human(2 * size)} of memory to write, this machine has {human(memory)}{hint}")


def estimate_parameters(cfg: Config, dims: int, channels: int) -> dict[str, int]:
    """Parameters of each network role the active stages build, from the config alone (no network
    is built, so an absurd size costs nothing): each architecture's config estimates its own
    network's dominant terms (`ArchConfig.estimate_parameters`), within a small factor of the truth."""
    size = NetSize(dims, channels, cfg.latent.tokens, cfg.latent.dim, cfg.data.initial_step)
    on = {s for s in registry.names() if C.stage_config(cfg, s).epochs > 0}
    return {
        role: getattr(cfg.model, role).estimate_parameters(size)
        for role in factory.ROLES
        if on.intersection(registry.builders(role))
    }


def check_model_size(cfg: Config, dims: int, channels: int, where: Where) -> None:
    """The networks' training state (weights, gradients, optimizer moments, EMA) must fit this
    machine's memory: a model of 10^12 parameters is refused here, not by a worker's OOM."""
    if cfg.scaling.allow_large:
        return
    sizes = estimate_parameters(cfg, dims, channels)
    total = sum(sizes.values())
    need, memory = total * BYTES_PER_PARAMETER, machine_memory()
    if need > memory:
        role = max(sizes, key=lambda r: sizes[r])
        net = getattr(cfg.model, role)
        scale = [k for k in (net.width_key, "depth") if k in type(net).model_fields]
        shape = [f"{k} {getattr(net, k)}" for k in scale]
        key = f"model.{role}.{scale[0]}" if scale else f"model.{role}"
        raise ConfigError(
            f"{where(key)}: model.{role}: about {sizes[role]:.2g} parameters ({', '.join([net.arch, *shape])}, "
            f"latent {cfg.latent.tokens} x {cfg.latent.dim}); training the model needs about {human(need)} "
            f"({BYTES_PER_PARAMETER} bytes a parameter), this machine has {human(memory)}; "
            f"set scaling.allow_large: true if the workers have more"
        )


def check_environment(cfg: Config) -> None:
    """The environment variables the project reads, named with their value when they are wrong
    (never the key itself: only the path of a key file is shown)."""
    from ups.tracking import KEY_FILE_ENV, normalise_env, read_key_file

    normalise_env()  # also done by every entry point; here for callers of the pipeline as a library
    if not cfg.logging.wandb.enabled:
        return
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in ("online", "offline", "disabled", "dryrun"):
        raise ConfigError(f"environment: WANDB_MODE={mode!r}: use online, offline or disabled")
    path = os.environ.get(KEY_FILE_ENV)
    if path and not os.environ.get("WANDB_API_KEY"):
        try:
            empty = not read_key_file(path)
        except OSError as e:
            raise ConfigError(f"environment: {KEY_FILE_ENV}={path}: cannot read the key file ({e.strerror})") from None
        except ValueError as e:
            raise ConfigError(f"environment: {KEY_FILE_ENV}={path}: {e}") from None
        if empty:
            raise ConfigError(f"environment: {KEY_FILE_ENV}={path}: the key file is empty")


def check_consistent(cfg: Config, infos: dict[str, FileInfo | None], source: str) -> None:
    """A list of files is one multi-task dataset: one grid, one frame count, one set of channels
    (after strides), and distinct file names (task names come from them)."""
    seen: dict[str, str] = {}
    ref: tuple[str, tuple[int, ...]] | None = None
    for path, info in infos.items():
        stem = files.stem(path)
        if stem in seen:
            raise ConfigError(f"{source}: data.path: {path} and {seen[stem]} share the name {stem!r} (task names)")
        seen[stem] = path
        if info is None:
            continue
        shape = (
            len(range(0, info.n_times, cfg.data.t_stride)),
            *(len(range(0, n, cfg.data.x_stride)) for n in info.spatial_shape),
            len(info.channels),
        )
        if ref is None:
            ref = (path, shape)
        elif shape != ref[1]:
            raise ConfigError(
                f"{source}: data.path: {path} has frames x grid x channels {shape} after strides, "
                f"but {ref[0]} has {ref[1]}; a multi-task run needs one shape"
            )


def check_resources(cfg: Config, where: Callable[[str], str], trials: int = 0) -> None:
    """An embedded Ray (RAY_ADDRESS unset) has only this machine: refuse what it can never schedule,
    instead of a run that waits forever for resources. A cluster's autoscaler may add nodes, so
    nothing is refused there."""
    if os.environ.get("RAY_ADDRESS"):
        return
    sc = cfg.scaling
    world = max(sc.world_sizes)
    if sc.use_gpu:
        import torch

        have = torch.cuda.device_count()
        if world * sc.gpus_per_worker > have:
            raise ConfigError(
                f"{where('scaling.use_gpu')}: scaling.use_gpu: {world} worker(s) x {sc.gpus_per_worker} GPU "
                f"need {world * sc.gpus_per_worker:g} GPUs, this machine has {have}"
            )
    if cfg.ray.num_cpus is not None:
        need = world * sc.cpus_per_worker + cfg.ray.data_cpus
        if trials:
            need = max(trials, 1) * (need + cfg.sweep.trial_cpus + cfg.ray.data_cpus)
        if cfg.ray.num_cpus < need:
            raise ConfigError(
                f"{where('ray.num_cpus')}: ray.num_cpus: {cfg.ray.num_cpus} CPUs cannot hold {world} worker(s) x "
                f"{sc.cpus_per_worker:g} CPU + ray.data_cpus {cfg.ray.data_cpus:g}"
                + (f" for {trials} concurrent trial(s)" if trials else "")
                + f" (needs {need:g})"
            )


def grid_shape(cfg: Config, infos: dict[str, FileInfo | None]) -> tuple[int, ...]:
    """The spatial grid after strides (from the first file, or what generation will write)."""
    info = next(iter(infos.values()))
    if info is not None:
        shape = info.spatial_shape
    else:
        assert cfg.data.generate is not None
        shape = cfg.data.generate.spatial_shape
    return tuple(len(range(0, n, cfg.data.x_stride)) for n in shape)


def split_sizes(n: int, test_fraction: float, val_fraction: float) -> dict[str, int]:
    """How many samples `views.split_indices` puts in each split, without allocating the indices
    (a declared sample count may be absurd)."""
    n_test = int(round(n * test_fraction))
    n_val = int(round((n - n_test) * val_fraction))
    return {"test": n_test, "val": n_val, "train": n - n_test - n_val}


def check_batches(cfg: Config, infos: dict[str, FileInfo | None], where: Callable[[str], str]) -> None:
    """Every active stage must have at least one global batch per epoch at every world size."""
    n_train, frames = 0, 0
    for info in infos.values():
        if info is not None:
            n, t = info.n_samples, info.n_times
        else:
            assert cfg.data.generate is not None
            n, t = cfg.data.generate.samples, cfg.data.generate.frames
        n = min(n, cfg.data.max_samples or n)
        splits = split_sizes(n, cfg.data.test_fraction, cfg.data.val_fraction)
        if splits["val"] == 0 or splits["train"] == 0:
            raise ConfigError(
                f"{where('data.val_fraction')}: {n} samples leave an empty split "
                f"(train {splits['train']}, val {splits['val']})"
            )
        n_train += splits["train"]
        frames = len(range(0, t, cfg.data.t_stride))
    dims = len(grid_shape(cfg, infos))
    for s, stage in registry.stages().items():
        scfg = C.stage_config(cfg, s, dims)
        if scfg.epochs == 0:
            continue
        b, key = C.batch_size(cfg, s, dims)
        per_traj = stage.samples_per_trajectory(frames, scfg, cfg.data.initial_step)
        for world in cfg.scaling.world_sizes:
            have = (n_train // world) * per_traj
            if have < b // world:
                raise ConfigError(
                    f"{where(key)}: {key}={b} needs {b // world} "
                    f"samples per worker, but stage {s} has {have} at world size {world}"
                )


def describe(loaded: C.LoadedConfig, infos: dict[str, FileInfo | None], *, storage: str, name: str) -> list[str]:
    """What a run of this config would do, in a few lines (`--validate-only`): data, splits,
    stages with their steps per epoch, workers and batches, storage, W&B, the config digest."""
    from ups.storage import redact
    from ups.tracking import wandb_mode

    cfg, d = loaded.cfg, loaded.cfg.data
    lines = [f"config   {loaded.path} (digest {C.digest(cfg)[:12]})"]
    n_train, frames = 0, 0
    for path, info in infos.items():
        grid: tuple[int, ...]
        chans: tuple[str, ...]
        if info is None:
            assert d.generate is not None
            g = d.generate
            n, t, grid, chans = g.samples, g.frames, g.spatial_shape, ("u",)
            note = f" (missing: data.generate writes it: {g.pde}, {g.samples} samples)"
        else:
            n, t, grid, chans, note = info.n_samples, info.n_times, info.spatial_shape, info.channels, ""
        n = min(n, d.max_samples or n)
        splits = split_sizes(n, d.test_fraction, d.val_fraction)
        n_train += splits["train"]
        frames = len(range(0, t, d.t_stride))
        strided = tuple(len(range(0, x, d.x_stride)) for x in grid)
        lines.append(
            f"data     {path}: {n} trajectories x {frames} frames x {'x'.join(map(str, strided))} x {len(chans)} "
            f"channel(s) after strides; train {splits['train']} / val {splits['val']} / "
            f"test {splits['test']}{note}"
        )
    sc, b = cfg.scaling, cfg.training.batch_size
    world = max(sc.world_sizes)
    dims = len(grid_shape(cfg, infos))
    for s, stage in registry.stages().items():
        scfg = C.stage_config(cfg, s, dims)
        if scfg.epochs == 0:
            lines.append(f"stage    {s}: off (0 epochs)")
            continue
        per_traj = stage.samples_per_trajectory(frames, scfg, d.initial_step)
        sb = C.batch_size(cfg, s, dims)[0]
        steps = (n_train // world) * per_traj // (sb // world)
        own = f", batch {sb}" if sb != b else ""
        lines.append(f"stage    {s}: {scfg.epochs} epochs x {steps} steps ({per_traj} samples per trajectory{own})")
    workers = f"{sc.num_workers}" if isinstance(sc.num_workers, int) else f"{sc.num_workers[0]}..{sc.num_workers[1]}"
    per = ", ".join(f"{b // (w * cfg.training.accum_steps)} at {w}" for w in sc.world_sizes)
    lines.append(
        f"workers  {workers} ({'GPU' if sc.use_gpu else 'CPU'}); global batch {b}, per worker and micro-step {per}"
        f" (x {cfg.training.accum_steps} micro-steps)"
    )
    lines.append(f"storage  {redact(storage)} -> run {name}")
    w = cfg.logging.wandb
    lines.append(f"W&B      {wandb_mode(w.mode) if w.enabled else 'off'} (project {w.project})")
    return lines
