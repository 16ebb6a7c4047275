"""One holder at a time: the lease behind the run lock (ups/runlock.py: one driver per run) and
the champion store's lock (ups/champions.py: one promoter per family).

A `Lease` is one would-be holder's hold on one lock file. `lease_for` picks how by where the file
lives, and each way states what it guarantees under which assumptions:

- Local disk (`FlockLease`): an `flock` on the file, held by the holder's open file. The kernel
  drops it when the process dies, however it dies, so a dead holder never blocks the next one; no
  clock, no expiry. Safe among processes whose kernel (or network filesystem) honours `flock` on
  that file. The file's contents only name the holder for messages.

- S3 (`ConditionalLease`, boto3 against the same endpoint and credentials pyarrow uses): the lease
  is created with `PutObject If-None-Match: *` (refused when the object exists) and renewed, taken
  over when stale, and deleted with `If-Match: <etag>` (refused when the object changed since it
  was read). Every record carries a fresh random token, so two writers' ETags never coincide.
  Guarantee, with no assumption on clocks or request latency: of the writers that read one version
  of the lease, at most one replaces it, so ownership passes only through one successful
  conditional write; a holder whose lease was taken over fails its next renewal (412) and its
  fence. Clocks decide only *when* a lease counts as dead: a rival takes over a lease whose
  `expires_at` (on the writer's clock) has passed on its own clock. So a holder that is silent
  past its expiry (paused, partitioned) may lose the lease, and the fence before a critical write
  (`held`: the stored ETag is ours and our expiry is still ahead) protects a write that completes
  before that expiry, given clocks that agree to well under the lease.
  Whether the store honours the preconditions is probed once per process and bucket (a precondition
  that must fail is tried on a scratch object): an S3-compatible store that ignores or rejects the
  headers gets the timed lease below, with a warning.

- GCS would use the same scheme with generations: create with `ifGenerationMatch=0`, renew, take
  over and delete with `ifGenerationMatch=<generation>`. It is not implemented (nothing here can
  test it), so GCS and any other store get the timed lease.

- Timed lease (`TimedLease`, the fallback for stores without conditional writes): Fischer's timed
  mutual exclusion. An acquirer that finds no live lease writes its own (whole-object PUT), waits
  `settle_s`, reads it back and holds the lock only if its token is still there; an attempt whose
  read-to-write took over `settle_s` on its own clock does not claim (its record lapses at its
  expiry). Guarantee: at most one holder, given whole-object writes with strong read-after-write
  consistency (S3, GCS), a write that is visible once it returns and never lands after its writer
  gave up on it, wall clocks that agree to well under the lease, and a holder that reaches the
  store before its lease expires. Fischer's own bound (the write within `settle_s` of the read that
  found the lease free) is checked by every acquirer, not assumed. A holder that finds another
  token in the lease stops renewing and fails its fence.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.fs as pafs

from ups.storage import Storage, redact


@dataclass(frozen=True)
class Claim:
    """What a lock file says: whose it is (token), until when it counts (wall-clock seconds; inf:
    never free, e.g. unreadable), and the user's own record (to name the holder)."""

    token: str
    expires_at: float
    record: Any = None


@dataclass(frozen=True)
class Format:
    """How a user's lock file reads and writes. `encode(token)` is our record with a fresh expiry
    (or heartbeat); `decode(raw)` never raises: an unreadable file is whatever Claim the user picks
    (held forever, or a dead holder's)."""

    encode: Callable[[str], bytes]
    decode: Callable[[bytes], Claim]


class Busy(Exception):
    """Someone else holds the lock (`claim`, or None when it cannot be named), or the attempt could
    not claim it safely (`why`)."""

    def __init__(self, claim: Claim | None, why: str = "") -> None:
        super().__init__(why or "held by another holder")
        self.claim, self.why = claim, why


