"""What training sees of a PDEBench file: a strided view, split by PDEBench's protocol, normalised
with statistics of the training split only.

Splits: the first `test_fraction` of samples are the test set (PDEBench); the next `val_fraction`
of the remainder are validation; the rest train. Positions are normalised to [0, 1) per axis from
the file's own coordinates, so models never assume a domain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ups.data import files, pdebench
from ups.schema import ConfigError, DataConfig

SPLITS = ("train", "val", "test")


@dataclass
class Normalizer:
    """Per-channel z-score, fitted on the training split only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, u: np.ndarray, enabled: bool = True) -> Normalizer:
        c = u.shape[-1]
        if not enabled:
            return cls(np.zeros(c, np.float32), np.ones(c, np.float32))
        flat = u.reshape(-1, c).astype(np.float64)
        std = flat.std(0)
        return cls(flat.mean(0).astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def normalize(self, u: np.ndarray) -> np.ndarray:
        return (u - self.mean) / self.std

    def denormalize(self, u: np.ndarray) -> np.ndarray:
        return u * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def split_indices(n: int, test_fraction: float, val_fraction: float) -> dict[str, np.ndarray]:
    n_test = int(round(n * test_fraction))
    n_val = int(round((n - n_test) * val_fraction))
    idx = np.arange(n)
    return {"test": idx[:n_test], "val": idx[n_test : n_test + n_val], "train": idx[n_test + n_val :]}


def grid_positions(coords: dict[str, np.ndarray], spatial_shape: tuple[int, ...]) -> tuple[np.ndarray, list[float]]:
    """Positions in [0, 1)^d on the grid, and the domain length along each axis.

    Coordinates are cell centres (PDEBench), so the domain is [c0 - dx/2, c_end + dx/2).
    """
    axes, lengths = [], []
    for name, n in zip("xyz", spatial_shape):
        c = np.asarray(coords[name], np.float64)
        dx = (c[-1] - c[0]) / (n - 1) if n > 1 else 1.0
        length = c[-1] - c[0] + dx
        axes.append((c - (c[0] - dx / 2)) / length)
        lengths.append(float(length))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack(mesh, axis=-1).astype(np.float32), lengths


class FieldReader:
    """A file's normalised strided view, read from the file on demand: what `Task.u` is when
    `data.mode` streams. Indexing reads only the rows asked for (in runs of consecutive rows, at
    most `chunk` at a time), so memory holds what a caller asks for, never the file; it pickles
    as a few numbers, so it travels to Ray tasks that read next to the data."""

    def __init__(self, path: str, shape: tuple[int, ...], t_stride: int, x_stride: int, normalizer: Normalizer,
                 chunk: int) -> None:  # fmt: skip
        self.path, self.shape, self.normalizer, self.chunk = path, tuple(shape), normalizer, chunk
        self.t_stride, self.x_stride = t_stride, x_stride
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), normalised exactly as the in-memory view is."""
        return self.normalizer.normalize(self.raw(start, stop)).astype(np.float32)

    def raw(self, start: int, stop: int) -> np.ndarray:
        u, _ = pdebench.read(self.path, samples=slice(start, stop), t=slice(None, None, self.t_stride),
                             space=slice(None, None, self.x_stride))  # fmt: skip
        return u

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        ids = np.arange(len(self))[rows]
        flat = np.atleast_1d(ids).ravel()
        out = np.empty((len(flat), *self.shape[1:]), np.float32)
        i = 0
        while i < len(flat):  # runs of consecutive rows, each read in chunks
            j = i + 1
            while j < len(flat) and flat[j] == flat[j - 1] + 1 and j - i < self.chunk:
                j += 1
            out[i:j] = self.read(int(flat[i]), int(flat[j - 1]) + 1)
            i = j
        picked = out.reshape(*np.shape(ids), *self.shape[1:])
        return picked[(slice(None),) * np.ndim(ids) + rest] if rest else picked


def fit_streaming(reader: FieldReader, rows: np.ndarray, enabled: bool = True) -> Normalizer:
    """`Normalizer.fit` over `rows` read `reader.chunk` at a time: per-chunk means and squared
    deviations in float64, merged in order (Chan et al.), so memory holds one chunk."""
    c = reader.shape[-1]
    if not enabled or len(rows) == 0:
        return Normalizer.fit(np.zeros((1, c), np.float32), enabled=False)
    count, mean, m2 = 0, np.zeros(c), np.zeros(c)
    for lo in range(int(rows[0]), int(rows[-1]) + 1, reader.chunk):
        block = reader.raw(lo, min(lo + reader.chunk, int(rows[-1]) + 1)).reshape(-1, c).astype(np.float64)
        n_b, mean_b = len(block), block.mean(0)
        m2_b = ((block - mean_b) ** 2).sum(0)
        delta, total = mean_b - mean, count + n_b
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    std = np.sqrt(m2 / count)
    return Normalizer(mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))


def streams(cfg: DataConfig) -> bool:
    """Whether this run streams its data (`data.mode`, `auto` decided on the files' sizes)."""
    if cfg.mode != "auto":
        return cfg.mode == "stream"
    total = 0
    for path in cfg.paths:
        info = pdebench.inspect(path)
        n = min(info.n_samples, cfg.max_samples or info.n_samples)
        t = len(range(0, info.n_times, cfg.t_stride))
        space = [len(range(0, s, cfg.x_stride)) for s in info.spatial_shape]
        total += n * t * int(np.prod(space)) * len(info.channels) * 4
    return total > cfg.memory_budget_mb * 2**20


@dataclass
class Task:
    """One dataset (file) as the pipeline uses it; `u` holds the normalised strided view, in memory
    or (streaming) as a reader of the file."""

    name: str
    path: str
    u: np.ndarray | FieldReader  # (N, T, X[, Y], C), normalised
    t: np.ndarray  # (T,) times of the view
    grid: np.ndarray  # (X[, Y], d) in [0, 1)
    lengths: list[float]
    normalizer: Normalizer
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def dt(self) -> float:
        return float(self.t[1] - self.t[0])


def check_file(path: str, cfg: DataConfig, source: str = "config") -> pdebench.FileInfo:
    """Everything about a data file that can be wrong, found before any Ray resource is used."""
    try:
        if not files.is_remote(path) and not Path(path).exists():  # remote: `inspect` says it in one line
            raise ConfigError(f"{source}: data.path: file not found: {path}")
        info = pdebench.inspect(path)
        pdebench.scan_values(path, min(info.n_samples, cfg.max_samples or info.n_samples))
    except pdebench.PDEBenchFormatError as e:
        raise ConfigError(f"data.path: {e}") from None
    n_t = len(range(0, info.n_times, cfg.t_stride))
    if n_t <= cfg.initial_step:
        raise ConfigError(
            f"{source}: data.initial_step: {cfg.initial_step} leaves no frame to predict in {path} "
            f"({n_t} frames after t_stride={cfg.t_stride})"
        )
    return info


def load_task(path: str, cfg: DataConfig, stream: bool = False) -> Task:
    info = pdebench.inspect(path)
    n = min(info.n_samples, cfg.max_samples or info.n_samples)
    if stream:
        return _stream_task(path, cfg, info, n)
    u, coords = pdebench.read(
        path, samples=slice(0, n), t=slice(None, None, cfg.t_stride), space=slice(None, None, cfg.x_stride)
    )
    splits = split_indices(n, cfg.test_fraction, cfg.val_fraction)
    if len(splits["train"]) == 0:
        raise ConfigError(f"{path}: no training samples left after test/val splits of {n} samples")
    norm = Normalizer.fit(u[splits["train"]], cfg.normalize)
    grid, lengths = grid_positions(coords, u.shape[2:-1])
    return Task(
        name=files.stem(path),
        path=path,
        u=norm.normalize(u).astype(np.float32),
        t=coords["t"],
        grid=grid,
        lengths=lengths,
        normalizer=norm,
        splits=splits,
        attrs=info.attrs,
    )


def _stream_task(path: str, cfg: DataConfig, info: pdebench.FileInfo, n: int) -> Task:
    """The metadata of a file and a reader of it; statistics and digest from one chunked pass."""
    first, coords = pdebench.read(path, samples=slice(0, 1), t=slice(None, None, cfg.t_stride),
                                  space=slice(None, None, cfg.x_stride))  # fmt: skip
    splits = split_indices(n, cfg.test_fraction, cfg.val_fraction)
    if len(splits["train"]) == 0:
        raise ConfigError(f"{path}: no training samples left after test/val splits of {n} samples")
    identity = Normalizer.fit(first, enabled=False)
    reader = FieldReader(path, (n, *first.shape[1:]), cfg.t_stride, cfg.x_stride, identity, cfg.chunk_trajectories)
    reader.normalizer = fit_streaming(reader, splits["train"], cfg.normalize)
    grid, lengths = grid_positions(coords, first.shape[2:-1])
    return Task(name=files.stem(path), path=path, u=reader, t=coords["t"], grid=grid, lengths=lengths,
                normalizer=reader.normalizer, splits=splits, attrs=info.attrs)  # fmt: skip


def load_tasks(cfg: DataConfig, stream: bool | None = None) -> list[Task]:
    """Every file of `data.path` as a task; streamed (readers, no arrays) when `stream`, which
    defaults to what `data.mode` decides."""
    stream = streams(cfg) if stream is None else stream
    tasks = [load_task(p, cfg, stream) for p in cfg.paths]
    ref = tasks[0]
    for t in tasks[1:]:
        if t.u.shape[1:] != ref.u.shape[1:]:
            raise ConfigError(
                f"data.path: {t.path} has frames x grid x channels {t.u.shape[1:]}, "
                f"but {ref.path} has {ref.u.shape[1:]}; multi-task runs need one shape"
            )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.path: two files share a name ({names}); task names come from file names")
    return tasks


def data_digest(tasks: list[Task]) -> str:
    """Identity of what training reads: the normalised views and their splits."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(t.name.encode())
        if isinstance(t.u, FieldReader):  # the same bytes, a chunk at a time
            for lo in range(0, len(t.u), t.u.chunk):
                h.update(np.ascontiguousarray(t.u.read(lo, min(lo + t.u.chunk, len(t.u)))).tobytes())
        else:
            h.update(np.ascontiguousarray(t.u).tobytes())
        for s in SPLITS:
            h.update(t.splits[s].tobytes())
    return h.hexdigest()


@dataclass
class DataMeta:
    """What models and stages need to know about the data, small enough to ship to every worker."""

    tasks: list[str]
    dts: list[float]
    grid: np.ndarray  # (X[, Y], d) positions in [0, 1)
    lengths: list[float]
    normalizers: list[Normalizer]
    frames: int
    initial_step: int

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.grid.shape[:-1])

    @property
    def channels(self) -> int:
        return len(self.normalizers[0].mean)

    @classmethod
    def from_tasks(cls, tasks: list[Task], initial_step: int) -> DataMeta:
        return cls(
            tasks=[t.name for t in tasks],
            dts=[t.dt for t in tasks],
            grid=tasks[0].grid,
            lengths=tasks[0].lengths,
            normalizers=[t.normalizer for t in tasks],
            frames=tasks[0].u.shape[1],
            initial_step=initial_step,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "dts": self.dts,
            "grid": self.grid.tolist(),
            "lengths": self.lengths,
            "normalizers": [n.to_dict() for n in self.normalizers],
            "frames": self.frames,
            "initial_step": self.initial_step,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataMeta:
        return cls(
            tasks=d["tasks"],
            dts=d["dts"],
            grid=np.asarray(d["grid"], np.float32),
            lengths=d["lengths"],
            normalizers=[Normalizer.from_dict(n) for n in d["normalizers"]],
            frames=d["frames"],
            initial_step=d["initial_step"],
        )
