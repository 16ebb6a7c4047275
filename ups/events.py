"""What the training processes tell the driver: messages, epoch rows, progress inside an epoch.

The driver owns the console and the run's one W&B run (ups/console.py), so everything a user
should see travels to it as an `Event` instead of being printed by a worker (where Ray would
prefix it with `(RayTrainWorker pid=…)` and interleave it with its own logs). In one process the
trainer calls the driver's handler directly; on Ray, rank 0 puts events into the driver's small
actor (the one that also carries the stop flag) and a driver thread drains it (`MailboxPump`).
Events are small dicts on the wire.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union


@dataclass
class Say:
    """A line for the user (a resume, a skipped checkpoint, a stop)."""

    stage: str
    text: str


@dataclass
class EpochRow:
    """A finished epoch's metrics row (the same row metrics.jsonl holds)."""

    stage: str
    row: dict[str, Any]
    metric: str  # the stage's validation metric, a key of `row`
    epochs: int  # the stage's configured epochs


@dataclass
class StepProgress:
    """Where rank 0 is inside an epoch: sent every few seconds, for a progress bar."""

    stage: str
    epoch: int  # 1-based, the epoch in progress
    epochs: int
    step: int  # optimizer steps done in this epoch
    steps: int
    loss: float  # running mean of the epoch so far
    samples_per_s: float
    eta_s: float  # to the end of the epoch, at this epoch's pace


@dataclass
class StageDone:
    """A stage of the group has finished (its export and result.json are written): the driver
    records it in summary.json at once, so a driver that dies later in the same group finds it
    done instead of training it again (its checkpoints may be gone: a group keeps the newest few)."""

    stage: str
    result: dict[str, Any]  # StageResult.to_dict()


Event = Union[Say, EpochRow, StepProgress, StageDone]
Emit = Callable[[Event], None]
_KINDS: dict[str, type] = {c.__name__: c for c in (Say, EpochRow, StepProgress, StageDone)}


def to_wire(event: Event) -> dict[str, Any]:
    return {"kind": type(event).__name__, **dataclasses.asdict(event)}


def from_wire(d: dict[str, Any]) -> Event:
    d = dict(d)
    return _KINDS[d.pop("kind")](**d)


def ignore(_: Event) -> None:
    """The sink of a process with nobody to tell (ranks other than 0)."""


# ----------------------------------------------------------------------------------------------
# Across processes on Ray: through the driver's actor (ups/train/stop.py: DriverMailbox), which holds
# the events until the driver takes them.


def remote_emit(box: Any) -> Emit:
    """A worker's sink: fire-and-forget puts (Ray keeps one caller's calls in order)."""

    def emit(event: Event) -> None:
        box.put.remote(to_wire(event))

    return emit


class MailboxPump:
    """A driver thread that hands the mailbox's events to `handle` every `period_s`, and once more
    when stopped (so nothing sent before a group ended is lost)."""

    def __init__(self, box: Any, handle: Emit, period_s: float = 0.5) -> None:
        self.box, self.handle, self.period_s = box, handle, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ups-events", daemon=True)

    def __enter__(self) -> MailboxPump:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._drain()

    def _drain(self) -> None:
        import ray

        try:
            events = ray.get(self.box.take.remote(), timeout=30)
        except Exception:  # the actor is gone with a dying cluster: nothing more to show
            return
        for e in events:
            try:
                self.handle(from_wire(e))
            except Exception as err:  # showing or logging one event must not lose the rest, or the run
                print(f"warning: an event from the workers could not be shown or logged ({err!r})", flush=True)
