"""Wall-clock of two trained stacks, timed in turns in one process (what the wall_clock gate compares).

A one-off measurement of a few milliseconds per side is noise; here candidate and champion run
in turns, each repeat long enough to time, and the medians are compared. `time_rollouts` times
inference as evaluation runs it; the Ray task that runs it is ups/sweep/decision.py's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ups.data.views import Task
    from ups.eval.rollout import Surrogate

Side = Literal["candidate", "champion"]


def time_interleaved(
    candidate: Callable[[], object],
    champion: Callable[[], object],
    *,
    repeats: int = 7,
    min_repeat_s: float = 0.05,
    warmup: int = 2,
    per: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Median seconds per item of two zero-argument calls, timed in turns: cand, champ, cand, ...

    A one-off measurement of a few milliseconds per side is noise: a load spike on one side flips
    a ratio. Here both sides share the process and the moment, each repeat calls its side until
    `min_repeat_s` has passed (so even a fast call is timed over a measurable span), and the
    median of `repeats` ignores the spikes. The first `warmup` rounds are run the same way and
    discarded: a fresh process runs its first calls far slower (lazy init, allocator, kernels).
    `per` is the items (trajectories) one call covers, so times are per item.
    """
    if repeats < 1 or warmup < 0 or min_repeat_s <= 0 or per < 1:
        raise ValueError(
            f"repeats >= 1, warmup >= 0, min_repeat_s > 0 and per >= 1 needed "
            f"(got {repeats}, {warmup}, {min_repeat_s}, {per})"
        )
    fns: dict[Side, Callable[[], object]] = {"candidate": candidate, "champion": champion}
    samples: dict[Side, list[float]] = {"candidate": [], "champion": []}
    calls: dict[Side, list[int]] = {"candidate": [], "champion": []}
    for round_ in range(warmup + repeats):
        for side, fn in fns.items():
            n, t0 = 0, clock()
            while True:
                fn()
                n += 1
                elapsed = clock() - t0
                if elapsed >= min_repeat_s or n >= 1 << 20:
                    break
            if round_ >= warmup:
                samples[side].append(elapsed / (n * per))
                calls[side].append(n)
    cand, champ = statistics.median(samples["candidate"]), statistics.median(samples["champion"])
    return {
        "candidate_s": cand,
        "champion_s": champ,
        "ratio": cand / champ if champ > 0 else math.inf,
        "repeats": repeats,
        "warmup": warmup,
        "min_repeat_s": min_repeat_s,
        "per": per,
        "calls": calls,
        "samples_s": samples,
    }


def rollout_call(
    model: Surrogate, tasks: list[Task], samples: int, horizon: int, split: str = "val"
) -> tuple[Callable[[], None], int]:
    """One inference pass as evaluation runs it (encode the last given frame, roll out, decode) on
    the first `samples` trajectories of `split`; returns the call and the trajectories it covers."""
    import numpy as np
    import torch

    init = model.meta.initial_step
    steps = min(horizon, model.meta.frames - init)
    if steps < 1:
        raise ValueError(f"no frame to predict after initial_step={init} of {model.meta.frames}")
    frames: list[np.ndarray] = []
    ids: list[int] = []
    for ti, task in enumerate(tasks):
        rows = task.splits[split][: samples - len(ids)]
        if len(rows):
            frames.append(task.u[rows, init - 1])
            ids += [ti] * len(rows)
    if not ids:
        raise ValueError(f"no {split} trajectories to time inference on")
    u0 = torch.as_tensor(np.concatenate(frames)).to(model.device)
    tid = torch.tensor(ids, dtype=torch.long, device=model.device)

    def call() -> None:
        gen = torch.Generator().manual_seed(0)
        model.predict_fields(model.encode(u0), steps, tid, gen).cpu()  # .cpu() waits for the device

    return call, len(ids)


def time_rollouts(
    candidate: Surrogate, champion: Surrogate, tasks: list[Task], samples: int, horizon: int, **kw: Any
) -> dict[str, Any]:
    """Inference seconds per trajectory of both stacks on the same val trajectories, timed in turns.

    On a CPU, torch runs on one thread while timing: intra-op threads that wait for each other on
    a loaded machine made identical stacks time 0.4x to 1.2x apart; one thread keeps them ~1x.
    """
    import torch

    cand, n = rollout_call(candidate, tasks, samples, horizon)
    champ, _ = rollout_call(champion, tasks, samples, horizon)
    steps = min(horizon, candidate.meta.frames - candidate.meta.initial_step)
    threads = torch.get_num_threads()
    cpu = candidate.device.type == "cpu"
    if cpu:
        torch.set_num_threads(1)
    try:
        timing = time_interleaved(cand, champ, per=n, **kw)
    finally:
        torch.set_num_threads(threads)
    return {
        **timing,
        "trajectories": n,
        "horizon": steps,
        "device": str(candidate.device),
        "threads": 1 if cpu else threads,
    }
