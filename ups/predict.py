"""Predict every trajectory of a PDEBench file with a trained surrogate, in bounded memory.

    python -m ray_jobs.predict --model runs/NAME --data IN.h5 --out OUT.h5

`plan` checks everything before Ray starts (the model's digests, the file's grid, Δt, domain,
channels and input frames), so a bad input is one line and nothing is written. `run` then cuts the
file into chunks of trajectories (row ranges) and predicts them on Ray Data: an actor pool whose
actors each hold one Surrogate and read their rows from the file themselves, so the driver ships
row ranges, never arrays. The driver consumes the chunks in order and writes each into an HDF5
dataset created at its full shape, so memory holds a few chunks whatever the file's size.
`ray=False` runs the same chunks in this process.

The output is PDEBench's single-file layout (`tensor`, or one dataset per CFD variable for a
several-channel model) on the coordinates of the strided input: the input frames copied, the
predicted frames after them, a `t-coordinate` of T+1 entries extended by Δt past the file's end.
It is built under a temporary name beside `out` and moved into place when complete, so an
interrupted prediction never leaves a half-written file there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ups.artifact import Bundle
from ups.config import ConfigError
from ups.data import files, pdebench, views
from ups.schema import local_path
from ups.storage import redact

_AXES = ("x", "y", "z")
_COORD_KEYS = {"x": "x-coordinate", "y": "y-coordinate", "z": "z-coordinate", "t": "t-coordinate"}
RTOL = 1e-3  # Δt and domain lengths match the model's to this (files store float32 coordinates)


@dataclass(frozen=True)
class Plan:
    """What a prediction reads and writes, checked."""

    model: str  # the model's source, as shown
    data: str  # the input as readers open it: an absolute local path or an object-store URI
    out: str  # absolute local path of the output file
    task: int  # the model's task whose normaliser and Δt apply
    rows: int  # trajectories
    frames_in: int
    steps: int
    x_stride: int
    t_stride: int
    grid: tuple[int, ...]
    names: tuple[str, ...]  # output datasets: ("tensor",), or the CFD variables of a several-channel file
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # x[, y, z] strided; t: frames + 1 entries
    attrs: dict[str, Any] = field(default_factory=dict)
    chunk: int = 32

    @property
    def frames(self) -> int:
        return self.frames_in + self.steps

    @property
    def tmp(self) -> str:
        """The file being written: one fixed name per output, so a rerun removes an interrupted one's."""
        folder, name = os.path.split(self.out)
        return os.path.join(folder, f".{name}.partial")

    def chunks(self) -> list[dict[str, int]]:
        return [{"start": a, "stop": min(a + self.chunk, self.rows)} for a in range(0, self.rows, self.chunk)]

    def read_inputs(self, start: int, stop: int) -> np.ndarray:
        """The first `frames_in` strided frames of trajectories [start, stop), float32 (n, T, *grid, C)."""
        u, _ = pdebench.read(self.data, samples=slice(start, stop), t=slice(0, self.frames_in * self.t_stride,
                             self.t_stride), space=slice(None, None, self.x_stride))  # fmt: skip
        return u


@dataclass(frozen=True)
class Options:
    """How to run it: on Ray (an actor pool) or in this process."""

    ray: bool = True
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpu: bool = False


# --- checking ------------------------------------------------------------------------------------


