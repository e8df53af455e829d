"""A one-line progress bar, drawn only on a terminal (stdlib only).

Off a terminal (a pipe, a CI log) nothing is drawn: the command prints its
result when it is done, so logs get one line instead of hundreds.
"""

from __future__ import annotations

import shutil
from typing import TextIO

from withcache.server.settings import format_duration, format_size

BAR_CELLS = 24


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
            filled = min(BAR_CELLS, BAR_CELLS * done // total)
            parts.append("[" + "#" * filled + " " * (BAR_CELLS - filled) + "]")
            parts.append(f"{min(100, done * 100 // total):3d}%")
            parts.append(f"{format_size(done)} of {format_size(total)}")
        elif done:
            parts.append(format_size(done))
        if rate:
            parts.append(f"{format_size(rate)}/s")
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        if note:
            parts.append(note)
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
