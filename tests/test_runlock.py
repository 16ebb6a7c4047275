"""The run lock: one driver per run name; a dead driver's lock does not block the resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ups import runlock
from ups.runlock import RunLock
from ups.schema import ConfigError
from ups.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from ups.runlock import RunLock
from ups.storage import Storage
lock = RunLock(Storage(sys.argv[1]), "r")
lock.acquire(say=lambda _: None)
print("held", flush=True)
time.sleep(600)
"""


def holder(storage: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(storage)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_driver_is_refused_naming_the_holder_and_a_killed_one_is_taken_over(tmp_path):
    p = holder(tmp_path)
    try:
        with pytest.raises(ConfigError, match=rf"--name r: the run is in use by pid {p.pid} on "):
            RunLock(Storage(str(tmp_path)), "r").acquire(say=lambda _: None)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    said: list[str] = []
    lock = RunLock(Storage(str(tmp_path)), "r")
    lock.acquire(say=said.append)  # the kernel dropped the dead driver's flock
    assert said and f"pid {p.pid}" in said[0] and "gone" in said[0]
    lock.release()
    again = RunLock(Storage(str(tmp_path)), "r")
    said.clear()
    again.acquire(say=said.append)  # a clean release leaves nobody to name
    assert said == []
    again.release()


def test_other_names_are_independent(tmp_path):
    a, b = RunLock(Storage(str(tmp_path)), "a"), RunLock(Storage(str(tmp_path)), "b")
    a.acquire(say=lambda _: None)
    b.acquire(say=lambda _: None)
    a.release()
    b.release()


def object_store(tmp_path: Path) -> Storage:
    s = Storage(str(tmp_path))
    s.local = False  # the lease path, over a real folder
    return s


def test_lease_refuses_a_live_holder_and_takes_over_a_silent_one(tmp_path, monkeypatch):
    first = RunLock(object_store(tmp_path), "r")
    first.acquire(say=lambda _: None)
    with pytest.raises(ConfigError, match="in use by"):
        RunLock(object_store(tmp_path), "r").acquire(say=lambda _: None)
    # The holder stops beating (its node is gone): after STALE_S its lease is taken over.
    first._stop.set()
    lease = tmp_path / ".locks" / "r.lock"
    rec = json.loads(lease.read_text())
    rec["heartbeat"] = time.time() - runlock.STALE_S - 1
    lease.write_text(json.dumps(rec))
    said: list[str] = []
    second = RunLock(object_store(tmp_path), "r")
    second.acquire(say=said.append)
    assert said and "stopped beating" in said[0]
    first.release()  # the old holder must not delete the new holder's lease
    assert json.loads(lease.read_text())["token"] == second.me.token
    second.release()
    assert not lease.exists()


def heartbeat(lease: Path) -> float:
    """The lease's heartbeat. A real object store's PUT replaces the object whole; this stand-in
    rewrites a local file in place, so a read can meet a half-written one: read again."""
    while True:
        try:
            return float(json.loads(lease.read_text())["heartbeat"])
        except json.JSONDecodeError:
            time.sleep(0.01)


def test_heartbeat_keeps_a_long_held_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = RunLock(object_store(tmp_path), "r")
    lock.acquire(say=lambda _: None)
    first = heartbeat(tmp_path / ".locks" / "r.lock")
    deadline = time.time() + 30
    while heartbeat(tmp_path / ".locks" / "r.lock") == first:
        assert time.time() < deadline, "the heartbeat never renewed the lease"
        time.sleep(0.05)
    lock.release()