def plan(
    bundle: Bundle, data: str, out: str, *, steps: int | None = None, task: str | None = None, chunk: int = 32,
    overwrite: bool = False,
) -> Plan:  # fmt: skip
    """Check `data` against the model and `out` against the filesystem; ConfigError (one line) on
    anything that does not fit. Reads the file's metadata and its input frames, writes nothing."""
    if chunk < 1:
        raise ConfigError(f"--chunk must be >= 1 (got {chunk})")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1 (got {steps})")
    path, shown = _data_path(data), redact(data)
    target = _out_path(out, path, overwrite)
    try:
        info = pdebench.inspect(path)
    except pdebench.PDEBenchFormatError as e:
        raise ConfigError(f"--data: {e}") from None
    if info.n_samples == 0:
        raise ConfigError(f"--data {shown}: holds no trajectories")
    meta, dcfg = bundle.meta, bundle.cfg.data
    ti = _task(bundle, task, path)
    if len(info.channels) != meta.channels:
        raise ConfigError(f"--data {shown}: {len(info.channels)} channel(s) {list(info.channels)}, "
                          f"the model takes {meta.channels}")  # fmt: skip
    names = _output_names(info, shown)
    x_stride = _x_stride(info.spatial_shape, meta.spatial_shape, dcfg.x_stride, shown)
    _, coords = pdebench.read(path, samples=slice(0, 0), space=slice(None, None, x_stride))
    t_stride, t = _t_stride(coords["t"], float(meta.dts[ti]), dcfg.t_stride, shown)
    _, lengths = views.grid_positions(coords, meta.spatial_shape)
    if not np.allclose(lengths, meta.lengths, rtol=RTOL, atol=0):
        raise ConfigError(f"--data {shown}: domain lengths {_fmt(lengths)}, the model was trained on "
                          f"{_fmt(meta.lengths)}")  # fmt: skip
    frames_in = meta.initial_step
    if len(t) < frames_in:
        raise ConfigError(f"--data {shown}: {len(t)} frame(s) (t_stride {t_stride}), the model needs {frames_in}")
    if steps is None:
        steps = len(t) - frames_in
        if steps < 1:
            raise ConfigError(f"--data {shown}: no frames after the model's {frames_in} input frame(s); "
                              "pass --steps to predict past the file's end")  # fmt: skip
    frames = frames_in + steps
    t_out = np.concatenate([t, t[-1] + (t[1] - t[0]) * np.arange(1, frames + 2 - len(t))])[: frames + 1]
    p = Plan(model=bundle.source, data=path, out=target, task=ti, rows=info.n_samples, frames_in=frames_in,
             steps=steps, x_stride=x_stride, t_stride=t_stride, grid=meta.spatial_shape, names=names,
             coords={**{a: coords[a] for a in _AXES if a in coords}, "t": t_out}, chunk=chunk)  # fmt: skip
    _scan_inputs(p, shown)
    return _with_attrs(p, bundle, info)


def _data_path(data: str) -> str:
    path = local_path(data)
    if files.scheme(path) is not None and not files.is_remote(path):
        raise ConfigError(f"--data {redact(data)}: unknown scheme (a local path, file://, s3:// or gs://)")
    if redact(path) != path:
        raise ConfigError(f"--data {redact(data)}: holds credentials; give them through the environment")
    if files.is_remote(path):
        return path
    if not os.path.exists(path):
        raise ConfigError(f"--data {data}: file not found")
    return os.path.abspath(path)  # Ray's actors may not share this process's working directory


def _out_path(out: str, data: str, overwrite: bool) -> str:
    path = local_path(out)
    if "://" in path:
        raise ConfigError(f"--out {redact(out)}: a local file (write it here, then copy it to the bucket)")
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not path.endswith((".h5", ".hdf5")):
        raise ConfigError(f"--out {out}: name an HDF5 file (.h5 or .hdf5)")
    if not os.path.isdir(folder):
        raise ConfigError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {out}: folder {folder} is not writable")
    if os.path.isdir(path):
        raise ConfigError(f"--out {out}: is a folder")
    if os.path.exists(path):
        if not files.is_remote(data) and os.path.samefile(path, data):
            raise ConfigError(f"--out {out}: is the --data file")
        if not overwrite:
            raise ConfigError(f"--out {out}: a file is already there; pass --overwrite to replace it")
    return path


def _task(bundle: Bundle, task: str | None, path: str) -> int:
    tasks = bundle.meta.tasks
    if task is not None:
        if task not in tasks:
            raise ConfigError(f"--task {task!r}: not one of the model's tasks {tasks}")
        return tasks.index(task)
    if files.stem(path) in tasks:
        return tasks.index(files.stem(path))
    if len(tasks) == 1:
        return 0
    raise ConfigError(f"--task: the model has tasks {tasks} and the file's name is none of them; name one")


def _output_names(info: pdebench.FileInfo, shown: str) -> tuple[str, ...]:
    if len(info.channels) == 1:
        return ("tensor",)
    if info.layout == "variables":
        return info.channels
    raise ConfigError(f"--data {shown}: a {len(info.channels)}-channel {info.layout} file; predictions are "
                      "written as PDEBench's single-file layouts (tensor: one channel; density, Vx, ...: CFD "
                      "variables)")  # fmt: skip


def _x_stride(shape: tuple[int, ...], grid: tuple[int, ...], stride: int, shown: str) -> int:
    """The model's x_stride when the file is at the resolution it was trained from; 1 when the file
    is already at the model's grid (a strided copy, or a prediction)."""
    for s in dict.fromkeys((stride, 1)):
        if tuple(len(range(0, n, s)) for n in shape) == grid:
            return s
    also = f", or a file that x_stride {stride} takes to it" if stride > 1 else ""
    raise ConfigError(f"--data {shown}: file of the wrong grid: {shape}; the model takes {grid}{also}")


