"""Room on the data dir's disk, against the --min-free floor.

Every fill writes its partial file there (local blobs live there too, and so
does the SQLite database), so the floor keeps room for the metadata to be
written and for hits to go on while fills are refused. It only ever reads
the disk's figures; what is promised to running fills is the caller's.
"""

from __future__ import annotations

import os
from pathlib import Path

from withcache.server.settings import MinFree, format_size


class Disk:
    def __init__(self, folder: Path, min_free: MinFree) -> None:
        self._folder = folder
        self._min_free = min_free

    def room(self) -> tuple[int, int]:
        """(free bytes, the floor in bytes)."""
        stat = os.statvfs(self._folder)
        return stat.f_bavail * stat.f_frsize, self._min_free.floor(stat.f_blocks * stat.f_frsize)

    def low(self) -> str | None:
        """Why no fill may start now, if free space is below the floor."""
        free, floor = self.room()
        if free == 0:
            return f"the data dir's disk is full (--min-free {format_size(floor)})"
        if free < floor:
            return (
                f"the data dir's disk is nearly full: {format_size(free)} free, "
                f"below --min-free {format_size(floor)}"
            )
        return None

    def shortfall(self, size: int, promised: int) -> int:
        """Bytes to free before `size` more fit above the floor (with
        `promised` bytes due to other fills); 0 if they fit now."""
        free, floor = self.room()
        return max(0, floor + promised + size - free) if free > 0 else floor + promised + size

    def refuse(self, size: int, promised: int) -> str | None:
        """Why `size` more bytes don't fit above the floor, with `promised`
        bytes already due to other fills; None if they do."""
        free, floor = self.room()
        if free > 0 and free - promised - size >= floor:
            return None
        others = f" ({format_size(promised)} of it due to other fills)" if promised else ""
        state = f"{format_size(free)} free{others}, --min-free {format_size(floor)}"
        if size:
            return f"{format_size(size)} more would not fit on the data dir's disk: {state}"
        return f"the data dir's disk is nearly full: {state}"
