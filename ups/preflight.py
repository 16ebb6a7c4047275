"""Before any Ray resource: everything that can be wrong with a config and its data files.

Stage dependencies (from the registry), data files opened and checked, the encoder's patch size
against the grid, and whether the global batch fits every active stage at every world size.
Raises ConfigError (one line naming the file and key; the entry points exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ups import config as C
from ups.config import Config, ConfigError
from ups.data import views
from ups.data.pdebench import FileInfo
from ups.stages import registry


def preflight(loaded: C.LoadedConfig) -> dict[str, FileInfo | None]:
    """Check stage dependencies, data files and batch sizes; returns each data file's info
    (None: the file is missing and `data.generate` will create it)."""
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
    infos: dict[str, FileInfo | None] = {}
    for path in cfg.data.paths:
        if not os.path.exists(path) and cfg.data.generate is not None:
            infos[path] = None  # generated on first use
            continue
        infos[path] = views.check_file(path, cfg.data, where("data.path"))
    grid = grid_shape(cfg, infos)
    p = cfg.model.encoder.patch_size
    if any(n % p for n in grid):
        raise ConfigError(
            f"{where('model.encoder.patch_size')}: model.encoder.patch_size={p} does not divide "
            f"the grid {grid} (after data.x_stride={cfg.data.x_stride})"
        )
    check_batches(cfg, infos, where)
    return infos


def grid_shape(cfg: Config, infos: dict[str, FileInfo | None]) -> tuple[int, ...]:
    """The spatial grid after strides (from the first file, or what generation will write)."""
    info = next(iter(infos.values()))
    if info is not None:
        shape = info.spatial_shape
    else:
        assert cfg.data.generate is not None
        shape = (cfg.data.generate.resolution,)
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
    b = cfg.training.batch_size
    for s, stage in registry.stages().items():
        scfg = C.stage_config(cfg, s)
        if scfg.epochs == 0:
            continue
        per_traj = stage.samples_per_trajectory(frames, scfg, cfg.data.initial_step)
        for world in cfg.scaling.world_sizes:
            have = (n_train // world) * per_traj
            if have < b // world:
                raise ConfigError(
                    f"{where('training.batch_size')}: training.batch_size={b} needs {b // world} "
                    f"samples per worker, but stage {s} has {have} at world size {world}"
                )
