"""The optional dependencies of the load generator, imported only when used.

``hdrhistogram`` (module ``hdrh``) keeps the latencies, ``rich`` draws the live
progress line and the tables, and ``prometheus-client``'s parser reads the servers'
metrics; all come with ``pip install 'taonet[loadtest]'``. Without them,
:func:`histogram_class`, :func:`require_rich` and :func:`metrics_parser` raise
:class:`MissingExtraError`, whose message is one line that says what to install.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from taonet import ConfigError

__all__ = [
    "MissingExtraError",
    "histogram_class",
    "metrics_parser",
    "require_extras",
    "require_rich",
]

#: What to install when an extra is missing.
INSTALL_HINT: Final = "pip install 'taonet[loadtest]'"


class MissingExtraError(ConfigError):
    """An optional dependency of ``taonet loadtest`` is not installed."""


def _import(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"taonet loadtest needs {package}, which is not installed: {INSTALL_HINT}"
        ) from None


def histogram_class() -> Any:
    """``hdrh.histogram.HdrHistogram`` (from the hdrhistogram distribution)."""
    return _import("hdrh.histogram", "hdrhistogram").HdrHistogram


def metrics_parser() -> Any:
    """``prometheus_client.parser`` (from the prometheus-client distribution)."""
    return _import("prometheus_client.parser", "prometheus-client")


def require_rich() -> None:
    """Check that rich can be imported (the CLI's live line and tables need it)."""
    _import("rich", "rich")


def require_extras() -> None:
    """Check that both optional dependencies can be imported (MissingExtraError if not)."""
    histogram_class()
    require_rich()
