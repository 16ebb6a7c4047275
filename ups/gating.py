"""Gates and the registry of champions: what `run_fast_to_sota` did, done soundly.

- Like with like: the stored champion is re-evaluated next to the candidate, with the same code,
  data, split and horizon, so no proxy metric is ever compared with a full one and no stale
  number stands in for a measurement.
- A candidate is never compared with itself: identical weights are refused as such.
- A missing metric fails its gate; an empty registry promotes the first candidate and says so.
- Selection uses the val split only; the test split is reported for the champion, never used.
- Wall-clock is gated on candidate and champion timed in turns in one process (medians of repeats
  long enough to time), never on two one-off measurements of a few milliseconds each.
- The registry is per family (task + resolution + metric protocol), updated with whole-file writes
  under a lock (flock on a local disk; on object stores a renewed, fenced lease: `Registry.lock`
  states its guarantee), and keeps an append-only history, one object per decision with its reasons.

The policy (`decide`) takes its measurements as callables, so it runs without Ray: ups/sweep.py
binds them to Ray tasks, tests to fakes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import posixpath
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from ups import coordination, names
from ups.config import Config, GateConfig
from ups.contracts import ChampionRecord, Decision, EvalMetrics, RunSummary, StageRecord, TrialRecord
from ups.data.views import DataMeta
from ups.schema import ConfigError
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
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("+", "_and_")).lstrip("._-") or "family"
    if len(name) > names.MAX_LEN:  # many or long task names: keep it one bounded segment, still unique
        name = f"{name[: names.MAX_LEN - 13]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return names.check_name("gate.family", name)


def _number(v: Any) -> float | None:
    """The metric as a float, or None when it is missing (absent, not a number, a bool, NaN or inf)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


def gate(candidate: EvalMetrics, champion: EvalMetrics | None, cfg: GateConfig) -> tuple[bool, list[str]]:
    """Improvement gate on nRMSE and ratio gates; returns (passed, reasons), one reason per gate."""
    if champion is None:
        first = _number(candidate.score("nRMSE"))
        if first is None:
            return False, ["candidate has no nRMSE"]
        return True, [f"empty registry: the first candidate is promoted (nRMSE {first:.4g})"]
    if candidate.protocol != champion.protocol:
        return False, [f"protocols differ: {candidate.protocol} vs {champion.protocol}"]
    passed, reasons = True, []
    c, b = _number(candidate.score("nRMSE")), _number(champion.score("nRMSE"))
    if c is None or b is None:
        passed = False
        reasons.append(f"nRMSE missing (candidate {candidate.score('nRMSE')}, champion {champion.score('nRMSE')})")
    else:
        need = b * (1 - cfg.min_improvement)
        if cfg.min_delta is not None:
            need = min(need, b - cfg.min_delta)
        ok = c <= need
        passed &= ok
        margin = f"{cfg.min_improvement:.0%}" + (f" and {cfg.min_delta:g}" if cfg.min_delta is not None else "")
        reasons.append(f"nRMSE {c:.4g} {'<=' if ok else '>'} {need:.4g} needed (champion {b:.4g}, margin {margin})")
    for key, ratio in cfg.ratios.items():
        c, b = _number(candidate.score(key)), _number(champion.score(key))
        if c is None or b is None:
            passed = False
            reasons.append(f"{key} missing (candidate {candidate.score(key)}, champion {champion.score(key)})")
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


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    """The completed trial with the lowest val nRMSE (trials never see the test split)."""
    done = [(nrmse, t) for t in trials if t.status == "completed" and (nrmse := t.eval_nRMSE) is not None]
    return min(done, key=lambda pair: pair[0])[1] if done else None


@dataclass
class Candidate:
    """The trial up for promotion: its run folder and that run's summary.json."""

    trial: str
    run: str  # URI of the trial's run folder (its stages/*/export.pt, config.yaml, summary.json)
    summary: RunSummary
    metrics: dict[str, float]  # the trial's own metrics, recorded when no full evaluation ran

    @property
    def weights_sha256(self) -> dict[str, str | None]:
        return self.summary.weights_sha256()