def _t_stride(t: np.ndarray, dt: float, stride: int, shown: str) -> tuple[int, np.ndarray]:
    """The stride whose frames are the model's Δt apart (the model's t_stride, or 1), and those times."""
    for s in dict.fromkeys((stride, 1)):
        ts = t[::s]
        if len(ts) >= 2 and math.isclose(ts[1] - ts[0], dt, rel_tol=RTOL):
            return s, ts
    if len(t) < 2:
        raise ConfigError(f"--data {shown}: one frame; its Δt cannot be told (the model's is {dt:.6g})")
    raise ConfigError(f"--data {shown}: frames {t[1] - t[0]:.6g} apart; the model steps Δt {dt:.6g}"
                      + (f" (t_stride {stride} of {dt / stride:.6g})" if stride > 1 else ""))  # fmt: skip


def _scan_inputs(p: Plan, shown: str) -> None:
    """The input frames must be finite: read now, chunk by chunk (a fraction of the file), so a bad
    trajectory is one line before Ray rather than a failed actor halfway through."""
    for c in p.chunks():
        try:
            p.read_inputs(c["start"], c["stop"])
        except pdebench.PDEBenchFormatError as e:
            raise ConfigError(
                f"--data: {e} in the input frames of trajectories {c['start']}..{c['stop'] - 1}"
            ) from None


def _with_attrs(p: Plan, bundle: Bundle, info: pdebench.FileInfo) -> Plan:
    """The input file's scalar attributes (PDE parameters) and what made the prediction."""
    attrs = {k: v for k, v in info.attrs.items() if isinstance(v, (str, int, float, bool))}
    attrs["ups_predict"] = json.dumps({
        "model": bundle.source, "kind": bundle.kind, "weights_sha256": (bundle.digests or {}).get("weights"),
        "corrector": bundle.cfg.eval.corrector, "data": redact(p.data), "task": bundle.meta.tasks[p.task],
        "frames_in": p.frames_in, "steps": p.steps, "x_stride": p.x_stride, "t_stride": p.t_stride,
    })  # fmt: skip
    return dataclasses.replace(p, attrs=attrs)


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def check_resources(opts: Options) -> None:
    """An embedded Ray (or this process) has only this machine's GPUs: refuse what would wait forever."""
    if not opts.gpu or (opts.ray and os.environ.get("RAY_ADDRESS")):
        return
    import torch

    need, have = (opts.actors if opts.ray else 1), torch.cuda.device_count()
    if need > have:
        raise ConfigError(f"--gpu: {need} actor(s) x 1 GPU, this machine has {have} (--no-gpu predicts on CPUs)")


def describe(p: Plan, opts: Options) -> list[str]:
    """`--validate-only`'s lines."""
    how = (f"Ray Data, {opts.actors} actor(s) x {opts.cpus_per_actor:g} CPU" + (" + 1 GPU" if opts.gpu else "")
           if opts.ray else "in this process" + (" on the GPU" if opts.gpu else ""))  # fmt: skip
    return [
        f"model    {p.model}; task {p.task}, {p.frames_in} input frame(s)",
        f"data     {redact(p.data)}: {p.rows} trajectories, x_stride {p.x_stride}, t_stride {p.t_stride}, "
        f"grid {p.grid}",
        f"predicts {p.steps} frame(s) each, in chunks of {p.chunk}; {how}",
        f"writes   {p.out} ({', '.join(p.names)}: {p.rows} x {p.frames} frames)",
    ]


# --- predicting ----------------------------------------------------------------------------------


class Predictor:
    """One surrogate and the file it reads: Ray Data's callable class (one per actor, the model
    built once), or the in-process loop's. A batch is chunk descriptors; the answer is their rows'
    output frames: the input frames as read, then the predicted ones."""

    def __init__(self, bundle: Bundle, plan: Plan, device: str = "cpu") -> None:
        from ups.surrogate import Surrogate

        self.plan = plan
        self.surrogate = Surrogate(bundle, device=device)

    def predict(self, start: int, stop: int) -> np.ndarray:
        u0 = self.plan.read_inputs(start, stop)
        pred = self.surrogate.rollout(u0, self.plan.steps, task=self.plan.task)
        return np.concatenate([u0, pred], axis=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bounds = [(int(a), int(b)) for a, b in zip(batch["start"], batch["stop"])]
        return {
            "row": np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in bounds]),
            "u": np.concatenate([self.predict(a, b) for a, b in bounds]),
        }


