"""Gates and the registry of champions: what `run_fast_to_sota` did, done soundly.

- Like with like: the stored champion is re-evaluated next to the candidate, with the same code,
  data, split and horizon, so no proxy metric is ever compared with a full one and no stale
  number stands in for a measurement.
- A candidate is never compared with itself: identical weights are refused as such.
- A missing metric fails its gate; an empty registry promotes the first candidate and says so.
- Selection uses the val split only; the test split is reported for the champion, never used.
- Wall-clock is gated on candidate and champion timed in turns in one process (medians of repeats
  long enough to time), never on two one-off measurements of a few milliseconds each.
- The registry is per family (task + resolution + metric protocol), updated under a lock with
  whole-file writes, and keeps an append-only history of every decision with its reasons.

The policy (`decide`) takes its measurements as callables, so it runs without Ray: ups/sweep.py
binds them to Ray tasks, tests to fakes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ups.config import Config, GateConfig
from ups.data.views import DataMeta
from ups.storage import Storage

if TYPE_CHECKING:
    from ups.data.views import Task
    from ups.eval.rollout import Surrogate

REGISTRY = "registry"
WALL_CLOCK = "wall_clock"  # the ratio gate that uses the interleaved timing, not the eval's own number

Side = Literal["candidate", "champion"]


def family_of(cfg: Config, meta: DataMeta) -> str:
    """Champions compete only within a family: same tasks, grid, frames and protocol."""
    if cfg.gate.family:
        return cfg.gate.family
    grid = "x".join(str(n) for n in meta.spatial_shape)
    d = cfg.data
    name = (
        f"{'+'.join(meta.tasks)}-g{grid}-t{meta.frames}-in{d.initial_step}"
        f"-test{d.test_fraction:g}-val{d.val_fraction:g}"
    )
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def _number(v: Any) -> float | None:
    """The metric as a float, or None when it is missing (absent, not a number, a bool, NaN or inf)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


def gate(candidate: dict[str, Any], champion: dict[str, Any] | None, cfg: GateConfig) -> tuple[bool, list[str]]:
    """Improvement gate on nRMSE and ratio gates; returns (passed, reasons), one reason per gate."""
    if champion is None:
        if _number(candidate.get("nRMSE")) is None:
            return False, ["candidate has no nRMSE"]
        return True, [f"empty registry: the first candidate is promoted (nRMSE {candidate['nRMSE']:.4g})"]
    if candidate.get("protocol") != champion.get("protocol"):
        return False, [f"protocols differ: {candidate.get('protocol')} vs {champion.get('protocol')}"]
    passed, reasons = True, []
    c, b = _number(candidate.get("nRMSE")), _number(champion.get("nRMSE"))
    if c is None or b is None:
        passed = False
        reasons.append(f"nRMSE missing (candidate {candidate.get('nRMSE')}, champion {champion.get('nRMSE')})")
    else:
        need = b * (1 - cfg.min_improvement)
        if cfg.min_delta is not None:
            need = min(need, b - cfg.min_delta)
        ok = c <= need
        passed &= ok
        margin = f"{cfg.min_improvement:.0%}" + (f" and {cfg.min_delta:g}" if cfg.min_delta is not None else "")
        reasons.append(f"nRMSE {c:.4g} {'<=' if ok else '>'} {need:.4g} needed (champion {b:.4g}, margin {margin})")
    for key, ratio in cfg.ratios.items():
        c, b = _number(candidate.get(key)), _number(champion.get(key))
        if c is None or b is None:
            passed = False
            reasons.append(f"{key} missing (candidate {candidate.get(key)}, champion {champion.get(key)})")
            continue
        limit = b * ratio if abs(b) > 1e-12 else b + 1e-9
        ok = c <= limit
        passed &= ok
        reasons.append(f"{key} {c:.4g} {'<=' if ok else '>'} {ratio:g} x champion {b:.4g}")
    return passed, reasons


# ----------------------------------------------------------------------------------------------
# Wall-clock: both sides timed in turns in one process.


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


# ----------------------------------------------------------------------------------------------
# The policy: best trial -> small evaluation + gate -> full evaluation + gate -> promote.


def best_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed trial with the lowest val nRMSE (trials never see the test split)."""
    done = [t for t in trials if t["status"] == "completed" and "eval_nRMSE" in t["metrics"]]
    return min(done, key=lambda t: t["metrics"]["eval_nRMSE"]) if done else None


@dataclass
class Candidate:
    """The trial up for promotion: its run folder and that run's summary.json."""

    trial: str
    run: str  # URI of the trial's run folder (its stages/*/export.pt, config.yaml, summary.json)
    summary: dict[str, Any]
    metrics: dict[str, Any]  # the trial's own metrics, recorded when no full evaluation ran

    @property
    def weights_sha256(self) -> dict[str, Any]:
        return {n: r.get("weights_sha256") for n, r in self.summary["stages"].items() if r.get("status") == "completed"}


@dataclass
class Measures:
    """How a decision measures, bound to one champion: sweep.py runs these on Ray, tests pass fakes."""

    metrics: Callable[[Side, bool], dict[str, Any]]  # (side, small) -> val metrics; small: gate.small's protocol
    timing: Callable[[], dict[str, Any]] | None = None  # both sides timed in turns: time_interleaved's record


def scalars(d: dict[str, Any] | None) -> dict[str, Any]:
    """The metrics worth recording: numbers, strings and the protocol (not curves or arrays)."""
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str)) or k == "protocol"}


def _timed(metrics: dict[str, Any], timing: dict[str, Any] | None, side: Side) -> dict[str, Any]:
    """The metrics the gate sees: wall-clock from the interleaved timing (missing without one)."""
    return {**metrics, WALL_CLOCK: timing[f"{side}_s"] if timing else None}


