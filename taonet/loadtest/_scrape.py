"""The server's own figures, scraped from its Prometheus endpoint during a run.

The parent of a run (:mod:`taonet.loadtest._run`) scrapes ``GET /metrics`` of the
target's server once before the workers start, then at each scrape point (every
interval, or a whole number of intervals so that a run has at most
:data:`MAX_SCRAPES`), and once after they finish. A scrape is bounded: loopback
addresses only (checked when the :class:`Scraper` is made), :data:`MAX_BYTES` of
answer, a time limit for the whole exchange (connection included); what it reads
is parsed with prometheus-client's parser, and only the service's known families
are kept, at most :data:`MAX_SERIES` series each, label values cut to
:data:`MAX_LABEL` characters. A scrape that fails (refused, too slow, too large, not
HTTP 200, not the exposition format, or ``out_of_range``: a count or sum that is NaN,
negative or above :data:`MAX_VALUE`) is counted by kind, never fatal; it is left out,
so the next interval is measured from the last good scrape. Bucket bounds that are
negative, NaN or finite above :data:`MAX_VALUE` are dropped (``+Inf`` is kept), so
every figure of the ``server`` section is finite (an estimate that is not is None).

:meth:`Scraper.section` makes the report's ``server`` section from the differences
between consecutive scrapes: per scrape interval the request rate by operation and
outcome, latency percentiles estimated from the histogram buckets (linear within a
bucket, as Prometheus's ``histogram_quantile``; they are bucket estimates, not
measured values), open channels, handshakes by outcome and the audit-write latency;
and the same over the measured window (the first scrape at or after the warm-up to
the last one) and over the whole run (first to last scrape).
"""

from __future__ import annotations

import itertools
import math
import re
import socket
import time
from collections import Counter
from typing import Any, Final

import attrs

from taonet._log import get_logger
from taonet.loadtest._config import loopback_address
from taonet.loadtest._extras import metrics_parser

__all__ = [
    "MAX_BYTES",
    "MAX_SCRAPES",
    "MAX_SERIES",
    "MAX_VALUE",
    "ScrapeError",
    "Scraper",
    "Snapshot",
]

log = get_logger(__name__)

#: The largest answer read from a metrics endpoint, head included.
MAX_BYTES: Final = 1 << 20
#: Series kept per metric family (the services' label sets are far smaller).
MAX_SERIES: Final = 64
#: Characters kept of a label value.
MAX_LABEL: Final = 40
#: Scrapes in one run at most (the scrape interval grows with the run).
MAX_SCRAPES: Final = 1000
#: Seconds one scrape may take, at most (less when the interval is short).
MAX_SCRAPE_SECONDS: Final = 1.0
#: The largest count, sum or bucket bound taken from a scrape (2**53: a float's
#: integers are exact up to it; sums of MAX_SERIES of them, divided by a scrape
#: interval, stay finite).
MAX_VALUE: Final = float(2**53)
#: The services whose families are read: ``taonet_<service>_...``.
SERVICES: Final = ("secret_server", "domain_service")
#: Samples read from one exposition, at most (a service's are a few hundred).
_MAX_SAMPLES: Final = 20_000
_PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
_STATUS: Final = re.compile(rb"HTTP/1\.[01] (\d{3})")


