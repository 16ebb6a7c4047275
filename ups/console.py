"""The driver's console: the project's lines, progress on anything long, and the run's W&B rows.

Workers do not print; their events (ups/events.py) come here. On a terminal, progress is a tqdm
bar; otherwise (a log file, CI, `ray job logs`) a plain line every `interval_s`, so a long epoch
or phase is never silent for longer than that and the log holds no control codes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from ups.events import EpochRow, Event, Say, StepProgress
from ups.tracking import RunLogger

INTERVAL_S = 10.0


def _eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Console:
    def __init__(
        self,
        *,
        quiet: bool = False,
        wandb: RunLogger | None = None,
        stream: IO[str] | None = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.quiet, self.wandb, self.interval_s = quiet, wandb, interval_s
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._bar_key: tuple[str, int] | None = None
        self._last_line = float("-inf")  # the last plain progress line
        self._last_print = time.monotonic()  # anything at all
        self._lock = threading.Lock()

    # -- lines ----------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self._close_bar()
            print(text, file=self.stream, flush=True)
            self._last_print = time.monotonic()

    def handle(self, event: Event) -> None:
        """One event from a training process."""
        if isinstance(event, Say):
            self.say(f"[{event.stage}] {event.text}")
        elif isinstance(event, EpochRow):
            if self.wandb is not None:
                self.wandb.log_row(event.stage, event.row)
            self.say(format_row(event))
        elif isinstance(event, StepProgress) and not self.quiet:
            self._progress(event)

    # -- progress -------------------------------------------------------------------------------

    def _progress(self, e: StepProgress) -> None:
        with self._lock:
            if self.tty:
                self._bar_update(e)
                return
            now = time.monotonic()
            if now - self._last_line < self.interval_s:
                return
            self._last_line = self._last_print = now
            print(plain_progress(e), file=self.stream, flush=True)

    def _bar_update(self, e: StepProgress) -> None:
        from tqdm import tqdm

        key = (e.stage, e.epoch)
        if self._bar_key != key:
            self._close_bar()
            self._bar = tqdm(total=e.steps, desc=f"[{e.stage}] epoch {e.epoch}/{e.epochs}", file=self.stream,
                             leave=False, dynamic_ncols=True, unit="step")  # fmt: skip
            self._bar_key = key
        self._bar.n = e.step
        self._bar.set_postfix(loss=f"{e.loss:.4g}", samples_s=f"{e.samples_per_s:.0f}", eta=_eta(e.eta_s),
                              refresh=False)  # fmt: skip
        self._bar.refresh()
        self._last_print = time.monotonic()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_key = None, None

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[None]:
        """A step of the driver's own (loading data, building the cache, evaluating): a line every
        `interval_s` while it runs, and one with its time when it is done."""
        t0 = time.monotonic()
        with self.watch(label, " so far"):
            yield
        self.say(f"== {label}: {time.monotonic() - t0:.1f}s")

    @contextlib.contextmanager
    def watch(self, label: str, suffix: str = "") -> Iterator[None]:
        """Work that may go quiet (a worker group starting, a long validation, a checkpoint upload,
        a driver phase): a line whenever the console has been silent for `interval_s`."""
        if self.quiet:
            yield
            return
        t0 = time.monotonic()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(min(1.0, self.interval_s)):
                if time.monotonic() - self._last_print >= self.interval_s:
                    self.say(f"   {label}: {time.monotonic() - t0:.0f}s{suffix}")

        ticker = threading.Thread(target=tick, name="ups-watch", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()

    def close(self) -> None:
        with self._lock:
            self._close_bar()


def format_row(e: EpochRow) -> str:
    r = e.row
    shown = f"  {e.metric}={r[e.metric]:.4g}" if e.metric in r else ""
    return (
        f"[{e.stage}] epoch {r['epoch']}/{e.epochs}  train_loss={r['train_loss']:.4g}{shown}  "
        f"lr={r['lr']:.2e}  {r['epoch_time_s']:.1f}s"
    )


def plain_progress(e: StepProgress) -> str:
    pct = 100 * e.step / max(e.steps, 1)
    return (
        f"[{e.stage}] epoch {e.epoch}/{e.epochs}  step {e.step}/{e.steps} ({pct:.0f}%)  "
        f"loss={e.loss:.4g}  {e.samples_per_s:.0f} samples/s  epoch ETA {_eta(e.eta_s)}"
    )
