"""A sweep's progress as a whole: trials done, running, failed and queued, time spent and time left.

On a terminal the line is redrawn in place (and log lines are printed above it); elsewhere (a pipe,
a CI log) a plain line is printed when a trial ends, so logs stay readable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

REDRAW_SECONDS = 0.5  # a terminal line is redrawn at most this often


def format_seconds(seconds: float | None) -> str:
    """1:05, 1:02:09; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Counts:
    done: int = 0      # finished (done or diverged), including trials finished before this run
    running: int = 0   # training here, or held by another process
    failed: int = 0    # attempted and not finished (failed, interrupted, a worker that died)
    queued: int = 0    # not started yet

    @property
    def total(self) -> int:
        return self.done + self.running + self.failed + self.queued


class SweepProgress:
    """The one-line progress of a sweep.

    `live`: redraw the line in place (only for a terminal); otherwise a plain line per change.
    The estimate of time left is the rate of trials finished by this run so far, applied to the
    trials still to run: with N trials at once it already reflects N.
    """

    def __init__(self, name: str, stream, *, live: bool | None = None, clock=time.monotonic):
        self.name = name
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self._clock = clock
        self._began = clock()
        self._finished_here = 0
        self._counts = Counts()
        self._shown = ""      # the line as last drawn (live) or printed (plain)
        self._drawn_at = 0.0
        self._on_screen = False

    def elapsed(self) -> float:
        return self._clock() - self._began

    def remaining(self) -> float | None:
        """Seconds left at the rate this run has finished trials so far; None before the first."""
        left = self._counts.running + self._counts.queued
        if left == 0:
            return 0.0
        if self._finished_here == 0:
            return None
        return self.elapsed() / self._finished_here * left

    def line(self) -> str:
        c = self._counts
        return (f"{self.name}: {c.done}/{c.total} done, {c.running} running, {c.failed} failed, {c.queued} queued; "
                f"{format_seconds(self.elapsed())} elapsed, ~{format_seconds(self.remaining())} left")

    def update(self, counts: Counts, *, finished_here: int | None = None, force: bool = False) -> None:
        """New counts; `finished_here` counts the trials this run completed (for the estimate).

        A live line is redrawn when anything changed (and every REDRAW_SECONDS for the clock); a
        plain line is printed when a trial ended (done or failed changed), or when `force`d."""
        ended = (counts.done, counts.failed) != (self._counts.done, self._counts.failed)
        changed = counts != self._counts
        self._counts = counts
        if finished_here is not None:
            self._finished_here = finished_here
        if self.live:
            if force or changed or self._clock() - self._drawn_at >= REDRAW_SECONDS:
                self._draw()
        elif ended or force:
            self._print_plain()

    def log(self, text: str) -> None:
        """A message line, printed above the live line (which is redrawn under it)."""
        if self.live and self._on_screen:
            self.stream.write("\r\x1b[K")
        self.stream.write(text if text.endswith("\n") else text + "\n")
        if self.live and self._on_screen:
            self._draw()
        else:
            self.stream.flush()

    def close(self) -> None:
        """End the live line with a newline, so what follows starts on its own line."""
        if self.live and self._on_screen:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self._on_screen = False

    def _draw(self) -> None:
        self._shown = self.line()
        self.stream.write("\r\x1b[K" + self._shown)
        self.stream.flush()
        self._drawn_at = self._clock()
        self._on_screen = True

    def _print_plain(self) -> None:
        text = self.line()
        self.stream.write(text + "\n")
        self.stream.flush()
        self._shown = text


class ProgressLog:
    """A write()-able stream that routes complete lines through `progress.log`, so the trial
    messages of run_trial and of the sweep loop print above a live progress line."""

    def __init__(self, progress: SweepProgress, prefix: str = ""):
        self._progress = progress
        self._prefix = prefix
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if line.strip():
                self._progress.log(self._prefix + line)
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            self._progress.log(self._prefix + self._partial)
        self._partial = ""
