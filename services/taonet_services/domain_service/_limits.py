"""How many refusals the domain service records one by one, per client and in all.

Anyone may connect to the domain service anonymously, and every refused request
used to cost one row of the audit log. :class:`RefusalLimiter` bounds that:

* each client (an IPv4 address, or an IPv6 /64 network, see :func:`client_key`)
  has a token bucket of ``client_burst`` refusals refilled at ``client_rate`` per
  second; all clients together share one more bucket (``total_burst``,
  ``total_rate``), so many addresses cannot add up to a flood either;
* a refusal that finds a token in both buckets is recorded in full; any other is
  only counted, and the counts are written as one summary per client per
  ``summary_interval`` (at most ``max_summaries`` of them, the rest folded into
  one summary for ``"*"``);
* while a client's bucket is empty its requests are refused unread
  (:meth:`RefusalLimiter.admit` says False) and counted the same way;
* the table of clients holds at most ``max_clients``; the least recently seen
  one is evicted (its counts go to ``"*"``), so the limiter's own memory is
  bounded whatever the number of addresses.

Pure: no I/O, no trio; the clock (monotonic seconds) is passed in.
"""

from __future__ import annotations

import collections
import ipaddress
import math
from collections.abc import Callable, Mapping
from typing import Final

import attrs

__all__ = [
    "OVERFLOW_CLIENT",
    "ConnectionLimits",
    "ConnectionShares",
    "RefusalLimiter",
    "RefusalLimits",
    "RefusalSummary",
    "client_key",
]

#: The client named in the summary of counts that have no row of their own.
OVERFLOW_CLIENT: Final = "*"
#: Longest client key kept (keys of unknown transports are cut to this).
_MAX_KEY: Final = 64


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RefusalLimits:
    """The knobs of :class:`RefusalLimiter` (see the module docstring).

    The defaults let one client have 10 refusals recorded in full, then one every
    10 seconds; all clients together 100, then one every 5 seconds; and write at
    most 9 summary rows a minute. With every field at its bound (about 2.5 kB a
    row) a flood from any number of addresses adds at most about 2.5 MB an hour.
    """

    client_burst: int = attrs.field(default=10, validator=_count)
    client_rate: float = attrs.field(default=0.1, validator=_positive)
    total_burst: int = attrs.field(default=100, validator=_count)
    total_rate: float = attrs.field(default=0.2, validator=_positive)
    max_clients: int = attrs.field(default=4096, validator=_count)
    summary_interval: float = attrs.field(default=60.0, validator=_positive)
    max_summaries: int = attrs.field(default=8, validator=_count)


@attrs.frozen
class RefusalSummary:
    """Refusals of one client that were counted, not recorded one by one."""

    client: str
    count: int
    #: Refusals per error code.
    codes: Mapping[str, int]
    #: The first and the last of them, on the limiter's clock.
    first: float
    last: float