class Lease:
    """One holder's hold on one lock file: `try_acquire`, then `keep_alive` (renewals on a daemon
    thread), `held` as the fence before a critical write, and `release`."""

    kind = "lease"
    pause = 0.25  # seconds between attempts while `acquire` waits

    def __init__(self, fmt: Format, token: str | None = None) -> None:
        self.fmt, self.token = fmt, token or uuid.uuid4().hex
        self.stop, self.lost = threading.Event(), threading.Event()
        self._mutex = threading.Lock()  # a renewal and our own fence never interleave
        self._thread: threading.Thread | None = None
        self.acquired = False

    def try_acquire(self) -> Claim | None:
        """Take the lock now, or raise Busy. Returns the dead holder's claim that was taken over
        (None when the lock was free)."""
        before = self._acquire()
        self.acquired = True
        return before

    # What each store implements.
    def _acquire(self) -> Claim | None:
        raise NotImplementedError

    def _renew(self) -> bool:
        """Renew our lease; False when it is no longer ours. OSError: the store did not answer."""
        raise NotImplementedError

    def _ours(self) -> bool:
        """The store shows our lease, not expired."""
        raise NotImplementedError

    def _delete_if_ours(self) -> None:
        raise NotImplementedError

    # Shared.
    def keep_alive(self, period_s: float, on_lost: Callable[[], None] | None = None) -> None:
        """Renew every `period_s` until `release`; on finding the lease taken, set `lost`, call
        `on_lost` once and stop (never renew what is no longer ours)."""
        self._thread = threading.Thread(target=self._keep, args=(period_s, on_lost), name="lease", daemon=True)
        self._thread.start()

    def _keep(self, period_s: float, on_lost: Callable[[], None] | None) -> None:
        while not self.stop.wait(period_s):
            with self._mutex:
                if self.stop.is_set():
                    return  # released meanwhile: write nothing back
                try:
                    if self._renew():
                        continue
                except OSError:
                    continue  # a transient store error: the next period tries again, inside the lease
                self.lost.set()
            if on_lost:
                on_lost()
            return

    def held(self) -> bool:
        """The fence: True while the lease is still ours (checked at the store)."""
        with self._mutex:
            return self.acquired and not self.lost.is_set() and self._ours()

    def release(self) -> None:
        """Stop renewing, then delete the lease only if it is still ours (never a successor's).
        An unreachable store leaves it to expire by itself."""
        self.stop.set()
        if self._thread:
            self._thread.join(timeout=60)  # a renewal in flight finishes before the lease is deleted
        if self.acquired:  # an attempt that never claimed leaves its record to expire (see TimedLease)
            with self._mutex, contextlib.suppress(OSError):
                self._delete_if_ours()


