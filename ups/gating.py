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
import fcntl
import hashlib
import json
import math
import posixpath
import random
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from ups import names
from ups.config import Config, GateConfig
from ups.data.views import DataMeta
from ups.schema import ConfigError
from ups.storage import Storage

if TYPE_CHECKING:
    from ups.data.views import Task
    from ups.eval.rollout import Surrogate

REGISTRY = "registry"
WALL_CLOCK = "wall_clock"  # the ratio gate that uses the interleaved timing, not the eval's own number

Side = Literal["candidate", "champion"]
T = TypeVar("T")


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


class _Lease:
    """This driver's hold on an object-store lease: a daemon thread rewrites `expires_at` every
    lease_s / 3, so the lease never expires while held; `check` is the fence before a critical write."""

    def __init__(self, registry: Registry, token: str) -> None:
        self.registry, self.token = registry, token
        self.mutex = threading.Lock()  # our renewal and our own reads of the lease never interleave
        self.stop, self.lost = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._renew, name=f"lease-{registry.family}", daemon=True)
        self.thread.start()

    def ours(self) -> bool:
        lease = self.registry._read_lease()
        return lease is not None and lease[0] == self.token and lease[1] > time.time()

    def _renew(self) -> None:
        while not self.stop.wait(self.registry.lease_s / 3):
            with self.mutex:
                try:
                    if not self.ours():  # expired or taken over: never renew what is not (or no longer) ours
                        self.lost.set()
                        return
                    self.registry._write_lease(self.token)
                except OSError:
                    pass  # retried next period; a lease that expires meanwhile fails the fence

    def check(self) -> None:
        with self.mutex:
            if self.lost.is_set() or not self.ours():
                raise RegistryLockError(f"registry {self.registry.dir.root}: lost its lock to another driver")

    def release(self) -> None:
        """Stop renewing, then delete the lease only if it still carries our token."""
        self.stop.set()
        self.thread.join()
        with contextlib.suppress(OSError):  # unreachable store: the lease expires by itself
            if self.ours():
                self.registry.dir.fs.delete_file(self.registry.dir.path(LEASE))


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
        self._held = threading.local()  # the _Lease this thread holds, for promote's fence

    def champion(self) -> dict[str, Any] | None:
        return self.dir.read_json("champion.json") if self.dir.exists("champion.json") else None

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

        Local disk: flock, polled so the timeout holds; the kernel drops it if its holder dies.
        Object stores: Fischer's timed mutual exclusion on a lease object {holder, expires_at}. An
        acquirer that finds no live lease writes its own, waits `delay_s`, reads it back and holds
        the lock only if its token is still there; an attempt whose read-to-write took over `delay_s`
        on its own clock does not claim. A daemon thread renews the lease while it is held; a dead
        holder's lease expires and is taken over; release deletes the lease only while it is ours.

        Guarantee: at most one driver holds the lock at a time, given whole-object writes with strong
        read-after-write consistency (S3, GCS), wall clocks that agree to well under `lease_s`, and a
        holder that reaches the store at least every 2/3 `lease_s` (so a renewal lands before expiry).
        Fischer's own bound (a lease written within `delay_s` of the read that found it free) is not
        assumed: each acquirer checks it on its own clock. Should an assumption fail anyway, a driver
        whose token is no longer in the lease is stopped by the fence in `promote` before it switches
        champion.json or deletes weights.
        """
        self.dir.makedirs()
        if self.dir.local:
            with open(self.dir.path(".lock"), "a") as f:
                self._poll(lambda: _try_flock(f), timeout_s)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
            return
        lease = _Lease(self, self._poll(self._try_lease, timeout_s))
        self._held.lease = lease
        try:
            yield
        finally:
            self._held.lease = None
            lease.release()

    def _poll(self, attempt: Callable[[], T | None], timeout_s: float) -> T:
        """Call `attempt` until it returns something, at jittered intervals, for at most `timeout_s`."""
        end, pause = time.monotonic() + timeout_s, 0.05 if self.dir.local else min(1.0, self.delay_s)
        while (got := attempt()) is None:
            if time.monotonic() >= end:
                raise RegistryLockError(
                    f"registry {self.dir.root} is locked by another driver (waited {timeout_s:g} s)"
                )
            time.sleep(pause * random.uniform(0.5, 1.5))
        return got

    def _try_lease(self) -> str | None:
        """One round of Fischer's protocol: our new token if we now hold the lease, else None."""
        t0 = time.monotonic()
        lease = self._read_lease()
        if lease is not None and lease[1] > time.time():
            return None
        token = uuid.uuid4().hex
        self._write_lease(token)
        if time.monotonic() - t0 > self.delay_s:  # too slow to trust: a faster rival may already be in
            return None
        time.sleep(self.delay_s)  # any rival that also saw the lease free has written by now
        lease = self._read_lease()
        return token if lease is not None and lease[0] == token else None

    def _read_lease(self) -> tuple[str, float] | None:
        """(holder, expires_at), or None without a lease; one that cannot be read counts as held
        forever (never as free): delete it by hand if no driver runs."""
        try:
            raw = self.dir.read_bytes(LEASE)
        except FileNotFoundError:  # pyarrow's answer for a missing file or key, on every filesystem
            return None
        try:
            d = json.loads(raw)
            return str(d["holder"]), float(d["expires_at"])
        except (ValueError, KeyError, TypeError):
            return "", math.inf

    def _write_lease(self, token: str) -> None:
        self.dir.write_json({"holder": token, "expires_at": time.time() + self.lease_s}, LEASE)

    def _fence(self) -> None:
        """Before a write only the holder may make: on object stores, our token must still be in the lease."""
        if self.dir.local:
            return  # flock cannot be lost while its file is open
        lease: _Lease | None = getattr(self._held, "lease", None)
        if lease is None:
            raise RegistryLockError(f"registry {self.dir.root}: written to without its lock")
        lease.check()

    def _slot_of(self, checkpoint: object) -> str | None:
        """The champion-* folder directly in this registry that `checkpoint` names, else None: the
        old champion.json may have been edited to point anywhere, and only our own slots are deleted."""
        if not isinstance(checkpoint, str):
            return None
        name = posixpath.basename(checkpoint.partition("?")[0])
        if not SLOT.fullmatch(name) or checkpoint.partition("?")[0] != self.dir.uri_of(name).partition("?")[0]:
            return None
        return name

    def promote(self, run: Storage, stages: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        """Copy the candidate's weights and config into a new slot, then point champion.json at them
        and drop the old champion's slot; both of the last two are fenced."""
        slot = f"champion-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        exports = {}
        try:
            for name, rec in stages.items():
                if rec.get("status") != "completed":
                    continue
                # The bytes copied are the bytes verified: a candidate's export altered since it was
                # evaluated (or never recorded with a digest) never becomes a champion.
                data = run.read_bytes("stages", name, "export.pt")
                _verified_copy(data, rec.get("weights_sha256"), run.uri_of("stages", name, "export.pt"))
                self.dir.write_bytes(data, slot, name, "export.pt")
                exports[name] = self.dir.uri_of(slot, name, "export.pt")
            for f in ("config.yaml", "summary.json"):
                self.dir.write_bytes(run.read_bytes(f), slot, f)
            champion = {**entry, "checkpoint": self.dir.uri_of(slot), "exports": exports}
            old = self.champion()
            self._fence()
        except (RegistryLockError, ConfigError):
            self.dir.delete_dir(slot)  # ours alone: nothing points at it
            raise
        self.dir.write_json(champion, "champion.json")  # the switch: one whole-file write
        old_slot = self._slot_of(old.get("checkpoint")) if old else None
        if old_slot and old_slot != slot:
            self.dir.delete_dir(old_slot)
        return champion

    def champion_files(self, champ: dict[str, Any]) -> tuple[str, dict[str, tuple[str, str]]]:
        """The champion's config.yaml and its exports as (uri, weights digest), every one a file of
        this registry's own slot and every export with a recorded digest: champion.json may have
        been edited to point anywhere, or to drop a digest, and nothing unverified is loaded."""
        where = f"{self.dir.shown}/champion.json"
        slot = self._slot_of(champ.get("checkpoint"))
        if slot is None:
            raise ConfigError(f"{where}: checkpoint {champ.get('checkpoint')!r} is not a champion folder of this "
                              f"registry; refusing to load a champion from elsewhere")  # fmt: skip
        exports, digests = champ.get("exports"), champ.get("weights_sha256")
        if not isinstance(exports, dict) or not exports or not isinstance(digests, dict):
            raise ConfigError(f"{where}: no exports with weights digests recorded; refusing an unverified champion")
        files = {}
        for name, uri in exports.items():
            if not isinstance(digests.get(name), str) or not digests[name]:
                raise ConfigError(f"{where}: stage {name}'s export has no recorded weights digest; "
                                  f"refusing to load it unverified")  # fmt: skip
            if uri != self.dir.uri_of(slot, name, "export.pt") or self.dir.kind(slot, name, "export.pt") == "link":
                raise ConfigError(f"{where}: stage {name}'s export {uri!r} is not in the champion's folder "
                                  f"{slot}; refusing a file from outside the registry")  # fmt: skip
            files[name] = (uri, digests[name])
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


def _try_flock(f: IO[str]) -> bool | None:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    return True
