"""The trained surrogate as a user holds it: load it from wherever it lives, roll it out from new
initial conditions in physical units, ask what it is.

    from ups import Surrogate
    s = Surrogate.load("runs/NAME")          # a run folder, a registry family, an artifact; s3://… too
    u = s.rollout(u0, steps=31)              # u0: (batch, frames_in, *grid[, channels]), physical units
    s.meta                                   # grid, frames in, dt, channels, corrector, metrics, digests

Every weight file is verified against the digest recorded for it before a network sees it, and the
corrector is the one the run selected on val. Evaluation runs the same forecast (`LatentStack.forecast`)
on the same normalised inputs, so what `evaluate` scores is what `rollout` returns, bit for bit on
one machine. Importing this module does not import Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ups import artifact
from ups.artifact import Bundle, LoadError
from ups.eval.evaluate import build_surrogate
from ups.eval.rollout import LatentStack

__all__ = ["LoadError", "Surrogate", "SurrogateInputError", "SurrogateMeta"]


class SurrogateInputError(ValueError):
    """Initial conditions that do not fit the model (grid, channels, frames, NaN); one line."""


@dataclass(frozen=True)
class SurrogateMeta:
    """What a user needs to know to feed the model and to trust it."""

    source: str  # where it was loaded from (credentials redacted)
    kind: str  # run | champion | artifact
    tasks: tuple[str, ...]  # one per training file; `rollout(task=...)` picks the normaliser and Δt
    grid: tuple[int, ...]  # spatial shape of a frame
    channels: int
    frames_in: int  # input frames a rollout needs (the last one is the state it starts from)
    frames: int  # frames per trajectory it was trained on (the default rollout is frames - frames_in)
    dt: tuple[float, ...]  # per task, in the file's time units
    lengths: tuple[float, ...]  # domain extent per spatial axis
    corrector: str  # none | diffusion | consistency: what `rollout` applies
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> nRMSE of model, floors, rivals
    digests: dict[str, Any] = field(default_factory=dict)  # config, data and per-stage weights sha256

    @property
    def default_steps(self) -> int:
        return self.frames - self.frames_in


class Surrogate:
    """A trained latent surrogate: encoder, operator, corrector and decoder, with their normaliser."""

    def __init__(self, bundle: Bundle, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cfg, self.data = bundle.cfg, bundle.meta
        self.stack: LatentStack = build_surrogate(bundle.cfg, bundle.meta, bundle.exports, self.device)
        m = bundle.meta
        self.meta = SurrogateMeta(
            source=bundle.source, kind=bundle.kind, tasks=tuple(m.tasks), grid=m.spatial_shape, channels=m.channels,
            frames_in=m.initial_step, frames=m.frames, dt=tuple(float(d) for d in m.dts),
            lengths=tuple(float(v) for v in m.lengths),
            corrector=self.stack.corrector.kind if self.stack.corrector else "none",
            metrics=bundle.metrics, digests=bundle.digests,
        )  # fmt: skip

    @classmethod
    def load(cls, source: str | os.PathLike[str], *, device: str | torch.device | None = None) -> Surrogate:
        """From a run folder (`{storage}/{name}`), a registry family (`{storage}/registry/{family}`: its
        champion) or an exported artifact folder; local paths, `file://`, `s3://` or `gs://`.
        Raises `LoadError` (one line) for anything missing, unfinished or altered."""
        return cls(artifact.load_bundle(os.fspath(source)), device=device)

    def task_index(self, task: int | str) -> int:
        if isinstance(task, str):
            if task not in self.meta.tasks:
                raise SurrogateInputError(f"task {task!r} is not one of the model's tasks {list(self.meta.tasks)}")
            return self.meta.tasks.index(task)
        if not 0 <= int(task) < len(self.meta.tasks):
            raise SurrogateInputError(f"task {task} is out of range: the model has {len(self.meta.tasks)} task(s)")
        return int(task)

    def check_input(self, u0: Any) -> np.ndarray:
        """`u0` as float32 (B, T, *grid, C), or SurrogateInputError naming what does not fit."""
        u = u0.detach().cpu().numpy() if isinstance(u0, torch.Tensor) else np.asarray(u0)
        if not np.issubdtype(u.dtype, np.number) or np.issubdtype(u.dtype, np.complexfloating):
            raise SurrogateInputError(f"u0 must be real numbers, got dtype {u.dtype}")
        m = self.meta
        want = f"(batch, frames >= {m.frames_in}, {', '.join(map(str, m.grid))}, {m.channels})"
        if u.ndim == len(m.grid) + 2 and m.channels == 1:
            u = u[..., None]  # a single channel may come without its axis
        if u.ndim != len(m.grid) + 3:
            raise SurrogateInputError(f"u0 has shape {u.shape}; the model takes {want}")
        if tuple(u.shape[2:-1]) != m.grid:
            raise SurrogateInputError(f"u0's grid is {tuple(u.shape[2:-1])}, the model's is {m.grid}; shape {want}")
        if u.shape[-1] != m.channels:
            raise SurrogateInputError(f"u0 has {u.shape[-1]} channel(s), the model {m.channels}; shape {want}")
        if u.shape[1] < m.frames_in:
            raise SurrogateInputError(f"u0 has {u.shape[1]} frame(s), the model needs {m.frames_in}; shape {want}")
        if u.shape[0] == 0:
            raise SurrogateInputError("u0 holds no trajectories (batch 0)")
        u = u.astype(np.float32, copy=False)
        if not np.isfinite(u).all():
            bad = int(np.argwhere(~np.isfinite(u).reshape(len(u), -1).all(1))[0, 0])
            raise SurrogateInputError(f"u0 contains NaN/Inf (trajectory {bad})")
        return u

    @torch.no_grad()
    def rollout(
        self,
        u0: Any,
        steps: int | None = None,
        *,
        task: int | str = 0,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Predict `steps` frames after the last frame of `u0` (default: as many as it was trained on).

        `u0`: (batch, frames, *grid[, channels]) in physical units, numpy or torch, with at least
        `meta.frames_in` frames. Returns float32 numpy (batch, steps, *grid, channels) in physical
        units, computed `batch_size` trajectories at a time (default `eval.batch_size`, the batches
        evaluation uses, so the numbers are the same)."""
        u = self.check_input(u0)
        steps = self.meta.default_steps if steps is None else int(steps)
        if steps < 1:
            raise SurrogateInputError(f"steps must be >= 1 (got {steps})")
        ti = self.task_index(task)
        norm = self.data.normalizers[ti]
        window = norm.normalize(u[:, -self.meta.frames_in :]).astype(np.float32)  # as views.load_task does
        size = batch_size or self.cfg.eval.batch_size
        out = np.empty((len(u), steps, *u.shape[2:]), np.float32)
        for i in range(0, len(u), size):
            chunk = torch.from_numpy(window[i : i + size]).to(self.device)
            tid = torch.full((len(chunk),), ti, dtype=torch.long, device=self.device)
            out[i : i + size] = self.stack.forecast(chunk, steps, tid, generator).cpu().numpy()
        return out

    def __repr__(self) -> str:
        m = self.meta
        return (f"Surrogate({m.kind} {m.source!r}: grid {m.grid}, {m.channels} channel(s), {m.frames_in} frame(s) in, "
                f"corrector {m.corrector}, device {self.device})")  # fmt: skip
