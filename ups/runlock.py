"""One driver per run: `{storage}/.locks/{name}.lock` names the process that holds the run.

The lock sits beside the run folder, not in it, so `--restart` can move the folder aside while
the lock stays with the name.

Two drivers training into one folder would interleave checkpoints, summaries and exports, so a
second driver on a held run is refused with a line naming the holder. A driver that died without
releasing (SIGKILL, a lost node) must not block the next one, so "run the same command again"
still resumes after a crash:

- on a local disk the lock is an `flock` on the lock file, held by the driver's open file: the
  kernel drops it when the process dies, however it dies; the file's contents only name the
  holder for the message;
- on object stores (no locks there) the file is a lease with a heartbeat, rewritten every
  HEARTBEAT_S by the holder; a lease whose heartbeat is older than STALE_S is a dead driver's and
  is taken over. Creation is a whole-object PUT, a wait of SETTLE_S, and a read-back (Fischer's
  timed exclusion: the last writer wins, the other is refused), sound when a PUT takes less than
  SETTLE_S. A holder that finds its lease taken (it was silent past STALE_S) says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from ups.schema import ConfigError
from ups.storage import Storage, redact

LOCKS = ".locks"
HEARTBEAT_S = 30.0
STALE_S = 180.0
SETTLE_S = 2.0  # object stores: wait this long after writing the lease before reading it back


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


class RunLock:
    """Held from `acquire()` to `release()`; a daemon thread keeps the heartbeat fresh."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.run, self.name = storage.sub(LOCKS), name
        self.file = f"{name}.lock"
        pid = os.getpid()
        now = time.time()
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), pid, now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: IO[bytes] | None = None  # local disk: the open file that carries the flock

    def _read(self) -> Holder | None:
        try:
            data: Any = json.loads(self.run.read_text(self.file))
            return Holder(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, UnicodeDecodeError):
            # Half-written or edited: treat as a dead holder's (it cannot prove it is alive).
            return Holder("unreadable", "?", -1, 0.0, 0.0)

    def _refuse(self, held: Holder | None) -> ConfigError:
        who = held.describe() if held else "another driver"
        return ConfigError(
            f"--name {self.name}: the run is in use by {who} (lock {redact(self.run.uri_of(self.file))}); "
            f"wait for it to finish, or use another --name"
        )

    def acquire(self, say: Callable[[str], None] = print) -> None:
        if self.run.local:
            self._acquire_flock(say)
        else:
            self._acquire_lease(say)
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()

    def _acquire_flock(self, say: Callable[[str], None]) -> None:
        self.run.makedirs()
        # Held open for the whole run (the flock lives with the file); not inherited by children (PEP 446).
        f = open(self.run.path(self.file), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise self._refuse(self._read()) from None
        before = self._read()
        if before is not None and before.pid > 0:
            say(f"run {self.name}: the previous driver ({before.describe()}) is gone; taking over its lock")
        f.truncate(0)
        f.write(json.dumps(asdict(self.me)).encode())
        f.flush()
        self._file = f

    def _acquire_lease(self, say: Callable[[str], None]) -> None:
        held = self._read()
        if held is not None:
            if not held.stale(time.time()):
                raise self._refuse(held)
            say(f"run {self.name}: taking over the lease of a driver that stopped beating ({held.describe()})")
        self.run.write_text(json.dumps(asdict(self.me)), self.file)
        # Fischer's timed exclusion: a rival that read the old state before our write writes within
        # SETTLE_S (one PUT); reading back after that shows whoever wrote last, and only they go on.
        time.sleep(SETTLE_S)
        held = self._read()
        if held is None or held.token != self.me.token:
            raise self._refuse(held)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self._read()
                if held is None or held.token != self.me.token:
                    print(f"run {self.name}: another driver took over this run's lease; stop this one", flush=True)
                    return  # presumed dead: the new holder owns the file
                if self._stop.is_set():
                    return  # released meanwhile: do not write the lease back
                self.me.heartbeat = time.time()
                self.run.write_text(json.dumps(asdict(self.me)), self.file)
            except OSError:
                continue  # a transient store error: the next beat tries again, well inside STALE_S

    def release(self) -> None:
        """Remove the lock if it is still ours (never someone else's that took over)."""
        if self._file is not None:
            self._file.truncate(0)  # released cleanly: nobody to name
            self._file.close()  # drops the flock
            self._file = None
            return
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)  # a beat in flight finishes before the lease is deleted
        held = self._read()
        if held is not None and held.token == self.me.token:
            self.run.fs.delete_file(self.run.path(self.file))
