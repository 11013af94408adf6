"""How often hosted programs may make a host rewrite a TPM-protected counter table.

A host whose counter table is protected by its parent's rollback-protected seal
(:class:`taonet.hosts._counters.ParentTableSealer`) reseals the whole table on every
counter change, and on a Linux host rooted in a TPM 2.0 every reseal is one
``TPM2_NV_Increment``: a hosted program calling ``RollbackProtectedSeal`` (or raising a
counter) in a loop would wear the TPM's NV memory, tens of writes a second, for as
long as it runs. :class:`WriteBudget` bounds that with two token buckets:

* per program (the program the host launched, whatever names it extended to):
  :data:`PROGRAM_BURST` changes at once, then one every :data:`PROGRAM_INTERVAL`
  seconds (60 an hour);
* for the whole host: :data:`HOST_BURST` changes at once, then one every
  :data:`HOST_INTERVAL` seconds (360 an hour, about 3.2 million a year at the most:
  within the NV counter endurance TPM vendors state, and far below what a loop
  reached without it).

A change over budget is refused with a :class:`~taonet.HostError` saying when to retry;
nothing is written and no counter moves. The buckets live in memory: a restarted host
starts with full buckets (a restart costs more than it lets a program write).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import trio

from taonet._errors import HostError

__all__ = [
    "HOST_BURST",
    "HOST_INTERVAL",
    "PROGRAM_BURST",
    "PROGRAM_INTERVAL",
    "WriteBudget",
]

#: Counter changes one program may make at once, then one per PROGRAM_INTERVAL seconds.
PROGRAM_BURST: Final = 32
PROGRAM_INTERVAL: Final = 60.0
#: Counter changes all programs of one host may make at once, then one per HOST_INTERVAL.
HOST_BURST: Final = 128
HOST_INTERVAL: Final = 10.0
#: Buckets kept before full ones (which say nothing) are forgotten.
_KEPT: Final = 1024


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class WriteBudget:
    """Token buckets per program and for the host (see the module docstring).

    ``clock`` gives seconds (default :func:`trio.current_time`, so a test's mock clock
    drives it); it must not go backwards.
    """

    def __init__(
        self,
        *,
        program_burst: int = PROGRAM_BURST,
        program_interval: float = PROGRAM_INTERVAL,
        host_burst: int = HOST_BURST,
        host_interval: float = HOST_INTERVAL,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if min(program_burst, host_burst) < 1 or min(program_interval, host_interval) <= 0:
            raise ValueError("a write budget needs bursts of at least 1 and positive intervals")
        self._program = (float(program_burst), float(program_interval))
        self._host_rate = (float(host_burst), float(host_interval))
        self._clock = clock
        self._programs: dict[str, _Bucket] = {}
        self._host: _Bucket | None = None

    def take(self, program: str) -> None:
        """Spend one change of ``program`` and of the host; HostError (nothing spent)
        when either budget is used up, saying how long until the next change."""
        now = self._clock()
        mine = self._programs.get(program)
        if mine is None:
            self._forget_full(now)
            mine = self._programs[program] = _Bucket(self._program[0], now)
        if self._host is None:
            self._host = _Bucket(self._host_rate[0], now)
        _refill(mine, now, *self._program)
        _refill(self._host, now, *self._host_rate)
        if mine.tokens < 1:
            raise HostError(
                "this program changes its rollback-protected counters too often: each change "
                f"rewrites a TPM NV counter, so a program may make {self._program[0]:.0f} at "
                f"once and then one every {self._program[1]:g} s; retry in "
                f"{_wait(mine, self._program[1])} s"
            )
        if self._host.tokens < 1:
            raise HostError(
                "the programs on this host change rollback-protected counters too often: each "
                f"change rewrites a TPM NV counter, so the host allows {self._host_rate[0]:.0f} "
                f"at once and then one every {self._host_rate[1]:g} s; retry in "
                f"{_wait(self._host, self._host_rate[1])} s"
            )
        mine.tokens -= 1
        self._host.tokens -= 1

    def _forget_full(self, now: float) -> None:
        if len(self._programs) < _KEPT:
            return
        for name, bucket in list(self._programs.items()):
            _refill(bucket, now, *self._program)
            if bucket.tokens >= self._program[0]:
                del self._programs[name]


def _refill(bucket: _Bucket, now: float, burst: float, interval: float) -> None:
    elapsed = max(0.0, now - bucket.stamp)
    bucket.tokens = min(burst, bucket.tokens + elapsed / interval)
    bucket.stamp = now


def _wait(bucket: _Bucket, interval: float) -> int:
    return max(1, math.ceil((1 - bucket.tokens) * interval))