def acquire(lease: Lease, timeout_s: float) -> Claim | None:
    """`lease.try_acquire()` until it succeeds, at jittered intervals, for at most `timeout_s`;
    then the last Busy is raised."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            return lease.try_acquire()
        except Busy:
            if time.monotonic() >= end:
                raise
        time.sleep(lease.pause * random.uniform(0.5, 1.5))


# ----------------------------------------------------------------------------------------------
# Local disk: flock.


class FlockLease(Lease):
    kind = "flock"
    pause = 0.05

    def __init__(self, store: Storage, file: str, fmt: Format, token: str | None = None) -> None:
        super().__init__(fmt, token)
        self.store, self.file = store, file
        self._f: IO[bytes] | None = None  # the open file that carries the flock

    def _read(self) -> Claim | None:
        try:
            with open(self.store.path(self.file), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        return self.fmt.decode(raw) if raw.strip() else None  # empty: released cleanly

    def _acquire(self) -> Claim | None:
        self.store.makedirs()
        # Held open while held (the flock lives with the open file); not inherited by children (PEP 446).
        f = open(self.store.path(self.file), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise Busy(self._read()) from None
        f.seek(0)
        raw = f.read()
        before = self.fmt.decode(raw) if raw.strip() else None  # a record left behind: its holder died
        f.truncate(0)
        f.write(self.fmt.encode(self.token))
        f.flush()
        self._f = f
        return before

    def keep_alive(self, period_s: float, on_lost: Callable[[], None] | None = None) -> None:
        pass  # nothing to renew: the kernel holds it while the file is open

    def _ours(self) -> bool:
        return self._f is not None

    def release(self) -> None:
        if self._f is not None:
            self._f.truncate(0)  # released cleanly: nobody to name
            self._f.close()  # drops the flock
            self._f = None


# ----------------------------------------------------------------------------------------------
# Stores without conditional writes: Fischer's timed exclusion.


class TimedLease(Lease):
    kind = "timed"

    def __init__(self, store: Storage, file: str, fmt: Format, token: str | None = None, *, settle_s: float) -> None:
        super().__init__(fmt, token)
        self.store, self.file, self.settle_s = store, file, settle_s
        self.pause = min(1.0, settle_s)

    def _read(self) -> Claim | None:
        try:
            raw = self.store.read_bytes(self.file)
        except FileNotFoundError:  # pyarrow's answer for a missing file or key, on every filesystem
            return None
        return self.fmt.decode(raw)

    def _write(self) -> None:
        self.store.write_bytes(self.fmt.encode(self.token), self.file)

    def _acquire(self) -> Claim | None:
        t0 = time.monotonic()
        before = self._read()
        if before is not None and before.expires_at > time.time():
            raise Busy(before)
        self._write()
        if time.monotonic() - t0 > self.settle_s:  # a faster rival that read before our write may be in
            raise Busy(None, f"the store took over {self.settle_s:g} s from reading the lock to writing it")
        time.sleep(self.settle_s)  # any rival that also found it free has written by now
        now = self._read()
        if now is None or now.token != self.token:
            raise Busy(now)
        return before

    def _renew(self) -> bool:
        if not self._ours():  # expired or taken over: never renew what is not (or no longer) ours
            return False
        self._write()
        return True

    def _ours(self) -> bool:
        claim = self._read()
        return claim is not None and claim.token == self.token and claim.expires_at > time.time()

    def _delete_if_ours(self) -> None:
        claim = self._read()
        if claim is not None and claim.token == self.token:
            self.store.fs.delete_file(self.store.path(self.file))


# ----------------------------------------------------------------------------------------------
# S3: conditional writes.


class ConditionalLease(Lease):
    kind = "conditional"

    def __init__(self, client: Any, bucket: str, key: str, fmt: Format, token: str | None = None) -> None:
        super().__init__(fmt, token)
        self.client, self.bucket, self.key = client, bucket, key
        self.etag: str | None = None  # the version we wrote last
        self.expires_at = 0.0  # its expiry

    def _get(self) -> tuple[Claim | None, str | None]:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            return self.fmt.decode(r["Body"].read()), r["ETag"]
        except Exception as e:
            if _status(e) == 404:
                return None, None
            raise _oserror("GetObject", e) from None

    def _put(self, **condition: str) -> bool:
        """Write our record under `condition`; False when another writer changed the object first."""
        body = self.fmt.encode(self.token)
        try:
            r = self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json", **condition
            )
        except Exception as e:
            if _status(e) not in (404, 409, 412):  # 409: a concurrent conditional write won
                raise _oserror("PutObject", e) from None
            claim, etag = self._get()
            if claim is None or claim.token != self.token or etag is None:
                return False
            # Our own write whose answer was lost and retried by botocore: it is ours.
            self.etag, self.expires_at = etag, claim.expires_at
            return True
        self.etag, self.expires_at = r["ETag"], self.fmt.decode(body).expires_at
        return True

    def _acquire(self) -> Claim | None:
        for _ in range(3):  # the object changed between our read and write: read it again
            before, etag = self._get()
            mine = before is not None and before.token == self.token
            if before is not None and not mine and before.expires_at > time.time():
                raise Busy(before)
            if self._put(**({"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag})):
                return None if mine else before
        raise Busy(self._get()[0])

    def _renew(self) -> bool:
        # Safe even past our expiry: a takeover needs the same ETag, so only one of the two lands.
        return self.etag is not None and self._put(IfMatch=self.etag)

    def _ours(self) -> bool:
        try:
            etag = self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
        except Exception as e:
            if _status(e) == 404:
                return False
            raise _oserror("HeadObject", e) from None
        return etag == self.etag and self.expires_at > time.time()

    def _delete_if_ours(self) -> None:
        if self.etag is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            return
        except Exception as e:
            if _status(e) in (404, 409, 412):
                return  # not ours any more (or gone): a successor's lease stays
            if not _unsupported(e):
                raise _oserror("DeleteObject", e) from None
        # A store without conditional deletes: a live lease of ours is only replaced after it
        # expires, so checking then deleting is safe while we hold it.
        if self._ours():
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)
            except Exception as e:
                raise _oserror("DeleteObject", e) from None


_clients: dict[str, Any] = {}
_conditional: dict[tuple[str, str], bool] = {}  # (client, bucket) -> the store honours preconditions
_probe_mutex = threading.Lock()
_warned: set[str] = set()


def _status(e: Exception) -> int | None:
    """The HTTP status of a botocore ClientError (None for anything else)."""
    response = getattr(e, "response", None)
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None


def _code(e: Exception) -> str:
    response = getattr(e, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _unsupported(e: Exception) -> bool:
    """The store rejected a request header it does not implement (If-Match, If-None-Match)."""
    return _status(e) == 501 or _code(e) in ("NotImplemented", "InvalidArgument", "InvalidRequest")


def _oserror(op: str, e: Exception) -> OSError:
    """A store error as OSError (what pyarrow raises, what callers retry on), without secrets."""
    what = _code(e) or type(e).__name__
    return OSError(f"S3 {op}: {redact(what)} ({_status(e) or 'no answer'})")


def _s3_client(fs: pafs.FileSystem) -> tuple[str, Any] | None:
    """A boto3 client for the endpoint, region and credentials pyarrow resolved for `fs` (from the
    URI's query and the environment), with its cache key; None when that cannot be reproduced."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        return None
    opts: dict[str, Any] = fs.__reduce__()[1][0]  # the options pyarrow resolved, as it pickles them
    if opts.get("role_arn"):
        return None  # pyarrow assumes a role itself; not reproduced here
    key = json.dumps(opts, sort_keys=True, default=str)  # held in memory only: it may hold keys
    if key in _clients:
        return key, _clients[key]
    endpoint = opts.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{opts.get('scheme') or 'https'}://{endpoint}"
    s3: dict[str, Any] = {}
    if endpoint and not opts.get("force_virtual_addressing"):
        s3["addressing_style"] = "path"  # as Arrow does with an endpoint override
    config = Config(
        connect_timeout=5,
        read_timeout=20,
        retries={"max_attempts": 3, "mode": "standard"},
        s3=s3,
        **({"signature_version": UNSIGNED} if opts.get("anonymous") else {}),
    )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=getattr(fs, "region", None) or opts.get("region") or None,
        aws_access_key_id=opts.get("access_key") or None,
        aws_secret_access_key=opts.get("secret_key") or None,
        aws_session_token=opts.get("session_token") or None,
        verify=opts.get("tls_ca_file_path") or None,
        config=config,
    )
    _clients[key] = client
    return key, client