def client_key(host: str) -> str:
    """The rate-limited unit for a peer address: an IPv4 address or an IPv6 /64.

    IPv4-mapped IPv6 addresses count as their IPv4 address. Anything that is not
    an IP address (another transport) is kept as given, cut to 64 characters.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host[:_MAX_KEY]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.define
class _Bucket:
    tokens: float
    stamp: float

    def refill(self, now: float, rate: float, burst: int) -> None:
        if now > self.stamp:
            self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
            self.stamp = now

    def take(self, now: float, rate: float, burst: int) -> bool:
        self.refill(now, rate, burst)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@attrs.define
class _Pending:
    codes: collections.Counter[str] = attrs.Factory(collections.Counter)
    first: float = 0.0
    last: float = 0.0

    def add(self, code: str, now: float, count: int = 1) -> None:
        if not self.codes:
            self.first = now
        self.codes[code] += count
        self.last = now

    def merge(self, other: _Pending) -> None:
        if not other.codes:
            return
        if not self.codes:
            self.first = other.first
        else:
            self.first = min(self.first, other.first)
        self.codes.update(other.codes)
        self.last = max(self.last, other.last)

    def summary(self, client: str) -> RefusalSummary:
        return RefusalSummary(
            client=client,
            count=sum(self.codes.values()),
            codes=dict(self.codes),
            first=self.first,
            last=self.last,
        )


@attrs.define
class _Client:
    bucket: _Bucket
    pending: _Pending = attrs.Factory(_Pending)


class RefusalLimiter:
    """Decides which refusals are recorded in full (see the module docstring)."""

    def __init__(self, limits: RefusalLimits | None = None, *, clock: Callable[[], float]) -> None:
        self.limits: Final = limits if limits is not None else RefusalLimits()
        self.clock: Final = clock
        now = clock()
        self._clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()
        self._total = _Bucket(float(self.limits.total_burst), now)
        self._overflow = _Pending()
        self._next_summary = now + self.limits.summary_interval

    def __len__(self) -> int:
        """How many clients the table holds."""
        return len(self._clients)

    def admit(self, client: str, *, code: str) -> bool:
        """Whether to look at a request from ``client`` at all.

        False while the client has no refusal left; the request then counts as a
        refusal with ``code`` (for the summary) and should be answered unread.
        """
        entry = self._clients.get(client)
        if entry is None:
            return True
        now = self.clock()
        self._clients.move_to_end(client)
        limits = self.limits
        entry.bucket.refill(now, limits.client_rate, limits.client_burst)
        if entry.bucket.tokens >= 1:
            return True
        entry.pending.add(code, now)
        return False

    def refused(self, client: str, code: str) -> bool:
        """Count a refusal; True if it should be recorded in full, False if summarized."""
        now = self.clock()
        limits = self.limits
        entry = self._entry(client, now)
        if entry.bucket.take(now, limits.client_rate, limits.client_burst) and self._total.take(
            now, limits.total_rate, limits.total_burst
        ):
            return True
        entry.pending.add(code, now)
        return False

    def summaries(self, *, all_now: bool = False) -> list[RefusalSummary]:
        """Take the summaries whose interval is over (every pending one with ``all_now``).

        At most ``max_summaries`` clients get a summary of their own, those with the
        most refusals; the others are folded into one for :data:`OVERFLOW_CLIENT`.
        Clients with nothing pending and a full bucket are dropped from the table.
        """
        now = self.clock()
        if not all_now and now < self._next_summary:
            return []
        self._next_summary = now + self.limits.summary_interval
        limits = self.limits
        pending: list[tuple[str, _Pending]] = []
        for client, entry in list(self._clients.items()):
            if entry.pending.codes:
                pending.append((client, entry.pending))
                entry.pending = _Pending()
            else:
                entry.bucket.refill(now, limits.client_rate, limits.client_burst)
                if entry.bucket.tokens >= limits.client_burst:
                    del self._clients[client]
        pending.sort(key=lambda item: -sum(item[1].codes.values()))
        result = [p.summary(client) for client, p in pending[: limits.max_summaries]]
        for _, rest in pending[limits.max_summaries :]:
            self._overflow.merge(rest)
        if self._overflow.codes:
            result.append(self._overflow.summary(OVERFLOW_CLIENT))
            self._overflow = _Pending()
        return result

    def _entry(self, client: str, now: float) -> _Client:
        entry = self._clients.get(client)
        if entry is not None:
            self._clients.move_to_end(client)
            return entry
        while len(self._clients) >= self.limits.max_clients:
            _, evicted = self._clients.popitem(last=False)
            self._overflow.merge(evicted.pending)
        entry = _Client(_Bucket(float(self.limits.client_burst), now))
        self._clients[client] = entry
        return entry


@attrs.frozen(kw_only=True)
class ConnectionLimits:
    """How the domain service shares its connections (see :class:`ConnectionShares`).

    Anonymous clients (programs not yet certified, and anyone) may hold at most
    ``anonymous_share`` of the channel server's connection cap, ``anonymous_per_address``
    of them from one address (IPv4 address or IPv6 /64); one is closed after
    ``anonymous_requests`` requests or once it has been open ``anonymous_lifetime``
    seconds (checked between requests), and one address may ask for the CRL
    ``crl_burst`` times, then ``crl_rate`` times a second. A certified program may hold
    ``per_principal`` connections wherever it connects from; certified programs are
    never rate limited. So anonymous clients from any number of addresses leave a
    quarter of the connections (256 of the default 1024) to certified servers.
    """

    anonymous_share: float = attrs.field(default=0.75, validator=_positive)
    anonymous_per_address: int = attrs.field(default=16, validator=_count)
    anonymous_requests: int = attrs.field(default=16, validator=_count)
    anonymous_lifetime: float = attrs.field(default=60.0, validator=_positive)
    per_principal: int = attrs.field(default=32, validator=_count)
    crl_burst: int = attrs.field(default=10, validator=_count)
    crl_rate: float = attrs.field(default=1.0, validator=_positive)
    max_clients: int = attrs.field(default=4096, validator=_count)


class ConnectionShares:
    """Who may hold the domain service's connections (see :class:`ConnectionLimits`).

    Pure: no I/O; the clock (monotonic seconds) is passed in.
    """

    def __init__(
        self,
        max_connections: int,
        limits: ConnectionLimits | None = None,
        *,
        clock: Callable[[], float],
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.limits: Final = limits if limits is not None else ConnectionLimits()
        self.clock: Final = clock
        self.max_connections: Final = max_connections
        #: Anonymous connections held at once, at most.
        self.max_anonymous: Final = max(
            1, min(max_connections, int(max_connections * min(self.limits.anonymous_share, 1.0)))
        )
        self._held: dict[tuple[bool, str], int] = {}
        self.anonymous = 0
        self._crl_buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def held(self, key: str, *, certified: bool) -> int:
        """Connections held now by ``key`` (a principal's key, or an address)."""
        return self._held.get((certified, key), 0)

    def admit(self, key: str, *, certified: bool) -> bool:
        """Take a slot for a connection of ``key``; False (and nothing taken) if over."""
        held = self._held.get((certified, key), 0)
        limits = self.limits
        if certified:
            if held >= limits.per_principal:
                return False
        elif held >= limits.anonymous_per_address or self.anonymous >= self.max_anonymous:
            return False
        self._held[(certified, key)] = held + 1
        if not certified:
            self.anonymous += 1
        return True

    def release(self, key: str, *, certified: bool) -> None:
        """Give back the slot :meth:`admit` took."""
        left = self._held[(certified, key)] - 1
        if left:
            self._held[(certified, key)] = left
        else:
            del self._held[(certified, key)]
        if not certified:
            self.anonymous -= 1

    def crl_allowed(self, client: str) -> bool:
        """Whether an anonymous ``client`` (address) may ask for the CRL now."""
        now = self.clock()
        limits = self.limits
        bucket = self._crl_buckets.get(client)
        if bucket is None:
            while len(self._crl_buckets) >= limits.max_clients:
                self._crl_buckets.popitem(last=False)
            bucket = self._crl_buckets[client] = _Bucket(float(limits.crl_burst), now)
        else:
            self._crl_buckets.move_to_end(client)
        return bucket.take(now, limits.crl_rate, limits.crl_burst)
