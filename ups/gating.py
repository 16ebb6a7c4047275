"""Gates and the registry of champions: what `run_fast_to_sota` did, done soundly.

- Like with like: the stored champion is re-evaluated next to the candidate, with the same code,
  data, split and horizon, so no proxy metric is ever compared with a full one and no stale
  number stands in for a measurement.
- A candidate is never compared with itself: identical weights are refused as such.
- A missing metric fails its gate; an empty registry promotes the first candidate and says so.
- Selection uses the val split only; the test split is reported for the champion, never used.
- The registry is per family (task + resolution + metric protocol), updated under a lock with
  whole-file writes, and keeps an append-only history of every decision with its reasons.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ups.config import Config, GateConfig
from ups.data.views import DataMeta
from ups.storage import Storage

REGISTRY = "registry"


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


def _missing(v: Any) -> bool:
    return not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)


def gate(candidate: dict[str, Any], champion: dict[str, Any] | None, cfg: GateConfig) -> tuple[bool, list[str]]:
    """Improvement gate on nRMSE and ratio gates; returns (passed, reasons), one reason per gate."""
    if champion is None:
        if _missing(candidate.get("nRMSE")):
            return False, ["candidate has no nRMSE"]
        return True, [f"empty registry: the first candidate is promoted (nRMSE {candidate['nRMSE']:.4g})"]
    if candidate.get("protocol") != champion.get("protocol"):
        return False, [f"protocols differ: {candidate.get('protocol')} vs {champion.get('protocol')}"]
    passed, reasons = True, []
    c, b = candidate.get("nRMSE"), champion.get("nRMSE")
    if _missing(c) or _missing(b):
        passed = False
        reasons.append(f"nRMSE missing (candidate {c}, champion {b})")
    else:
        need = b * (1 - cfg.min_improvement)
        if cfg.min_delta is not None:
            need = min(need, b - cfg.min_delta)
        ok = c <= need
        passed &= ok
        margin = f"{cfg.min_improvement:.0%}" + (f" and {cfg.min_delta:g}" if cfg.min_delta is not None else "")
        reasons.append(f"nRMSE {c:.4g} {'<=' if ok else '>'} {need:.4g} needed (champion {b:.4g}, margin {margin})")
    for key, ratio in cfg.ratios.items():
        c, b = candidate.get(key), champion.get(key)
        if _missing(c) or _missing(b):
            passed = False
            reasons.append(f"{key} missing (candidate {c}, champion {b})")
            continue
        limit = b * ratio if abs(b) > 1e-12 else b + 1e-9
        ok = c <= limit
        passed &= ok
        reasons.append(f"{key} {c:.4g} {'<=' if ok else '>'} {ratio:g} x champion {b:.4g}")
    return passed, reasons


@dataclass
class Decision:
    family: str
    promoted: bool
    reasons: list[str]
    candidate: dict[str, Any]
    champion_before: dict[str, Any] | None
    stages: dict[str, Any] = field(default_factory=dict)


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
