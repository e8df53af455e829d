"""A fill as the UI and the API show it: its stored record plus the live
progress of the process running it (bytes, rate, readers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from withcache.server.fill.fill import Fill
from withcache.server.records import ACTIVE_STATES, FillRecord, FillState


@dataclass(frozen=True)
class FillRow:
    """A fill with its live progress, as the progress table and the API show it."""

    record: FillRecord
    url: str
    bytes_done: int
    total: int | None
    rate: float
    clients: int

    @property
    def active(self) -> bool:
        return self.record.state in ACTIVE_STATES

    @property
    def percent(self) -> int | None:
        if self.record.state is FillState.DONE:
            return 100
        if not self.total:
            return None
        return min(100, int(self.bytes_done * 100 / self.total))

    @property
    def seconds(self) -> float | None:
        """How long a finished fill took, start to end (None if it never started)."""
        r = self.record
        if r.state in ACTIVE_STATES or r.started_at is None or r.finished_at is None:
            return None
        return max(0.0, r.finished_at - r.started_at)

    @property
    def average_rate(self) -> float | None:
        """Bytes per second over a finished fill's whole run."""
        seconds = self.seconds
        return self.bytes_done / seconds if seconds and self.bytes_done else None

    @property
    def eta(self) -> float | None:
        if self.record.state is not FillState.RUNNING or not self.total or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.bytes_done) / self.rate)


def fill_rows(
    records: list[FillRecord], live: Callable[[int], Fill | None], display: Callable[[str], str]
) -> list[FillRow]:
    """The records with the progress of those running here (`live`)."""
    rows = []
    for record in records:
        fill = live(record.id) if record.state in ACTIVE_STATES else None
        if fill and fill.elsewhere:
            fill = None  # another host runs it: its saved progress is the news
        rows.append(
            FillRow(
                record=record,
                url=display(record.url),  # an active fill's URL may hold a signed query
                bytes_done=fill.bytes_done if fill else record.bytes_done,
                total=(fill.total if fill and fill.total is not None else record.total),
                rate=fill.rate if fill else 0.0,
                clients=fill.clients if fill else 0,
            )
        )
    return rows
