"""Loggers for taonet's modules that stay quiet until the application decides.

structlog, left unconfigured, prints every event (debug included) to standard
output. A library must not do that to the program that imports it, so taonet's
modules take their loggers from :func:`get_logger` instead of
``structlog.get_logger``:

* once the application has configured structlog (with
  :func:`taonet.configure_logging` or its own ``structlog.configure``), every event
  goes through that configuration, as from any other structlog logger;
* until then, events go to the standard :mod:`logging` logger of the same name,
  rendered as ``event key=value ...``. The ``taonet`` logger has a
  :class:`logging.NullHandler`, as the logging HOWTO asks of libraries, so nothing is
  written unless the application configured :mod:`logging` (``basicConfig`` or its
  own handlers), and then at the levels it chose.

The choice is made at each event, so configuring logging after the first event still
takes effect.

Context bound with :func:`bind_context` (structlog's context variables: the current
task and the tasks it starts) goes with every event of that task either way: through
structlog when the configuration merges context variables (structlog's default
configuration and :func:`taonet.configure_logging` do), and into the rendered line
of the standard :mod:`logging` fallback. :class:`taonet.channel.serve_channels` binds
``conn_id`` and ``remote`` for each connection it accepts, and ``peer`` once the
handshake has named it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any, Final

import structlog
import structlog.contextvars

__all__ = [
    "CONNECTION_KEYS",
    "MAX_LOGGED_NAME",
    "Logger",
    "bind_context",
    "bounded",
    "get_logger",
    "new_conn_id",
    "without_connection",
]

#: What ``serve_channels`` binds to a connection's task (its lines' context).
CONNECTION_KEYS: Final = ("conn_id", "remote", "peer")

#: The most characters of a principal name (or a reason quoting one) put into a log
#: line: a program's name may be tens of kilobytes, and it would be on every line of
#: its connections.
MAX_LOGGED_NAME: Final = 256

logging.getLogger("taonet").addHandler(logging.NullHandler())

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _render(event: str, context: dict[str, Any]) -> str:
    if not context:
        return event
    return event + " " + " ".join(f"{key}={value!r}" for key, value in context.items())


class Logger:
    """A structlog-style logger: ``log.info("event_name", key=value)``, ``bind``."""

    __slots__ = ("_context", "_name", "_stdlib", "_structlog")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name: Final = name
        self._context: Final = dict(context or {})
        self._stdlib: Final = logging.getLogger(name)
        self._structlog: Any = None

    def bind(self, **values: Any) -> Logger:
        """A logger that adds ``values`` to every event."""
        return Logger(self._name, {**self._context, **values})

    def _emit(self, level: str, event: str, values: dict[str, Any], exc_info: bool) -> None:
        if structlog.is_configured():
            if self._structlog is None:
                self._structlog = structlog.get_logger(self._name)
            target = self._structlog
            if self._context:
                target = target.bind(**self._context)
            if exc_info:
                values = {**values, "exc_info": True}
            getattr(target, level)(event, **values)
            return
        number = _LEVELS[level]
        if self._stdlib.isEnabledFor(number):
            bound = structlog.contextvars.get_contextvars()
            self._stdlib.log(
                number,
                "%s",
                _render(event, {**bound, **self._context, **values}),
                exc_info=exc_info,
            )

    def debug(self, event: str, **values: Any) -> None:
        self._emit("debug", event, values, False)

    def info(self, event: str, **values: Any) -> None:
        self._emit("info", event, values, False)

    def warning(self, event: str, **values: Any) -> None:
        self._emit("warning", event, values, False)

    def error(self, event: str, **values: Any) -> None:
        self._emit("error", event, values, False)

    def critical(self, event: str, **values: Any) -> None:
        self._emit("critical", event, values, False)

    def exception(self, event: str, **values: Any) -> None:
        """An error event with the exception being handled."""
        self._emit("error", event, values, True)


def get_logger(name: str) -> Logger:
    """The logger for module ``name`` (see the module docstring)."""
    return Logger(name)


def bind_context(**values: Any) -> None:
    """Add ``values`` to every event logged from now on by the current task and the
    tasks it starts afterwards (structlog context variables; a Trio task starts with a
    copy of its parent's, so what one connection's task binds stays with it)."""
    structlog.contextvars.bind_contextvars(**values)


@contextlib.contextmanager
def without_connection() -> Iterator[None]:
    """Log, within the block, without the current connection's ``conn_id``, ``remote``
    and ``peer``: for a line a connection's task writes about others (a summary of
    every client's refusals), which must not be filed under that connection."""
    saved = {
        key: value
        for key, value in structlog.contextvars.get_contextvars().items()
        if key in CONNECTION_KEYS
    }
    structlog.contextvars.unbind_contextvars(*CONNECTION_KEYS)
    try:
        yield
    finally:
        structlog.contextvars.bind_contextvars(**saved)


def new_conn_id() -> str:
    """A random short id for one connection (8 hex digits): it ties a connection's log
    lines together without naming anyone."""
    return secrets.token_hex(4)


def bounded(value: str, limit: int = MAX_LOGGED_NAME) -> str:
    """``value`` if it has at most ``limit`` characters, else a cut of it that has.

    The cut keeps the start of ``value`` and ends with a marker giving the full
    length and the SHA-256 of the full value (UTF-8), e.g.
    ``key(...).Program("AAAA...[cut: 60310 chars, sha256 3f2a...]``, so two long values
    can still be told apart or matched against a known one.
    """
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    marker = f"...[cut: {len(value)} chars, sha256 {digest}]"
    if limit <= len(marker):
        return marker[:limit]
    return value[: limit - len(marker)] + marker
