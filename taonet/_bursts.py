"""Logging a burst of like events as one line, for servers under a flood.

A server refusing a flood of connections must not write a line for each: that
turns the flood into a disk-filling attack. :class:`Bursts` logs the first event of
a burst (one that comes after :data:`BURST_GAP` seconds without one), then at most
one line every :data:`BURST_REMINDER` seconds while the burst lasts, each with
``events``, the count since the previous line. Time is trio's clock, so tests can
drive it with ``trio.testing.MockClock``.
"""

from __future__ import annotations

import math
from typing import Any, Final

import trio

__all__ = ["BURST_GAP", "BURST_REMINDER", "Bursts"]

#: Seconds without an event after which the next one starts a new burst (and is logged).
BURST_GAP: Final = 10.0
#: While a burst lasts, a line at most this often.
BURST_REMINDER: Final = 60.0


class Bursts:
    """Logs the first of a burst of like events, then one line a minute while it lasts."""

    def __init__(self, event: str, logger: Any) -> None:
        self._event: Final = event
        self._log: Final = logger
        self._last = -math.inf  # when the latest event happened
        self._logged = -math.inf  # when the latest line was logged
        self._since = 0  # events since that line

    def note(self, **fields: Any) -> None:
        """One more event: logged (at warning) if it starts a burst or a reminder is due."""
        now = trio.current_time()
        self._since += 1
        if now - self._last >= BURST_GAP or now - self._logged >= BURST_REMINDER:
            self._log.warning(self._event, events=self._since, **fields)
            self._logged, self._since = now, 0
        self._last = now