@dataclass
class Verdict:
    """What `decide` did: whether the candidate passed (and so was promoted), one reason per gate
    and phase, each phase's metrics, timing and verdict, the history entry, and the champion
    standing afterwards."""

    passed: bool
    reasons: list[str]
    steps: dict[str, Any]  # phase ("small", "full") -> candidate, champion, timing, passed, reasons
    entry: Decision
    champion: ChampionRecord | None


@dataclass
class Measures:
    """How a decision measures, bound to one champion: sweep.py runs these on Ray, tests pass fakes."""

    metrics: Callable[[Side, bool], EvalMetrics]  # (side, small) -> val metrics; small: gate.small's protocol
    timing: Callable[[], dict[str, Any]] | None = None  # both sides timed in turns: time_interleaved's record


def _timed(metrics: EvalMetrics, timing: dict[str, Any] | None, side: Side) -> EvalMetrics:
    """The metrics the gate sees: wall-clock from the interleaved timing (missing without one)."""
    return dataclasses.replace(metrics, wall_clock=timing[f"{side}_s"] if timing else None)


def decide(
    cfg: GateConfig,
    registry: Registry,
    candidate: Candidate,
    measure: Callable[[ChampionRecord | None], Measures],
    *,
    sweep: str,
    say: Callable[[str], None] = lambda _: None,
) -> Verdict:
    """Refuse self-comparison and a champion of other data, else gate small then full, and promote
    on a pass; all under the registry's lock, with the decision appended to its history.

    `measure(champion)` binds the measurements to the champion read under the lock (None on an
    empty registry).
    """
    with registry.lock():
        champ = registry.champion()
        steps: dict[str, Any] = {}
        passed, reasons = True, []
        if champ and champ.weights_sha256 == candidate.weights_sha256:
            passed, reasons = False, [f"the candidate is the current champion (trial {champ.trial}, same weights)"]
        elif champ and champ.data_sha256 != candidate.summary.data_sha256:
            passed = False
            reasons = [
                f"the champion was trained on other data (digest {champ.data_sha256})"
                f"; set gate.family to start a new family"
            ]
        else:
            m = measure(champ)
            timing = None
            for phase, small in (("small", True), ("full", False)):
                cand = m.metrics("candidate", small)
                champ_m = m.metrics("champion", small) if champ else None
                step: dict[str, Any] = {"candidate": cand.scalars(), "champion": champ_m.scalars() if champ_m else None}
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
        entry = Decision(
            at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            sweep=sweep,
            trial=candidate.trial,
            run=candidate.run,
            config_digest=candidate.summary.config_digest,
            data_sha256=candidate.summary.data_sha256,
            weights_sha256=candidate.weights_sha256,
            promoted=passed,
            reasons=reasons,
            metrics=steps.get("full", {}).get("candidate") or candidate.metrics,
            champion_before={"trial": champ.trial, "sweep": champ.sweep} if champ else None,
        )
        if passed:
            champ = registry.promote(Storage(candidate.run), candidate.summary.stages, entry)
            say(f"promoted trial {candidate.trial} to champion of {registry.family}")
        else:
            say(f"not promoted: {'; '.join(reasons)}")
        registry.record(entry.to_dict())
    return Verdict(passed, reasons, steps, entry, champ)


# ----------------------------------------------------------------------------------------------
# The registry.

LEASE, HISTORY, LEGACY_HISTORY = ".lease", "history", "history.jsonl"
SLOT = re.compile(r"champion-[A-Za-z0-9_-]+")  # the weight folders promote() writes and may delete
_last_stamp_us = 0
_stamp_mutex = threading.Lock()


class RegistryLockError(ConfigError):
    """The registry's lock was not had in time, or was lost while held; one line for the user."""


def _stamp() -> str:
    """UTC time to the microsecond, strictly increasing within this process, so names sort by time
    even when two entries come in the same microsecond or the wall clock steps back."""
    global _last_stamp_us
    with _stamp_mutex:
        _last_stamp_us = max(time.time_ns() // 1000, _last_stamp_us + 1)
        us = _last_stamp_us
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)).strftime("%Y%m%dT%H%M%S.%fZ")


