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

import time
from collections.abc import Iterable
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
    except ImportError:
        raise ConfigError(
            "metrics need the prometheus-client package: pip install 'taonet[metrics]'"
        ) from None
    return prometheus_client


class ServiceMetrics:
    """The metrics of one service (``"secret_server"`` or ``"domain_service"``), in a
    registry of their own (:attr:`registry`). ConfigError when prometheus-client is
    not installed."""

    def __init__(self, service: str) -> None:
        if service not in _SERVICES:
            raise ValueError(f"unknown service {service!r} (use {', '.join(_SERVICES)})")
        prometheus = _prometheus()
        self.service: Final = service
        self._operations, self._outcomes = _SERVICES[service]
        self.registry: Final[Any] = prometheus.CollectorRegistry(auto_describe=True)
        prefix = f"taonet_{service}"
        registry = self.registry
        self._requests = prometheus.Counter(
            f"{prefix}_requests",
            "Requests answered, by operation and outcome.",
            ("operation", "outcome"),
            registry=registry,
        )
        self._latency = prometheus.Histogram(
            f"{prefix}_request_seconds",
            "Time from a request read to its answer ready, by operation.",
            ("operation",),
            buckets=_BUCKETS,
            registry=registry,
        )
        self._open = prometheus.Gauge(
            f"{prefix}_open_channels", "Channels being served now.", registry=registry
        )
        self._handshakes = prometheus.Counter(
            f"{prefix}_handshakes",
            "Channel handshakes, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self._audit = prometheus.Histogram(
            f"{prefix}_audit_write_seconds",
            "Audit writes on the path of an answer, to their commit.",
            buckets=_BUCKETS,
            registry=registry,
        )
        # Label children made once (labels() takes a lock and builds a tuple each call).
        self._request_children: dict[tuple[str, str], Any] = {}
        self._latency_children = {
            op: self._latency.labels(op) for op in (*sorted(self._operations), OTHER)
        }
        self._handshake_children = {
            outcome: self._handshakes.labels(outcome.value) for outcome in HandshakeOutcome
        }

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
        key = (operation, outcome)
        child = self._request_children.get(key)
        if child is None:
            op = operation if operation in self._operations else OTHER
            out = outcome if outcome in self._outcomes else OTHER
            child = self._requests.labels(op, out)
            if op == operation and out == outcome:  # bounded: only known pairs are kept
                self._request_children[key] = child
        child.inc()
        self._latency_children.get(operation, self._latency_children[OTHER]).observe(seconds)

    def request_since(self, operation: str, outcome: str, started: float) -> None:
        """:meth:`request` with the latency from ``started`` (``time.perf_counter()``)."""
        self.request(operation, outcome, time.perf_counter() - started)

    def handshake(self, outcome: HandshakeOutcome) -> None:
        """Count one handshake (``serve_channels(on_handshake=...)``)."""
        self._handshake_children[outcome].inc()

    def channel_opened(self) -> None:
        self._open.inc()

    def channel_closed(self) -> None:
        self._open.dec()

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
