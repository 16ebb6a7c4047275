"""Gates and the policy that promotes champions: what `run_fast_to_sota` did, done soundly.

- Like with like: the stored champion is re-evaluated next to the candidate, with the same code,
  data, split and horizon, so no proxy metric is ever compared with a full one and no stale
  number stands in for a measurement.
- A candidate is never compared with itself: identical weights are refused as such.
- A missing metric fails its gate; an empty registry promotes the first candidate and says so.
- Selection uses the val split only; the test split is reported for the champion, never used.
- Wall-clock is gated on candidate and champion timed in turns in one process (medians of repeats
  long enough to time), never on two one-off measurements of a few milliseconds each.
- Champions are kept per family (task + resolution + metric protocol) in ups/champions.py's
  store, updated with whole-file writes under its lock, with an append-only history, one object
  per decision with its reasons. Wall-clock timing is ups/eval/timing.py.

The policy (`decide`) takes its measurements as callables, so it runs without Ray:
ups/sweep/decision.py binds them to Ray tasks, tests to fakes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ups import names
from ups.champions import ChampionStore
from ups.config import Config, GateConfig
from ups.contracts import ChampionRecord, Decision, EvalMetrics, RunSummary, TrialRecord
from ups.data.views import DataMeta
from ups.eval.timing import Side
from ups.storage import Storage

WALL_CLOCK = "wall_clock"  # the ratio gate that uses the interleaved timing, not the eval's own number


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
    champions: ChampionStore,
    candidate: Candidate,
    measure: Callable[[ChampionRecord | None], Measures],
    *,
    sweep: str,
    say: Callable[[str], None] = lambda _: None,
) -> Verdict:
    """Refuse self-comparison and a champion of other data, else gate small then full, and promote
    on a pass; all under the champion store's lock, with the decision appended to its history.

    `measure(champion)` binds the measurements to the champion read under the lock (None on an
    empty store).
    """
    with champions.lock():
        champ = champions.champion()
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
            champ = champions.promote(Storage(candidate.run), candidate.summary.stages, entry)
            say(f"promoted trial {candidate.trial} to champion of {champions.family}")
        else:
            say(f"not promoted: {'; '.join(reasons)}")
        champions.record(entry.to_dict())
    return Verdict(passed, reasons, steps, entry, champ)
