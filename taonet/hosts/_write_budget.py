"""How often hosted programs may make a host rewrite a TPM-protected counter table.

A host whose counter table is protected by its parent's rollback-protected seal
(:class:`taonet.hosts._counter_store.ParentTableSealer`) reseals the whole table on every
counter change, and on a Linux host rooted in a TPM 2.0 every reseal is one
``TPM2_NV_Increment``: a hosted program calling ``RollbackProtectedSeal`` (or raising a
counter) in a loop would wear the TPM's NV memory, tens of writes a second, for as
long as it runs. :class:`WriteBudget` bounds that with three token buckets, each
change charged to a :class:`WriteAccount` (a program's measurement and the uid the
host runs it as):

* per program: :data:`PROGRAM_BURST` changes at once, then one every
  :data:`PROGRAM_INTERVAL` seconds (60 an hour). A Linux host keys it by the uid and
  the program's measurement (its hash), not its name: restarts under ``program_ids``
  (a new ``Program(id, ...)`` name each time) and the names a program extends to all
  share one bucket;
* per uid: :data:`UID_BURST` changes at once, then one every :data:`UID_INTERVAL`
  seconds (180 an hour), for all programs the host runs as that uid together, so
  several programs (or scripts) of one user cannot take more than half the host's
  rate;
* for the whole host: :data:`HOST_BURST` changes at once, then one every
  :data:`HOST_INTERVAL` seconds (360 an hour, about 3.2 million a year at the most:
  within the NV counter endurance TPM vendors state, and far below what a loop
  reached without it). The last :data:`HOST_RESERVE` of it are kept for privileged
  accounts (the programs a Linux host runs as root or as the host's owner): other
  users together can never take them, so they cannot starve root's programs.

Several other users together can still use up the unreserved part of the host's
budget between them (each within its uid's share): the reserve protects root and the
owner, not one other user from another.

A change over budget is refused with a :class:`~taonet.HostError` saying when to retry;
nothing is written and no counter moves. The buckets live in memory: a restarted host
starts with full buckets (a restart costs more than it lets a program write).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

import trio

from taonet._errors import HostError

__all__ = [
    "HOST_BURST",
    "HOST_INTERVAL",
    "HOST_RESERVE",
    "PROGRAM_BURST",
    "PROGRAM_INTERVAL",
    "UID_BURST",
    "UID_INTERVAL",
    "WriteAccount",
    "WriteBudget",
]

#: Counter changes one program may make at once, then one per PROGRAM_INTERVAL seconds.
PROGRAM_BURST: Final = 32
PROGRAM_INTERVAL: Final = 60.0
#: Counter changes all programs run as one uid may make at once, then one per UID_INTERVAL.
UID_BURST: Final = 64
UID_INTERVAL: Final = 20.0
#: Counter changes all programs of one host may make at once, then one per HOST_INTERVAL.
HOST_BURST: Final = 128
HOST_INTERVAL: Final = 10.0
#: Of the host's tokens, how many only privileged accounts (root, the host's owner) spend
#: (by default a quarter of the host's burst).
HOST_RESERVE: Final = HOST_BURST // 4
#: Buckets kept (per kind) before full ones (which say nothing) are forgotten.
_KEPT: Final = 1024


@dataclass(frozen=True, slots=True)
class WriteAccount:
    """Who a counter change is charged to.

    ``program`` names the program's bucket (a Linux host: its measurement); ``uid`` the
    uid the host runs it as (None: no per-uid bucket, as for a host whose programs all
    run as one user); ``privileged`` whether it may spend the host's reserve.
    """

    program: str
    uid: int | None = None
    privileged: bool = True


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class WriteBudget:
    """Token buckets per program, per uid and for the host (see the module docstring).

    ``host_reserve`` (None: a quarter of ``host_burst``) is the part of the host's
    bucket only privileged accounts spend.

    ``clock`` gives seconds (default :func:`trio.current_time`, so a test's mock clock
    drives it); it must not go backwards.
    """

    def __init__(
        self,
        *,
        program_burst: int = PROGRAM_BURST,
        program_interval: float = PROGRAM_INTERVAL,
        uid_burst: int = UID_BURST,
        uid_interval: float = UID_INTERVAL,
        host_burst: int = HOST_BURST,
        host_interval: float = HOST_INTERVAL,
        host_reserve: int | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if (
            min(program_burst, uid_burst, host_burst) < 1
            or min(program_interval, uid_interval, host_interval) <= 0
        ):
            raise ValueError("a write budget needs bursts of at least 1 and positive intervals")
        if host_reserve is None:
            host_reserve = host_burst // 4
        if not 0 <= host_reserve < host_burst:
            raise ValueError("the host's reserve must be at least 0 and below its burst")
        self._program = (float(program_burst), float(program_interval))
        self._uid = (float(uid_burst), float(uid_interval))
        self._host_rate = (float(host_burst), float(host_interval))
        self._reserve = float(host_reserve)
        self._clock = clock
        self._programs: dict[Hashable, _Bucket] = {}
        self._uids: dict[Hashable, _Bucket] = {}
        self._host: _Bucket | None = None

    def take(self, account: WriteAccount | str) -> None:
        """Spend one change of ``account`` (a str: a privileged program of that name),
        of its uid and of the host; HostError (nothing spent) when any budget is used
        up, saying how long until the next change."""
        if isinstance(account, str):
            account = WriteAccount(account)
        now = self._clock()
        mine = self._bucket(self._programs, (account.uid, account.program), now, self._program)
        users = None
        if account.uid is not None:
            users = self._bucket(self._uids, account.uid, now, self._uid)
        if self._host is None:
            self._host = _Bucket(self._host_rate[0], now)
        _refill(self._host, now, *self._host_rate)
        if mine.tokens < 1:
            raise HostError(
                "this program changes its rollback-protected counters too often: each change "
                f"rewrites a TPM NV counter, so a program may make {self._program[0]:.0f} at "
                f"once and then one every {self._program[1]:g} s; retry in "
                f"{_wait(mine.tokens, self._program[1])} s"
            )
        if users is not None and users.tokens < 1:
            raise HostError(
                f"the programs of uid {account.uid} change rollback-protected counters too "
                "often: each change rewrites a TPM NV counter, so a uid's programs may make "
                f"{self._uid[0]:.0f} at once and then one every {self._uid[1]:g} s; retry in "
                f"{_wait(users.tokens, self._uid[1])} s"
            )
        floor = 0.0 if account.privileged else self._reserve
        if self._host.tokens - floor < 1:
            raise HostError(
                "the programs on this host change rollback-protected counters too often: each "
                f"change rewrites a TPM NV counter, so the host allows {self._host_rate[0]:.0f} "
                f"at once and then one every {self._host_rate[1]:g} s"
                + ("" if account.privileged else f" ({self._reserve:.0f} kept for root)")
                + f"; retry in {_wait(self._host.tokens - floor, self._host_rate[1])} s"
            )
        mine.tokens -= 1
        if users is not None:
            users.tokens -= 1
        self._host.tokens -= 1

    @staticmethod
    def _bucket(
        buckets: dict[Hashable, _Bucket],
        key: Hashable,
        now: float,
        rate: tuple[float, float],
    ) -> _Bucket:
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= _KEPT:
                for old, full in list(buckets.items()):
                    _refill(full, now, *rate)
                    if full.tokens >= rate[0]:
                        del buckets[old]
            bucket = buckets[key] = _Bucket(rate[0], now)
        _refill(bucket, now, *rate)
        return bucket


def _refill(bucket: _Bucket, now: float, burst: float, interval: float) -> None:
    elapsed = max(0.0, now - bucket.stamp)
    bucket.tokens = min(burst, bucket.tokens + elapsed / interval)
    bucket.stamp = now


def _wait(tokens: float, interval: float) -> int:
    return max(1, math.ceil((1 - tokens) * interval))