class ScrapeError(Exception):
    """A scrape that failed; ``kind`` says how (counted in the report)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


Buckets = tuple[tuple[float, float], ...]


@attrs.frozen
class Snapshot:
    """One scrape: seconds from the run's start and the service's figures then."""

    t: float
    requests: dict[str, float]
    latency: dict[str, Buckets]
    open_channels: float | None
    handshakes: dict[str, float]
    audit: Buckets
    audit_sum: float


def fetch(address: tuple[str, int], *, timeout: float, limit: int = MAX_BYTES) -> str:
    """The body of ``GET /metrics`` at ``address`` (loopback), read within ``timeout``
    seconds in all and ``limit`` bytes; ScrapeError otherwise."""
    host, port = loopback_address(f"[{address[0]}]:{address[1]}")
    deadline = time.monotonic() + timeout
    data = bytearray()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(
                b"GET /metrics HTTP/1.1\r\nHost: " + host.encode("ascii") + b"\r\n"
                b"Accept: text/plain\r\nConnection: close\r\n\r\n"
            )
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScrapeError("timeout", f"no whole answer within {timeout:g} s")
                sock.settimeout(left)
                chunk = sock.recv(min(65536, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
                if len(data) > limit:
                    raise ScrapeError("too_large", f"the answer is over {limit} bytes")
    except TimeoutError:
        raise ScrapeError("timeout", f"no whole answer within {timeout:g} s") from None
    except OSError as exc:
        raise ScrapeError("unreachable", f"cannot scrape {host}:{port}: {exc}") from None
    head, sep, body = bytes(data).partition(b"\r\n\r\n")
    status = _STATUS.match(head)
    if not sep or status is None:
        raise ScrapeError("not_http", "the answer is not HTTP/1.x")
    if status.group(1) != b"200":
        raise ScrapeError("status", f"HTTP status {status.group(1).decode()}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ScrapeError("unparsable", "the answer is not UTF-8 text") from None


def _label(value: object) -> str:
    return str(value)[:MAX_LABEL]


def parse_exposition(text: str, t: float, service: str | None) -> tuple[str | None, Snapshot]:
    """The figures of ``service`` (None: the first of :data:`SERVICES` found) in the
    exposition ``text``; ScrapeError if it does not parse."""
    text_string_to_metric_families = metrics_parser().text_string_to_metric_families
    # Samples by name (what a family is called varies with the exposition's TYPE
    # lines; a sample's name does not), at most _MAX_SAMPLES of them.
    by_name: dict[str, list[Any]] = {}
    kept = 0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if kept >= _MAX_SAMPLES:
                    break
                by_name.setdefault(sample.name, []).append(sample)
                kept += 1
    except Exception as exc:  # the parser raises whatever it meets: all mean the same
        raise ScrapeError("unparsable", f"not the exposition format: {str(exc)[:100]}") from None
    if service is None:
        service = next((s for s in SERVICES if f"taonet_{s}_requests_total" in by_name), None)
    prefix = f"taonet_{service}"

    def samples(name: str, suffix: str = "") -> list[Any]:
        return by_name.get(f"{prefix}_{name}{suffix}", [])

    def number(value: Any) -> float:
        # A counter is never negative, NaN or past MAX_VALUE: such a scrape is refused
        # (clamping it to 0 would show the next interval a jump that never happened).
        v = float(value)
        if not 0 <= v <= MAX_VALUE:
            raise ScrapeError("out_of_range", f"a sample's value {v:g} is out of range")
        return v

    requests: dict[str, float] = {}
    for s in samples("requests", "_total"):
        key = f"{_label(s.labels.get('operation'))}:{_label(s.labels.get('outcome'))}"
        if key in requests or len(requests) < MAX_SERIES:
            requests[key] = number(s.value)
    latency: dict[str, list[tuple[float, float]]] = {}
    for s in samples("request_seconds", "_bucket"):
        op = _label(s.labels.get("operation"))
        if op in latency or len(latency) < MAX_SERIES:
            bound = _bound(s.labels.get("le"))
            if bound is not None:
                latency.setdefault(op, []).append((bound, number(s.value)))
    gauge = samples("open_channels")
    handshakes: dict[str, float] = {}
    for s in samples("handshakes", "_total")[:MAX_SERIES]:
        handshakes[_label(s.labels.get("outcome"))] = number(s.value)
    audit = [(bound, number(s.value)) for s in samples("audit_write_seconds", "_bucket")
             if (bound := _bound(s.labels.get("le"))) is not None]  # fmt: skip
    audit_sum = samples("audit_write_seconds", "_sum")
    return service, Snapshot(
        t=t,
        requests=requests,
        latency={op: _sorted(b) for op, b in latency.items()},
        open_channels=number(gauge[0].value) if gauge else None,
        handshakes=handshakes,
        audit=_sorted(audit),
        audit_sum=number(audit_sum[0].value) if audit_sum else 0.0,
    )


def _bound(text: object) -> float | None:
    """A bucket's upper bound: ``+Inf`` (or an unreadable one) is infinite; None (the
    bucket is dropped) for a bound that is negative, NaN or finite above MAX_VALUE."""
    try:
        value = float(str(text))
    except ValueError:
        return math.inf
    if value == math.inf:
        return value
    return value if 0 <= value <= MAX_VALUE else None


def _sorted(buckets: list[tuple[float, float]]) -> Buckets:
    return tuple(sorted(buckets)[:MAX_SERIES])


def _delta(after: Buckets, before: Buckets) -> Buckets:
    earlier = dict(before)
    return tuple((le, max(0.0, count - earlier.get(le, 0.0))) for le, count in after)


def _add(a: Buckets, b: Buckets) -> Buckets:
    if not a:
        return b
    other = dict(b)
    return tuple((le, count + other.get(le, 0.0)) for le, count in a)


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (seconds) estimated from cumulative ``buckets`` (upper
    bound, count), linear within the bucket it falls in; the highest finite bound if
    it falls in the ``+Inf`` bucket; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = (bound if not math.isinf(bound) else lower), count
    return lower


def _estimates(buckets: Buckets) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, q in _PERCENTILES:
        value = quantile(q, buckets)
        out[key] = _finite(None if value is None else value * 1000)
    return out


def _finite(value: float | None) -> float | None:
    """``value`` rounded, or None when it is not a finite number (never in a report)."""
    return round(value, 3) if value is not None and math.isfinite(value) else None


def _counts(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: max(0.0, v - before.get(k, 0.0)) for k, v in sorted(after.items())}


def _between(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """What the server did between scrapes ``a`` and ``b``."""
    seconds = max(b.t - a.t, 1e-9)
    requests = _counts(b.requests, a.requests)
    latency: Buckets = ()
    for op, buckets in b.latency.items():
        latency = _add(latency, _delta(buckets, a.latency.get(op, ())))
    audit = _delta(b.audit, a.audit)
    audit_count = audit[-1][1] if audit else 0.0
    ok = sum(v for k, v in requests.items() if k.endswith(":ok"))
    return {
        "from_s": round(a.t, 3),
        "to_s": round(b.t, 3),
        "requests": {k: int(v) for k, v in requests.items() if v},
        "per_s": {k: round(v / seconds, 1) for k, v in requests.items() if v},
        "ok_per_s": round(ok / seconds, 1),
        "latency_ms_est": _estimates(latency),
        "open_channels": None if b.open_channels is None else int(b.open_channels),
        "handshakes": {k: int(v) for k, v in _counts(b.handshakes, a.handshakes).items() if v},
        "audit_writes": int(audit_count),
        "audit_write_ms_est": {
            **_estimates(audit),
            "mean": _finite(1000 * max(0.0, b.audit_sum - a.audit_sum) / audit_count)
            if audit_count
            else None,
        },
    }


class Scraper:
    """Scrapes one metrics endpoint during a run (see the module's text)."""

    def __init__(
        self,
        address: tuple[str, int],
        *,
        interval: float,
        run_seconds: float,
        service: str | None = None,
    ) -> None:
        loopback_address(f"[{address[0]}]:{address[1]}")  # ConfigError off loopback
        metrics_parser()  # MissingExtraError (one line) before the run, not during it
        self.address = address
        self.service = service
        #: Seconds between scrapes: a whole number of intervals.
        self.period = interval * max(1, math.ceil(run_seconds / MAX_SCRAPES / interval))
        self.timeout = min(MAX_SCRAPE_SECONDS, max(0.1, self.period / 2))
        self.snapshots: list[Snapshot] = []
        self.failures: Counter[str] = Counter()
        self._next = 0

    def due(self, t: float) -> bool:
        """Whether a scrape point has been reached at ``t`` seconds from the start."""
        return t >= self._next * self.period and self._next <= MAX_SCRAPES

    def scrape(self, t: float) -> None:
        """Scrape now (``t`` seconds from the start); a failure is counted, not raised."""
        self._next = max(self._next, math.floor(t / self.period) + 1)
        if len(self.snapshots) > MAX_SCRAPES + 2:
            return
        try:
            text = fetch(self.address, timeout=self.timeout)
            service, snapshot = parse_exposition(text, t, self.service)
        except ScrapeError as exc:
            self.failures[exc.kind] += 1
            if sum(self.failures.values()) == 1:
                log.warning("loadtest_scrape_failed", kind=exc.kind, error=str(exc)[:200])
            return
        self.service = service
        self.snapshots.append(snapshot)

    def section(self, *, warmup: float) -> dict[str, Any]:
        """The report's ``server`` section (see the module's text)."""
        shots = self.snapshots
        out: dict[str, Any] = {
            "service": self.service,
            "endpoint": f"{self.address[0]}:{self.address[1]}",
            "note": "server-side figures scraped from its /metrics; latency percentiles"
            " (latency_ms_est) are estimates from the histogram buckets, linear within a"
            " bucket; a request's server time runs from its read to its answer ready",
            "scrapes": len(shots),
            "failed_scrapes": dict(sorted(self.failures.items())),
            "period_s": round(self.period, 3),
            "measured": None,
            "run": None,
            "timeline": [],
        }
        if len(shots) < 2:
            return out
        out["timeline"] = [_between(a, b) for a, b in itertools.pairwise(shots)]
        start = next((s for s in shots if s.t >= warmup - 1e-3), shots[0])
        if start is not shots[-1]:
            out["measured"] = _between(start, shots[-1])
        out["run"] = _between(shots[0], shots[-1])
        return out