def _honours_preconditions(client: Any, bucket: str, folder: str) -> bool:
    """Whether the store refuses a PUT whose If-None-Match / If-Match precondition fails (a store
    that ignores the headers would let two creators both succeed). Tried on a scratch object."""
    probe = f"{folder}/.conditional-probe-{uuid.uuid4().hex}".lstrip("/")
    try:
        client.put_object(Bucket=bucket, Key=probe, Body=b"probe")
        refused = 0
        for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"00000000000000000000000000000000"'}):
            try:
                client.put_object(Bucket=bucket, Key=probe, Body=b"again", **condition)
            except Exception as e:
                if _status(e) == 412:
                    refused += 1
                elif _unsupported(e):
                    return False
                else:
                    raise _oserror("PutObject", e) from None
        return refused == 2
    finally:
        with contextlib.suppress(Exception):
            client.delete_object(Bucket=bucket, Key=probe)


def lease_for(store: Storage, file: str, fmt: Format, token: str | None = None, *, settle_s: float) -> Lease:
    """The lease on `store/file` for this store: flock on a local disk, conditional writes on S3
    (when the store honours them), else the timed lease with `settle_s`."""
    if store.local:
        return FlockLease(store, file, fmt, token)
    if isinstance(store.fs, pafs.S3FileSystem):
        got = _s3_client(store.fs)
        bucket, _, key = store.path(file).partition("/")
        if got is not None:
            ident, client = got
            with _probe_mutex:
                if (ident, bucket) not in _conditional:
                    _conditional[ident, bucket] = _honours_preconditions(client, bucket, key.rpartition("/")[0])
            if _conditional[ident, bucket]:
                return ConditionalLease(client, bucket, key, fmt, token)
            _warn_once(
                f"s3://{bucket}: the store does not honour conditional writes (If-None-Match, If-Match)", settle_s
            )
        else:
            _warn_once("boto3 is not installed (pip install 'ups-ray[s3]'): no conditional writes on S3", settle_s)
    return TimedLease(store, file, fmt, token, settle_s=settle_s)


def _warn_once(why: str, settle_s: float) -> None:
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"{why}; locks use a timed lease (safe while a write takes under {settle_s:g} s)", stacklevel=3)
