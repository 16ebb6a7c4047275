"""Before any Ray resource: everything that can be wrong with a config and its data files.

Stage dependencies (from the registry), data files opened and checked, the encoder's patch size
against the grid, and whether the global batch fits every active stage at every world size.
Raises ConfigError (one line naming the file and key; the entry points exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ups import config as C
from ups.config import Config, ConfigError
from ups.data import files, views
from ups.data.pdebench import FileInfo
from ups.models import factory
from ups.stages import registry
from ups.storage import check_creatable_parent


def preflight(loaded: C.LoadedConfig, *, ray: bool = True, trials: int = 0) -> dict[str, FileInfo | None]:
    """Check stage dependencies, data files, batch sizes and (for an embedded Ray, `ray`) whether
    the workers can ever be scheduled; returns each data file's info (None: the file is missing
    and `data.generate` will create it). `trials`: concurrent sweep trials."""
    cfg, src = loaded.cfg, loaded.sources
    where = lambda key: C.source_of(key, src, str(loaded.path))
    active = [s for s in registry.names() if C.stage_config(cfg, s).epochs > 0]
    for s in active:
        for need in registry.get(s).needs:
            if need not in active:
                raise ConfigError(f"{where(f'stages.{s}.epochs')}: stages.{s} needs stages.{need}, which has 0 epochs")
    for s in ("autoencoder", "operator"):
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
    grid = grid_shape(cfg, infos)
    p = cfg.model.encoder.patch_size
    if any(n % p for n in grid):
        raise ConfigError(
            f"{where('model.encoder.patch_size')}: model.encoder.patch_size={p} does not divide "
            f"the grid {grid} (after data.x_stride={cfg.data.x_stride})"
        )
    shape_errors = factory.shape_errors(cfg.model, cfg.latent, grid)
    if shape_errors:
        key, message = shape_errors[0]
        raise ConfigError(f"{where(key)}: {message}")
    check_batches(cfg, infos, where)
    check_environment(cfg)
    if ray:
        check_resources(cfg, where, trials)
    return infos


def check_environment(cfg: Config) -> None:
    """The environment variables the project reads, named with their value when they are wrong
    (never the key itself: only the path of a key file is shown)."""
    from ups.tracking import KEY_FILE_ENV

    if not cfg.logging.wandb.enabled:
        return
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode.strip().lower() not in ("online", "offline", "disabled", "dryrun"):
        raise ConfigError(f"environment: WANDB_MODE={mode!r}: use online, offline or disabled")
    path = os.environ.get(KEY_FILE_ENV)
    if path and not os.environ.get("WANDB_API_KEY"):
        try:
            empty = not Path(path).read_text().strip()
        except OSError as e:
            raise ConfigError(f"environment: {KEY_FILE_ENV}={path}: cannot read the key file ({e.strerror})") from None
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
        splits = views.split_indices(n, cfg.data.test_fraction, cfg.data.val_fraction)
        if len(splits["val"]) == 0 or len(splits["train"]) == 0:
            raise ConfigError(
                f"{where('data.val_fraction')}: {n} samples leave an empty split "
                f"(train {len(splits['train'])}, val {len(splits['val'])})"
            )
        n_train += len(splits["train"])
        frames = len(range(0, t, cfg.data.t_stride))
    for s, stage in registry.stages().items():
        scfg = C.stage_config(cfg, s)
        if scfg.epochs == 0:
            continue
        b, key = C.batch_size(cfg, s)
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
        splits = views.split_indices(n, d.test_fraction, d.val_fraction)
        n_train += len(splits["train"])
        frames = len(range(0, t, d.t_stride))
        strided = tuple(len(range(0, x, d.x_stride)) for x in grid)
        lines.append(
            f"data     {path}: {n} trajectories x {frames} frames x {'x'.join(map(str, strided))} x {len(chans)} "
            f"channel(s) after strides; train {len(splits['train'])} / val {len(splits['val'])} / "
            f"test {len(splits['test'])}{note}"
        )
    sc, b = cfg.scaling, cfg.training.batch_size
    world = max(sc.world_sizes)
    for s, stage in registry.stages().items():
        scfg = C.stage_config(cfg, s)
        if scfg.epochs == 0:
            lines.append(f"stage    {s}: off (0 epochs)")
            continue
        per_traj = stage.samples_per_trajectory(frames, scfg, d.initial_step)
        sb = C.batch_size(cfg, s)[0]
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