def decide(
    cfg: GateConfig,
    registry: Registry,
    candidate: Candidate,
    measure: Callable[[dict[str, Any] | None], Measures],
    *,
    sweep: str,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Refuse self-comparison and a champion of other data, else gate small then full, and promote
    on a pass; all under the registry's lock, with the decision appended to its history.

    `measure(champion)` binds the measurements to the champion read under the lock (None on an
    empty registry). Returns passed, reasons, steps (per phase: metrics, timing, verdict), the
    history entry and the champion standing afterwards.
    """
    with registry.lock():
        champ = registry.champion()
        steps: dict[str, Any] = {}
        passed, reasons = True, []
        if champ and champ.get("weights_sha256") == candidate.weights_sha256:
            passed, reasons = False, [f"the candidate is the current champion (trial {champ['trial']}, same weights)"]
        elif champ and champ.get("data_sha256") != candidate.summary.get("data_sha256"):
            passed = False
            reasons = [
                f"the champion was trained on other data (digest {champ.get('data_sha256')})"
                f"; set gate.family to start a new family"
            ]
        else:
            m = measure(champ)
            timing = None
            for phase, small in (("small", True), ("full", False)):
                cand = m.metrics("candidate", small)
                champ_m = m.metrics("champion", small) if champ else None
                step: dict[str, Any] = {"candidate": scalars(cand), "champion": scalars(champ_m) if champ_m else None}
                if champ_m is not None and WALL_CLOCK in cfg.ratios:
                    if timing is None and m.timing is not None:
                        timing = m.timing()  # once per decision; both phases gate on the same measurement
                    cand, champ_m = _timed(cand, timing, "candidate"), _timed(champ_m, timing, "champion")
                    step["timing"] = timing
                ok, why = gate(cand, champ_m, cfg)
                steps[phase] = {**step, "passed": ok, "reasons": why}
                reasons += [f"{phase}: {r}" for r in why]
                say(f"gate {phase}: {'passed' if ok else 'failed'} — " + "; ".join(why))
                if not ok:
                    passed = False
                    break
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sweep": sweep,
            "trial": candidate.trial,
            "run": candidate.run,
            "config_digest": candidate.summary.get("config_digest"),
            "data_sha256": candidate.summary.get("data_sha256"),
            "weights_sha256": candidate.weights_sha256,
            "promoted": passed,
            "reasons": reasons,
            "metrics": steps.get("full", {}).get("candidate") or candidate.metrics,
            "champion_before": champ and {"trial": champ["trial"], "sweep": champ["sweep"]},
        }
        if passed:
            champ = registry.promote(Storage(candidate.run), candidate.summary["stages"], entry)
            say(f"promoted trial {candidate.trial} to champion of {registry.family}")
        else:
            say(f"not promoted: {'; '.join(reasons)}")
        registry.record(entry)
    return {"passed": passed, "reasons": reasons, "steps": steps, "entry": entry, "champion": champ}


# ----------------------------------------------------------------------------------------------
# The registry.


class Registry:
    """`{storage}/registry/{family}/`: champion.json, history.jsonl, champion/ (its weights)."""

    def __init__(self, storage: Storage, family: str):
        self.family = family
        self.dir = storage.sub(REGISTRY, family)

    def champion(self) -> dict[str, Any] | None:
        return self.dir.read_json("champion.json") if self.dir.exists("champion.json") else None

    def history(self) -> list[dict[str, Any]]:
        if not self.dir.exists("history.jsonl"):
            return []
        return [json.loads(line) for line in self.dir.read_text("history.jsonl").splitlines() if line.strip()]

    @contextlib.contextmanager
    def lock(self, timeout_s: float = 600) -> Iterator[None]:
        """An exclusive lock across processes: flock on a local disk, a lease file on object stores."""
        self.dir.makedirs()
        if self.dir.local:
            with open(self.dir.path(".lock"), "w") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
            return
        me, end = uuid.uuid4().hex, time.time() + timeout_s
        while True:  # best effort on object stores: a lease that expires if its holder dies
            if not self.dir.exists(".lease") or time.time() - self.dir.read_json(".lease")["at"] > timeout_s:
                self.dir.write_json({"holder": me, "at": time.time()}, ".lease")
                if self.dir.read_json(".lease")["holder"] == me:
                    break
            if time.time() > end:
                raise TimeoutError(f"registry {self.dir.uri} is locked")
            time.sleep(1.0)
        try:
            yield
        finally:
            self.dir.fs.delete_file(self.dir.path(".lease"))

    def record(self, entry: dict[str, Any]) -> None:
        """Append one decision to history.jsonl (rewritten whole: object stores cannot append)."""
        old = self.dir.read_text("history.jsonl") if self.dir.exists("history.jsonl") else ""
        self.dir.write_text(old + json.dumps(entry) + "\n", "history.jsonl")

    def promote(self, run: Storage, stages: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """Copy the candidate's weights and config in, then point champion.json at them."""
        slot = f"champion-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        exports = {}
        for name, rec in stages.items():
            if rec.get("status") != "completed":
                continue
            self.dir.write_bytes(run.read_bytes("stages", name, "export.pt"), slot, name, "export.pt")
            exports[name] = self.dir.uri_of(slot, name, "export.pt")
        for f in ("config.yaml", "summary.json"):
            self.dir.write_bytes(run.read_bytes(f), slot, f)
        champion = {**entry, "checkpoint": self.dir.uri_of(slot), "exports": exports}
        old = self.champion()
        self.dir.write_json(champion, "champion.json")  # the switch: one whole-file write
        if old and old.get("checkpoint", "").startswith(self.dir.uri) and os.path.basename(old["checkpoint"]) != slot:
            self.dir.delete_dir(os.path.basename(old["checkpoint"]))
        return champion