class Registry:
    """`{storage}/registry/{family}/`: champion.json, history/ (one object per decision),
    champion-*/ (the champion's weights), .lock or .lease.

    `lease_s` and `delay_s` tune the object-store lock (see `lock`); every driver of a family must
    use the same `delay_s`.
    """

    def __init__(self, storage: Storage, family: str, *, lease_s: float = 60.0, delay_s: float = 2.0) -> None:
        if not 0 < 3 * delay_s < lease_s:
            raise ValueError(f"the lease must outlast 3 write delays (lease_s {lease_s:g}, delay_s {delay_s:g})")
        self.family, self.lease_s, self.delay_s = family, lease_s, delay_s
        self.dir = storage.sub(REGISTRY, family)
        self._held = threading.local()  # the Lease this thread holds, for promote's fence

    def champion(self) -> ChampionRecord | None:
        return ChampionRecord.read(self.dir)

    def history(self) -> list[dict[str, Any]]:
        """Every decision, oldest first: a legacy history.jsonl (older registries), then history/ by name."""
        legacy = self.dir.read_text(LEGACY_HISTORY) if self.dir.exists(LEGACY_HISTORY) else ""
        entries = [json.loads(line) for line in legacy.splitlines() if line.strip()]
        names = [n for n in self.dir.listdir(HISTORY) if n.endswith(".json")]  # not a local write's temp file
        return entries + [self.dir.read_json(HISTORY, n) for n in names]

    def record(self, entry: dict[str, Any]) -> None:
        """Append one decision as its own object: no read-modify-write, so no writer loses another's entry."""
        self.dir.write_json(entry, HISTORY, f"{_stamp()}-{uuid.uuid4().hex}.json")

    @contextlib.contextmanager
    def lock(self, timeout_s: float = 600) -> Iterator[None]:
        """An exclusive lock across drivers, or RegistryLockError after `timeout_s`.

        A lease of ups/coordination.py (which states each kind's guarantee): on a local disk an
        flock on `.lock`, polled so the timeout holds, that the kernel drops if its holder dies; on
        object stores a lease object `.lease` {holder, expires_at} that a daemon thread renews every
        `lease_s / 3` while held and that a dead holder leaves to expire. On S3 it is created and
        taken over with conditional writes (If-None-Match / If-Match); elsewhere with Fischer's timed
        exclusion with `delay_s` and a read-to-write check. Release deletes the lease only while it is
        ours. Should the lease be lost anyway (a holder silent past `lease_s`), the fence in `promote`
        stops this driver before it switches champion.json or deletes weights.
        """
        self.dir.makedirs()
        fmt = coordination.Format(self._encode_lease, _decode_lease)
        lease = coordination.lease_for(
            self.dir, ".lock" if self.dir.local else LEASE, fmt, uuid.uuid4().hex, settle_s=self.delay_s
        )
        try:
            coordination.acquire(lease, timeout_s)
        except coordination.Busy:
            raise RegistryLockError(
                f"registry {self.dir.root} is locked by another driver (waited {timeout_s:g} s)"
            ) from None
        lease.keep_alive(self.lease_s / 3)
        self._held.lease = lease
        try:
            yield
        finally:
            self._held.lease = None
            lease.release()

    def _encode_lease(self, token: str) -> bytes:
        return (json.dumps({"holder": token, "expires_at": time.time() + self.lease_s}, indent=2) + "\n").encode()

    def _fence(self) -> None:
        """Before a write only the holder may make: on object stores, the lease must still be ours."""
        if self.dir.local:
            return  # flock cannot be lost while its file is open
        lease: coordination.Lease | None = getattr(self._held, "lease", None)
        if lease is None:
            raise RegistryLockError(f"registry {self.dir.root}: written to without its lock")
        if not lease.held():
            raise RegistryLockError(f"registry {self.dir.root}: lost its lock to another driver")

    def _slot_of(self, checkpoint: object) -> str | None:
        """The champion-* folder directly in this registry that `checkpoint` names, else None: the
        old champion.json may have been edited to point anywhere, and only our own slots are deleted."""
        if not isinstance(checkpoint, str):
            return None
        name = posixpath.basename(checkpoint.partition("?")[0])
        if not SLOT.fullmatch(name) or checkpoint.partition("?")[0] != self.dir.uri_of(name).partition("?")[0]:
            return None
        return name

    def promote(self, run: Storage, stages: dict[str, StageRecord], entry: Decision) -> ChampionRecord:
        """Copy the candidate's weights and config into a new slot, then point champion.json at them
        and drop the old champion's slot; both of the last two are fenced."""
        slot = f"champion-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        exports = {}
        try:
            for name, rec in stages.items():
                if not rec.completed:
                    continue
                # The bytes copied are the bytes verified: a candidate's export altered since it was
                # evaluated (or never recorded with a digest) never becomes a champion.
                data = run.read_bytes("stages", name, "export.pt")
                _verified_copy(data, rec.weights_sha256, run.uri_of("stages", name, "export.pt"))
                self.dir.write_bytes(data, slot, name, "export.pt")
                exports[name] = self.dir.uri_of(slot, name, "export.pt")
            for f in ("config.yaml", "summary.json", "meta.json"):  # meta.json: what ups.Surrogate needs of the data
                if f != "meta.json" or run.exists(f):  # runs from before meta.json have none
                    self.dir.write_bytes(run.read_bytes(f), slot, f)
            champion = ChampionRecord.of(entry, checkpoint=self.dir.uri_of(slot), exports=exports)
            old = self.champion()
            self._fence()
        except (RegistryLockError, ConfigError):
            self.dir.delete_dir(slot)  # ours alone: nothing points at it
            raise
        champion.write(self.dir)  # the switch: one whole-file write
        old_slot = self._slot_of(old.checkpoint) if old else None
        if old_slot and old_slot != slot:
            self.dir.delete_dir(old_slot)
        return champion

    def champion_files(self, champ: ChampionRecord) -> tuple[str, dict[str, tuple[str, str]]]:
        """The champion's config.yaml and its exports as (uri, weights digest), every one a file of
        this registry's own slot and every export with a recorded digest: champion.json may have
        been edited to point anywhere, or to drop a digest, and nothing unverified is loaded."""
        where = f"{self.dir.shown}/champion.json"
        slot = self._slot_of(champ.checkpoint)
        if slot is None:
            raise ConfigError(f"{where}: checkpoint {champ.checkpoint!r} is not a champion folder of this "
                              f"registry; refusing to load a champion from elsewhere")  # fmt: skip
        exports, digests = champ.exports, champ.weights_sha256
        if not isinstance(exports, dict) or not exports or not isinstance(digests, dict):
            raise ConfigError(f"{where}: no exports with weights digests recorded; refusing an unverified champion")
        files = {}
        for name, uri in exports.items():
            sha = digests.get(name)
            if not isinstance(sha, str) or not sha:
                raise ConfigError(f"{where}: stage {name}'s export has no recorded weights digest; "
                                  f"refusing to load it unverified")  # fmt: skip
            if uri != self.dir.uri_of(slot, name, "export.pt") or self.dir.kind(slot, name, "export.pt") == "link":
                raise ConfigError(f"{where}: stage {name}'s export {uri!r} is not in the champion's folder "
                                  f"{slot}; refusing a file from outside the registry")  # fmt: skip
            files[name] = (uri, sha)
        return self.dir.uri_of(slot, "config.yaml"), files


def _verified_copy(data: bytes, expect: Any, uri: str) -> None:
    """ConfigError unless an export's bytes hash to its recorded digest (a promotion's last check)."""
    from ups.exports import ExportMismatch, verify_export

    if not isinstance(expect, str) or not expect:
        raise ConfigError(f"{uri}: the candidate's export has no recorded weights digest; not promoted")
    try:
        verify_export(data, expect, uri)
    except ExportMismatch as e:
        raise ConfigError(f"{e}: the candidate's export changed after it was evaluated; not promoted") from None
    except Exception as e:  # not an export at all (torch.load with weights_only refuses it)
        raise ConfigError(f"{uri}: the candidate's export cannot be read ({type(e).__name__}); not promoted") from None


def _decode_lease(raw: bytes) -> coordination.Claim:
    """(holder, expires_at); a lease that cannot be read counts as held forever (never as free):
    delete it by hand if no driver runs."""
    try:
        d = json.loads(raw)
        return coordination.Claim(str(d["holder"]), float(d["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return coordination.Claim("", math.inf)
