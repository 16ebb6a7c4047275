"""Graceful stop: the driver asks, the workers checkpoint where they are and return.

On SIGTERM (a spot node going away, `ray job stop`, a scheduler's kill) the driver sets a flag
in a small named actor. Rank 0 polls it from a background thread; every STOP_CHECK_STEPS (8)
optimizer steps the ranks agree (one all-reduce) whether to stop, write a just-in-time checkpoint
with the exact position inside the epoch, and return. Running the same command again resumes from that checkpoint.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import ray


@ray.remote(num_cpus=0)
class DriverMailbox:
    """The driver's one actor for its workers: the stop flag they poll, and a mailbox for the
    events rank 0 sends the driver (ups/events.py), held until the driver takes them."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.events: list[dict[str, Any]] = []

    def set(self, reason: str) -> None:
        self.reason = reason

    def get(self) -> str | None:
        return self.reason

    def put(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def take(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out


def mailbox_name(run_uri: str) -> str:
    return "ups-stop-" + hashlib.sha1(run_uri.encode()).hexdigest()[:16]


class StopWatcher:
    """Rank 0's view of the flag, refreshed in the background so the hot loop never waits on it.

    Every `poll_s` (2 s): each poll is an actor call whose thread takes a core from the worker's
    torch threads, and on a 2-core machine at 0.5 s that cost the burgers1d-sized step about 4%
    (bench/RESULTS.md, "What the worker's own polls cost"). A stop is seen up to 2 s later, well
    inside the notice a spot reclaim or a scheduler's SIGTERM gives."""

    def __init__(self, name: str | None, poll_s: float = 2.0) -> None:
        self.event = threading.Event()
        self._done = threading.Event()
        if name is None:
            return
        try:
            self._flag = ray.get_actor(name)
        except ValueError:  # no driver-side flag (e.g. a test driving the loop directly)
            return
        self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True)
        self._thread.start()

    def _poll(self, poll_s: float) -> None:
        while not self._done.wait(poll_s):
            try:
                if ray.get(self._flag.get.remote(), timeout=10):
                    self.event.set()
                    return
            except Exception:  # the driver is gone: nobody is left to ask us to stop
                return

    def requested(self) -> bool:
        return self.event.is_set()

    def close(self) -> None:
        self._done.set()
