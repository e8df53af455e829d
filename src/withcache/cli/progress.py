"""A one-line progress bar, drawn only on a terminal (stdlib only).

Off a terminal (a pipe, a CI log) nothing is drawn: the command prints its
result when it is done, so logs get one line instead of hundreds.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import TextIO

from withcache.server.settings import format_duration, format_size

BAR_CELLS = 24
REDRAW_SECONDS = 0.2
POLL_SECONDS = 0.5  # between progress polls, once a job has run a while


class Bar:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.enabled = stream.isatty()
        self._drawn = False

    def show(
        self, done: int, total: int | None, rate: float = 0.0, eta: float | None = None,
        note: str = "",
    ) -> None:  # fmt: skip
        if not self.enabled:
            return
        parts = []
        if total:
            parts.append(f"{min(100, done * 100 // total):3d}%")
            parts.append(f"{format_size(done)} of {format_size(total)}")
        elif done:
            parts.append(format_size(done))
        self.draw(done / total if total else None, [*parts, *figures(rate, eta), note])

    def draw(self, fraction: float | None, parts: list[str]) -> None:
        """A bar filled to `fraction` (none if None), then the non-empty `parts`."""
        if not self.enabled:
            return
        if fraction is not None:
            filled = min(BAR_CELLS, int(BAR_CELLS * fraction))
            parts = ["[" + "#" * filled + " " * (BAR_CELLS - filled) + "]", *parts]
        parts = [part for part in parts if part]
        width = shutil.get_terminal_size((80, 24)).columns - 1
        line = "  ".join(parts)[:width]
        self._stream.write("\r" + line.ljust(width))
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line, so what follows starts on a fresh one."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def figures(rate: float, eta: float | None) -> list[str]:
    """The rate and the time left, as the bar shows them."""
    shown = [f"{format_size(rate)}/s"] if rate else []
    return [*shown, f"ETA {format_duration(eta)}"] if eta is not None else shown


class Meter:
    """Bytes moved by this command (an upload, an export) and their rate,
    smoothed over a second or so; says when the bar is due a redraw."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.done = 0
        self.rate = 0.0
        self._mark = (time.monotonic(), 0)
        self._drawn = 0.0

    def add(self, count: int) -> bool:
        """Count `count` more bytes; True when the bar should be redrawn (5 times a second)."""
        self.done += count
        now = time.monotonic()
        started, before = self._mark
        if now - started >= 1.0:
            sample = (self.done - before) / (now - started)
            self.rate = sample if not self.rate else 0.5 * self.rate + 0.5 * sample
            self._mark = (now, self.done)
        if now - self._drawn >= REDRAW_SECONDS:
            self._drawn = now
            return True
        return False

    @property
    def eta(self) -> float | None:
        if not self.total or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


def pauses() -> Iterator[float]:
    """Waits between polls: short ones first (small jobs end quickly), then POLL_SECONDS."""
    pause = 0.05
    while True:
        yield pause
        pause = min(POLL_SECONDS, pause * 2)
