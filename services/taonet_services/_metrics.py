"""A service's Prometheus metrics: what the secret server and the domain service count.

:class:`ServiceMetrics` holds one service's metrics in a registry of its own
(prometheus-client, the ``metrics`` extra, imported only when one is made):

* ``taonet_<service>_requests_total{operation, outcome}``: requests answered;
* ``taonet_<service>_request_seconds{operation}``: the time from a request read to
  its answer encoded (a histogram);
* ``taonet_<service>_open_channels``: channels being served now;
* ``taonet_<service>_handshakes_total{outcome}``: handshakes, by
  :class:`taonet.channel.HandshakeOutcome`;
* ``taonet_<service>_audit_write_seconds``: one audit write on the path of an answer
  (the secret server's batch of releases and refusals, the domain service's record of
  an issued certificate), to its commit.

Labels come from fixed sets (:data:`SECRET_OPERATIONS`, :data:`SECRET_OUTCOMES`,
:data:`DOMAIN_OPERATIONS`, :data:`DOMAIN_OUTCOMES`, the handshake outcomes): a value
outside its set is counted as ``other``, so no caller can make a label of a
principal, a secret's name or any other text from a client, and the number of series
is bounded.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from taonet import ConfigError
from taonet.channel import HandshakeOutcome
from taonet.secrets import ErrorCode, Op

__all__ = [
    "DOMAIN_OPERATIONS",
    "DOMAIN_OUTCOMES",
    "OTHER",
    "SECRET_OPERATIONS",
    "SECRET_OUTCOMES",
    "ServiceMetrics",
]

#: The label value for anything outside a label's fixed set.
OTHER: Final = "other"
#: The secret server's operations (``Op`` names, lower case).
SECRET_OPERATIONS: Final = frozenset(op.name.lower() for op in Op)
#: How a secret server request ended: ``ok``, an :class:`~taonet.secrets.ErrorCode`,
#: or ``bad_request`` (a body that did not decode).
SECRET_OUTCOMES: Final = frozenset({"ok", "bad_request", *(code.value for code in ErrorCode)})
#: The domain service's operations.
DOMAIN_OPERATIONS: Final = frozenset({"certify", "get_crl", "watch_crl"})
#: How a domain service request ended: ``ok`` or the ``error_code`` of its answer.
DOMAIN_OUTCOMES: Final = frozenset(
    {
        "ok",
        "bad_request",
        "invalid_attestation",
        "unauthorized",
        "internal_error",
        "rate_limited",
        "too_many_watches",
    }
)
_SERVICES: Final = {
    "secret_server": (SECRET_OPERATIONS, SECRET_OUTCOMES),
    "domain_service": (DOMAIN_OPERATIONS, DOMAIN_OUTCOMES),
}
#: Latency buckets (seconds): 100 us to 10 s.
_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


def _prometheus() -> Any:
    """prometheus_client, or a ConfigError that says which extra to install."""
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.utils
    except ImportError:
        raise ConfigError(
            "metrics need the prometheus-client package: pip install 'taonet[metrics]'"
        ) from None
    return prometheus_client


class _Histogram:
    """Observations in fixed buckets: counts per bucket (the last is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self, bound_text: Callable[[float], str]) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound (``le``), as the exposition has them."""
        out = []
        running = 0
        for bound, count in zip((*_BUCKETS, math.inf), self.counts, strict=True):
            running += count
            out.append((bound_text(bound), float(running)))
        return out


class ServiceMetrics:
    """The metrics of one service (``"secret_server"`` or ``"domain_service"``), in a
    registry of their own (:attr:`registry`). ConfigError when prometheus-client is
    not installed.

    The figures are kept in plain counters and turned into metric families when the
    registry is collected (a scrape): an observation costs a dictionary update, not
    prometheus-client's locks. So they are for one thread: the service's Trio thread,
    where its requests, hooks and scrapes all run.
    """

    def __init__(self, service: str) -> None:
        if service not in _SERVICES:
            raise ValueError(f"unknown service {service!r} (use {', '.join(_SERVICES)})")
        prometheus = _prometheus()
        self.service: Final = service
        self._operations, self._outcomes = _SERVICES[service]
        self._prefix = f"taonet_{service}"
        self._requests: dict[tuple[str, str], int] = {}
        self._latency = {op: _Histogram() for op in (*sorted(self._operations), OTHER)}
        self._open = 0
        self._handshakes: dict[HandshakeOutcome, int] = {o: 0 for o in HandshakeOutcome}
        self._audit = _Histogram()
        self.registry: Final[Any] = prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self, prometheus))

    @property
    def operations(self) -> frozenset[str]:
        """The operation labels this service's metrics know (others count as ``other``)."""
        return self._operations

    @property
    def outcomes(self) -> frozenset[str]:
        """The outcome labels this service's metrics know (others count as ``other``)."""
        return self._outcomes

    def request(self, operation: str, outcome: str, seconds: float) -> None:
        """Count one request answered and observe its latency (labels outside the fixed
        sets are counted as ``other``)."""
        if operation not in self._operations:
            operation = OTHER
        if outcome not in self._outcomes:
            outcome = OTHER
        key = (operation, outcome)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._latency[operation].observe(seconds)

    def request_since(self, operation: str, outcome: str, started: float) -> None:
        """:meth:`request` with the latency from ``started`` (``time.perf_counter()``)."""
        self.request(operation, outcome, time.perf_counter() - started)

    def handshake(self, outcome: HandshakeOutcome) -> None:
        """Count one handshake (``serve_channels(on_handshake=...)``)."""
        self._handshakes[outcome] += 1

    def channel_opened(self) -> None:
        self._open += 1

    def channel_closed(self) -> None:
        self._open -= 1

    @contextlib.contextmanager
    def channel_open(self) -> Iterator[None]:
        """Count a channel as open for the block (a connection handler's lifetime)."""
        self.channel_opened()
        try:
            yield
        finally:
            self.channel_closed()

    def audit_written(self, seconds: float) -> None:
        """Observe one audit write's latency."""
        self._audit.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format (what ``/metrics`` serves)."""
        prometheus: Any = _prometheus()
        return bytes(prometheus.generate_latest(self.registry))

    def label_values(self) -> Iterable[str]:
        """Every label value of every series now exported (for checks)."""
        for family in self.registry.collect():
            for sample in family.samples:
                yield from sample.labels.values()


class _Collector:
    """prometheus-client's view of a :class:`ServiceMetrics` (built at each collect)."""

    def __init__(self, metrics: ServiceMetrics, prometheus: Any) -> None:
        self._metrics = metrics
        self._core = prometheus.core
        self._bound_text: Callable[[float], str] = prometheus.utils.floatToGoString

    def collect(self) -> Iterator[Any]:
        m, core, prefix = self._metrics, self._core, self._metrics._prefix
        requests = core.CounterMetricFamily(
            f"{prefix}_requests",
            "Requests answered, by operation and outcome.",
            labels=("operation", "outcome"),
        )
        for (operation, outcome), count in sorted(m._requests.items()):
            requests.add_metric((operation, outcome), float(count))
        yield requests
        latency = core.HistogramMetricFamily(
            f"{prefix}_request_seconds",
            "Time from a request read to its answer ready, by operation.",
            labels=("operation",),
        )
        for operation, histogram in m._latency.items():
            latency.add_metric(
                (operation,), histogram.buckets(self._bound_text), sum_value=histogram.total
            )
        yield latency
        yield core.GaugeMetricFamily(
            f"{prefix}_open_channels", "Channels being served now.", value=float(m._open)
        )
        handshakes = core.CounterMetricFamily(
            f"{prefix}_handshakes", "Channel handshakes, by outcome.", labels=("outcome",)
        )
        for ending, count in m._handshakes.items():
            handshakes.add_metric((ending.value,), float(count))
        yield handshakes
        audit = core.HistogramMetricFamily(
            f"{prefix}_audit_write_seconds",
            "Audit writes on the path of an answer, to their commit.",
        )
        audit.add_metric((), m._audit.buckets(self._bound_text), sum_value=m._audit.total)
        yield audit
