"""ups/coordination.py: one holder at a time, on a local disk (flock, across processes), on an
object store without conditional writes (the timed lease) and on S3 for real (conditional writes
on a moto server: the `cluster` tier, no Ray).

The S3 races are made deterministic with the lease's own Format: `encode` runs between a lease's
read and its conditional write, so a rival can be let in at exactly that point."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from test_s3_storage import BUCKET, s3_env  # noqa: F401  (s3_env: the moto server fixture)

from ups import coordination
from ups.champions import ChampionLockError, ChampionStore
from ups.coordination import Busy, Claim, Format, Lease, lease_for
from ups.runlock import RunLock
from ups.schema import ConfigError
from ups.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
       "AWS_EC2_METADATA_DISABLED")  # fmt: skip


def fmt(ttl: float = 60.0, before_write: Callable[[], None] = lambda: None) -> Format:
    """A lock record {token, pid, expires_at}; `before_write` runs just before each write."""

    def encode(token: str) -> bytes:
        before_write()
        return json.dumps({"token": token, "pid": os.getpid(), "expires_at": time.time() + ttl}).encode()

    def decode(raw: bytes) -> Claim:
        try:
            d = json.loads(raw)
            return Claim(d["token"], d["expires_at"], d)
        except (ValueError, KeyError, TypeError):
            return Claim("", math.inf)

    return Format(encode, decode)


def once(fn: Callable[[], object]) -> Callable[[], None]:
    """`fn` on the first call only: a rival let in at one lease's first write, not at every write."""
    done: list[bool] = []

    def call() -> None:
        if not done:
            done.append(True)
            fn()

    return call


# --- local disk: flock, two processes ----------------------------------------------------------

HOLD = """
import sys, time
from test_coordination import fmt
from ups.coordination import lease_for
from ups.storage import Storage
lease = lease_for(Storage(sys.argv[1]), "x.lock", fmt(), settle_s=1.0)
lease.try_acquire()
print("held", lease.kind, flush=True)
time.sleep(600)
"""


