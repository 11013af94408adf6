"""Prometheus metrics for the services, and the bounded HTTP endpoint that serves them.

* :class:`ServiceMetrics`: one service's counters and histograms (see
  ``taonet_services._metrics``); needs prometheus-client (``pip install
  'taonet[metrics]'``), imported only when one is made.
* :func:`serve_metrics`: ``GET /metrics`` from Trio, on loopback unless said
  otherwise, bounded in connections, request size and time, one exposition made per
  second at most (``_metrics_http``).
"""

from __future__ import annotations

from taonet_services._metrics import (
    DOMAIN_OPERATIONS,
    DOMAIN_OUTCOMES,
    OTHER,
    SECRET_OPERATIONS,
    SECRET_OUTCOMES,
    ServiceMetrics,
)
from taonet_services._metrics_http import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST,
    DEFAULT_MIN_INTERVAL,
    DEFAULT_TIMEOUT,
    is_loopback,
    serve_metrics,
)

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_REQUEST",
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_TIMEOUT",
    "DOMAIN_OPERATIONS",
    "DOMAIN_OUTCOMES",
    "OTHER",
    "SECRET_OPERATIONS",
    "SECRET_OUTCOMES",
    "ServiceMetrics",
    "is_loopback",
    "serve_metrics",
]

ServiceMetrics.__module__ = __name__
serve_metrics.__module__ = __name__
is_loopback.__module__ = __name__