class Writer:
    """The output file under its temporary name: datasets at their full shape, filled chunk by chunk."""

    def __init__(self, p: Plan) -> None:
        self.plan = p
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p.tmp)  # an interrupted run's
        self.file = h5py.File(p.tmp, "w")
        shape = (p.rows, p.frames, *p.grid)
        self.datasets = [self.file.create_dataset(name, shape=shape, dtype="f4") for name in p.names]
        for axis, c in p.coords.items():  # float32, as PDEBench's files and pdebench.write
            self.file.create_dataset(_COORD_KEYS[axis], data=np.asarray(c, np.float32))
        for k, v in p.attrs.items():
            self.file.attrs[k] = v
        self.done = np.zeros(p.rows, bool)

    def write(self, rows: np.ndarray, u: np.ndarray) -> None:
        """Rows in runs of consecutive indices, each one hyperslab per dataset."""
        rows = np.asarray(rows, np.int64)
        runs = np.flatnonzero(np.diff(rows) != 1) + 1
        for r, block in zip(np.split(rows, runs), np.split(u, runs)):
            if len(r):
                for c, ds in enumerate(self.datasets):
                    ds[r[0] : r[-1] + 1] = block[..., c]
        self.done[rows] = True

    def commit(self) -> None:
        if not self.done.all():
            raise RuntimeError(f"prediction incomplete: trajectory {int(np.argmin(self.done))} was never written")
        self.file.close()
        with open(self.plan.tmp, "rb+") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(self.plan.tmp, self.plan.out)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plan.tmp)


def run(p: Plan, bundle: Bundle, opts: Options, say: Callable[[str], None] = print,
        interval_s: float = 10.0) -> dict[str, Any]:  # fmt: skip
    """Predict and write `p.out`; returns what was done. On any error or interrupt (Ctrl-C, SIGTERM)
    the temporary file is removed and nothing is left under `p.out`."""
    how = f"on Ray ({opts.actors} actor(s))" if opts.ray else "in this process"
    say(f"[predict] {p.rows} trajectories of {redact(p.data)}: {p.frames_in} frame(s) in, {p.steps} predicted, "
        f"chunks of {p.chunk} {how}")  # fmt: skip
    t0 = time.monotonic()
    with _sigterm_raises():
        writer = Writer(p)
        try:
            batches = _on_ray(p, bundle, opts, say) if opts.ray else _in_process(p, bundle, opts)
            done, last = 0, t0
            for batch in batches:
                writer.write(batch["row"], batch["u"])
                done += len(batch["row"])
                now = time.monotonic()
                if now - last >= interval_s or done == p.rows:
                    last = now
                    say(_progress(done, p.rows, now - t0))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    seconds = time.monotonic() - t0
    say(f"[predict] wrote {p.out}: {p.rows} x {p.frames} frames in {seconds:.1f}s")
    return {"out": p.out, "trajectories": p.rows, "frames": p.frames, "steps": p.steps, "seconds": round(seconds, 3),
            "trajectories_per_s": round(p.rows / max(seconds, 1e-9), 3)}  # fmt: skip


def _progress(done: int, total: int, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / rate if rate > 0 else 0.0
    return (f"[predict] {done}/{total} trajectories ({100 * done / total:.0f}%)  {rate:.1f} trajectories/s  "
            f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s")  # fmt: skip


def _in_process(p: Plan, bundle: Bundle, opts: Options) -> Iterator[dict[str, np.ndarray]]:
    predictor = Predictor(bundle, p, device="cuda" if opts.gpu else "cpu")
    for c in p.chunks():
        yield predictor({"start": np.array([c["start"]]), "stop": np.array([c["stop"]])})


def ray_config(bundle: Bundle, opts: Options) -> Any:
    """The model's config with an embedded Ray sized for the actor pool: Ray Data's CPU budget is
    the pool's, and the logical CPUs hold it plus the driver."""
    cfg = bundle.cfg
    pool = opts.actors * opts.cpus_per_actor
    ray_cfg = cfg.ray.model_copy(update={"num_cpus": max(os.cpu_count() or 1, math.ceil(pool) + 1), "data_cpus": pool})
    return cfg.model_copy(update={"ray": ray_cfg})


def _on_ray(p: Plan, bundle: Bundle, opts: Options, say: Callable[[str], None]) -> Iterator[dict[str, np.ndarray]]:
    import ray.data

    from ups import ray_session

    ctx = ray.data.DataContext.get_current()
    limits = ctx.execution_options.resource_limits  # this driver's, put back after (a test session's Ray)
    ray_session.connect(ray_config(bundle, opts))
    logs = ray_session.logs_dir()
    say(f"Ray's logs: {logs}" if logs else "Ray's logs: on the cluster's head (`ray logs`, the dashboard)")
    chunks = p.chunks()
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(
        Predictor,
        fn_constructor_kwargs={"bundle": bundle, "plan": p, "device": "cuda" if opts.gpu else "cpu"},
        batch_size=1,  # one chunk per call: an actor's memory is one chunk's, whatever the file
        batch_format="numpy",
        concurrency=opts.actors,
        num_cpus=opts.cpus_per_actor,
        num_gpus=1 if opts.gpu else 0,
    )
    # In order (ray_session.configure_data sets preserve_order); the writer places rows by index anyway.
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    finally:
        ctx.execution_options.resource_limits = limits


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (`ray job stop`, a scheduler) unwinds like Ctrl-C, so the temporary file is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