def test_a_second_process_is_refused_while_the_first_holds_and_takes_a_killed_holders_lock(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None and p.stdout.readline().split() == ["held", "flock"]
        with pytest.raises(Busy) as refused:
            lease_for(Storage(str(tmp_path)), "x.lock", fmt(), settle_s=1.0).try_acquire()
        assert refused.value.claim is not None and refused.value.claim.record["pid"] == p.pid  # named
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    lease = lease_for(Storage(str(tmp_path)), "x.lock", fmt(), settle_s=1.0)
    before = lease.try_acquire()  # the kernel dropped the dead holder's flock
    assert before is not None and before.record["pid"] == p.pid  # the dead holder's record, taken over
    assert lease.held()
    lease.release()
    again = lease_for(Storage(str(tmp_path)), "x.lock", fmt(), settle_s=1.0)
    assert again.try_acquire() is None  # a clean release leaves nobody behind
    again.release()


# --- an object store without conditional writes (GCS here): the timed lease --------------------
# A Storage with local=False over a real folder takes the object-store path; it is no S3.


def object_store(tmp_path: Path) -> Storage:
    store = Storage(str(tmp_path / "bucket"))
    store.local = False
    return store


def test_a_store_without_conditional_writes_gets_the_timed_lease(tmp_path):
    assert lease_for(object_store(tmp_path), "x.lock", fmt(), settle_s=0.05).kind == "timed"
    assert lease_for(Storage(str(tmp_path)), "x.lock", fmt(), settle_s=0.05).kind == "flock"


def test_a_read_to_write_slower_than_the_settle_time_never_claims(tmp_path):
    slow = lease_for(object_store(tmp_path), "x.lock", fmt(before_write=lambda: time.sleep(0.3)), settle_s=0.1)
    with pytest.raises(Busy, match="took over 0.1 s from reading the lock to writing it"):
        slow.try_acquire()
    # Its record stays until it expires (it cannot tell whether a faster rival got in meanwhile).
    with pytest.raises(Busy) as refused:
        lease_for(object_store(tmp_path), "x.lock", fmt(), settle_s=0.1).try_acquire()
    assert refused.value.claim is not None and refused.value.claim.token == slow.token
    assert not slow.held()  # never claimed, so never fenced in


def test_a_timed_holder_whose_lease_was_overwritten_stops_renewing_and_is_fenced(tmp_path):
    store = object_store(tmp_path)
    lease = lease_for(store, "x.lock", fmt(ttl=30), settle_s=0.05)
    lease.try_acquire()
    lost = threading.Event()
    lease.keep_alive(0.05, on_lost=lost.set)
    store.write_bytes(json.dumps({"token": "other", "pid": 1, "expires_at": time.time() + 30}).encode(), "x.lock")
    assert lost.wait(30) and not lease.held()
    lease.release()
    assert json.loads(store.read_bytes("x.lock"))["token"] == "other"  # a successor's lease stays


# --- S3 for real: conditional writes on a moto server ------------------------------------------


@pytest.fixture
def bucket(s3_env, monkeypatch) -> Storage:  # noqa: F811
    """A fresh prefix of the moto bucket, reached through the environment as a driver reaches it."""
    for key in AWS:
        monkeypatch.setenv(key, s3_env[key])
    return Storage(f"s3://{BUCKET}/coord-{uuid.uuid4().hex[:8]}")


def s3_lease(store: Storage, **kw: object) -> Lease:
    lease = lease_for(store, "x.lock", fmt(**kw), settle_s=5.0)  # type: ignore[arg-type]
    assert lease.kind == "conditional"  # moto honours If-None-Match and If-Match: no timed fallback
    return lease


def stored_token(store: Storage) -> str:
    return json.loads(store.read_bytes("x.lock"))["token"]


@pytest.mark.cluster
def test_s3_create_is_exclusive_even_for_a_rival_that_read_before_the_holder_wrote(bucket):
    holder = s3_lease(bucket)
    # The rival reads (no lease yet), then the holder creates its lease, then the rival writes:
    # If-None-Match: * refuses the rival's create, and it names the holder.
    rival = s3_lease(bucket, before_write=once(holder.try_acquire))
    with pytest.raises(Busy) as refused:
        rival.try_acquire()
    assert refused.value.claim is not None and refused.value.claim.token == holder.token
    assert stored_token(bucket) == holder.token and holder.held() and not rival.held()
    with pytest.raises(Busy):  # and a later attempt is refused on the live lease it reads
        s3_lease(bucket).try_acquire()
    holder.release()
    assert not bucket.exists("x.lock")


@pytest.mark.cluster
def test_s3_a_stale_lease_is_taken_over_by_exactly_one_rival_through_if_match(bucket):
    dead = s3_lease(bucket, ttl=-1.0)  # a holder silent past its lease's expiry
    assert dead.try_acquire() is None
    winner = s3_lease(bucket)
    # The loser reads the stale lease, then the winner takes it over, then the loser writes with
    # the stale ETag: If-Match refuses it, and it finds the winner's live lease.
    loser = s3_lease(bucket, before_write=once(winner.try_acquire))
    with pytest.raises(Busy) as refused:
        loser.try_acquire()
    assert refused.value.claim is not None and refused.value.claim.token == winner.token
    assert stored_token(bucket) == winner.token


@pytest.mark.cluster
def test_s3_a_holder_whose_lease_was_taken_over_is_fenced_and_leaves_the_successors_lease(bucket):
    first = s3_lease(bucket, ttl=-1.0)  # silent past its expiry (its renewals did not land)
    first.try_acquire()
    second = s3_lease(bucket)
    before = second.try_acquire()
    assert before is not None and before.token == first.token  # the dead holder's, taken over
    assert not first.held()  # the fence before a critical write
    lost = threading.Event()
    first.keep_alive(0.05, on_lost=lost.set)  # its renewal (If-Match on its old ETag) is refused
    assert lost.wait(30)
    first.release()  # a conditional delete on its old ETag: the successor's lease stays
    assert stored_token(bucket) == second.token and second.held()
    second.keep_alive(0.05)
    time.sleep(0.3)  # a few renewals: each an If-Match on the ETag of the last
    assert second.held() and not second.lost.is_set()
    second.release()
    assert not bucket.exists("x.lock")


@pytest.mark.cluster
def test_s3_run_lock_and_registry_lock_use_conditional_writes(bucket):
    first = RunLock(bucket, "r")
    first.acquire(say=lambda _: None)
    assert first._lease is not None and first._lease.kind == "conditional"
    with pytest.raises(ConfigError, match=rf"--name r: the run is in use by pid {os.getpid()} on "):
        RunLock(bucket, "r").acquire(say=lambda _: None)
    first.release()
    assert not bucket.exists(".locks", "r.lock")

    reg, rival = ChampionStore(bucket, "fam"), ChampionStore(bucket, "fam")
    with reg.lock(timeout_s=10):
        reg._fence()  # ours: a promote would go ahead
        with pytest.raises(ChampionLockError, match=r"is locked by another driver \(waited 0.5 s\)"), rival.lock(0.5):
            pass
        reg.dir.write_json({"holder": "other", "expires_at": time.time() + 600}, ".lease")  # lost
        with pytest.raises(ChampionLockError, match="lost its lock to another driver"):
            reg._fence()
    assert json.loads(reg.dir.read_bytes(".lease"))["holder"] == "other"  # not deleted: not ours


def test_the_s3_client_targets_the_endpoint_pyarrow_resolved(tmp_path, monkeypatch):
    """No server needed: the client is built from the URI's and environment's endpoint."""
    import pyarrow.fs as pafs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    fs, _ = pafs.FileSystem.from_uri("s3://bkt/x?endpoint_override=127.0.0.1:9&scheme=http&region=eu-west-1")
    got = coordination._s3_client(fs)
    assert got is not None
    client = got[1]
    assert client.meta.endpoint_url == "http://127.0.0.1:9" and client.meta.region_name == "eu-west-1"
    assert client.meta.config.s3["addressing_style"] == "path"
