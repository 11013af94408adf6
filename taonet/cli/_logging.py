"""structlog set-up for the command line and services (modules only get loggers)."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None) -> None:
    """Human-readable key=value lines on stderr; level from ``TAONET_LOG`` (info)."""
    name = (level or os.environ.get("TAONET_LOG", "info")).upper()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Module-level loggers are lazy proxies; without caching each call binds anew.
        cache_logger_on_first_use=True,
    )
