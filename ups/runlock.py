"""One driver per run: `{storage}/.locks/{name}.lock` names the process that holds the run.

The lock sits beside the run folder, not in it, so `--restart` can move the folder aside while
the lock stays with the name.

Two drivers training into one folder would interleave checkpoints, summaries and exports, so a
second driver on a held run is refused with a line naming the holder. A driver that died without
releasing (SIGKILL, a lost node) must not block the next one, so "run the same command again"
still resumes after a crash. The lock is a lease of ups/coordination.py (which states what each
kind guarantees):

- on a local disk an `flock` on the lock file, held by the driver's open file: the kernel drops
  it when the process dies, however it dies; the file's contents only name the holder;
- on object stores a lease with a heartbeat, renewed every HEARTBEAT_S by the holder; a lease
  whose heartbeat is older than STALE_S is a dead driver's and is taken over. On S3 it is created
  and taken over with conditional writes (If-None-Match / If-Match), elsewhere with Fischer's
  timed exclusion (SETTLE_S). A holder that finds its lease taken (it was silent past STALE_S)
  says so.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ups import coordination
from ups.coordination import Busy, Claim, Format, Lease
from ups.schema import ConfigError
from ups.storage import Storage, redact

LOCKS = ".locks"
HEARTBEAT_S = 30.0
STALE_S = 180.0
SETTLE_S = 2.0  # stores without conditional writes: wait this long after writing the lease before reading it back


@dataclass
class Holder:
    token: str
    host: str
    pid: int
    since: float
    heartbeat: float

    def describe(self) -> str:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on {self.host} since {at}"

    def stale(self, now: float) -> bool:
        return now - self.heartbeat > STALE_S


def _claim(holder: Holder) -> Claim:
    return Claim(holder.token, holder.heartbeat + STALE_S, holder)


class RunLock:
    """Held from `acquire()` to `release()`; on object stores a daemon thread keeps the heartbeat fresh."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.run, self.name = storage.sub(LOCKS), name
        self.file = f"{name}.lock"
        pid = os.getpid()
        now = time.time()
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), pid, now, now)
        self._lease: Lease | None = None

    @property
    def _stop(self) -> threading.Event:
        """The event that stops the heartbeat (set by `release`)."""
        assert self._lease is not None, "acquire() first"
        return self._lease.stop

    def _encode(self, token: str) -> bytes:
        self.me.heartbeat = time.time()
        return json.dumps(asdict(self.me)).encode()

    @staticmethod
    def _decode(raw: bytes) -> Claim:
        try:
            data: Any = json.loads(raw)
            return _claim(Holder(**data))
        except (ValueError, TypeError, UnicodeDecodeError):
            # Half-written or edited: treat as a dead holder's (it cannot prove it is alive).
            return _claim(Holder("unreadable", "?", -1, 0.0, 0.0))

    def _refuse(self, busy: Busy) -> ConfigError:
        lock = redact(self.run.uri_of(self.file))
        if busy.claim is None and busy.why:  # our own attempt was too slow to trust; its record lapses
            return ConfigError(
                f"--name {self.name}: the run's lock could not be taken safely ({busy.why}; lock {lock}); "
                f"try again in {STALE_S:g} s"
            )
        who = busy.claim.record.describe() if busy.claim else "another driver"
        return ConfigError(
            f"--name {self.name}: the run is in use by {who} (lock {lock}); "
            f"wait for it to finish, or use another --name"
        )

    def acquire(self, say: Callable[[str], None] = print) -> None:
        lease = coordination.lease_for(
            self.run, self.file, Format(self._encode, self._decode), self.me.token, settle_s=SETTLE_S
        )
        try:
            before = lease.try_acquire()
        except Busy as busy:
            raise self._refuse(busy) from None
        self._lease = lease
        held: Holder | None = before.record if before else None
        if held is not None and self.run.local and held.pid > 0:
            say(f"run {self.name}: the previous driver ({held.describe()}) is gone; taking over its lock")
        elif held is not None and not self.run.local:
            say(f"run {self.name}: taking over the lease of a driver that stopped beating ({held.describe()})")
        lease.keep_alive(HEARTBEAT_S, self._lost)  # object stores: the heartbeat (a flock needs none)

    def _lost(self) -> None:
        print(f"run {self.name}: another driver took over this run's lease; stop this one", flush=True)

    def release(self) -> None:
        """Remove the lock if it is still ours (never someone else's that took over)."""
        if self._lease is not None:
            self._lease.release()
