"""The champions' store: `{storage}/registry/{family}/`, one champion per family.

champion.json names the champion and its `champion-*` slot (its weights, config, summary and data
metadata, copied byte for byte and verified against the digests the candidate's run recorded); an
append-only history (one object per decision, so no writer loses another's entry); and the lock
one promoter per family holds while it decides (a lease of ups/coordination.py: flock on a local
disk, conditional writes on S3, a timed lease elsewhere; `ChampionStore.lock` states its
guarantee). The policy that decides what is promoted is ups/gating.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from ups import coordination
from ups.contracts import ChampionRecord, Decision, StageRecord
from ups.schema import ConfigError
from ups.storage import Storage

REGISTRY = "registry"  # the folder under {storage} that holds every family's champion
LEASE, HISTORY, LEGACY_HISTORY = ".lease", "history", "history.jsonl"
SLOT = re.compile(r"champion-[A-Za-z0-9_-]+")  # the weight folders promote() writes and may delete
_last_stamp_us = 0
_stamp_mutex = threading.Lock()


class ChampionLockError(ConfigError):
    """The champion store's lock was not had in time, or was lost while held; one line for the user."""


def _stamp() -> str:
    """UTC time to the microsecond, strictly increasing within this process, so names sort by time
    even when two entries come in the same microsecond or the wall clock steps back."""
    global _last_stamp_us
    with _stamp_mutex:
        _last_stamp_us = max(time.time_ns() // 1000, _last_stamp_us + 1)
        us = _last_stamp_us
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)).strftime("%Y%m%dT%H%M%S.%fZ")


class ChampionStore:
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
        """An exclusive lock across drivers, or ChampionLockError after `timeout_s`.

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
            raise ChampionLockError(
                f"champion store {self.dir.root} is locked by another driver (waited {timeout_s:g} s)"
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
            raise ChampionLockError(f"champion store {self.dir.root}: written to without its lock")
        if not lease.held():
            raise ChampionLockError(f"champion store {self.dir.root}: lost its lock to another driver")

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
        except (ChampionLockError, ConfigError):
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
