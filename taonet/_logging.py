"""The one logging set-up that taonet's programs share (the CLI, services, examples).

taonet's modules only ask for loggers (``structlog.get_logger(__name__)``); nothing in
the library configures logging, on import or later. A program calls
:func:`configure_logging` once, at its start.
"""

from __future__ import annotations

import os

from taonet._errors import ConfigError

__all__ = ["FORMAT_VARIABLE", "LEVEL_VARIABLE", "configure_logging"]

#: The environment variable that sets the level when the caller gives none.
LEVEL_VARIABLE = "TAONET_LOG"
#: The environment variable that chooses JSON (``json``) or text (``text``) lines.
FORMAT_VARIABLE = "TAONET_LOG_FORMAT"

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_FORMATS = {"json": True, "text": False}
#: How much of a bad setting an error message repeats (it comes from outside).
_SHOWN = 40


def _level(level: str | int | None) -> int:
    source = "level"
    if level is None:
        level, source = os.environ.get(LEVEL_VARIABLE) or "info", LEVEL_VARIABLE
    if isinstance(level, int) and not isinstance(level, bool):
        if level < 0:
            raise ConfigError(f"{source}: a log level is >= 0, got {level}")
        return level
    if isinstance(level, str) and level.strip().lower() in _LEVELS:
        return _LEVELS[level.strip().lower()]
    raise ConfigError(
        f"{source}: unknown log level {str(level)[:_SHOWN]!r} (use {', '.join(_LEVELS)})"
    )


def _json(json: bool | None) -> bool:
    if json is not None:
        return json
    text = os.environ.get(FORMAT_VARIABLE) or "text"
    if text.strip().lower() not in _FORMATS:
        raise ConfigError(
            f"{FORMAT_VARIABLE}: unknown log format {text[:_SHOWN]!r} (use json or text)"
        )
    return _FORMATS[text.strip().lower()]


def configure_logging(*, json: bool | None = None, level: str | int | None = None) -> None:
    """Send taonet's log events to standard error, one line per event.

    ``level`` is the least severe event written: ``"debug"``, ``"info"``,
    ``"warning"``, ``"error"`` or ``"critical"`` (any case), or a :mod:`logging`
    number. When it is None the ``TAONET_LOG`` environment variable gives it, and
    without that it is ``"info"``.

    ``json=True`` writes each event as one JSON object (for a log collector);
    ``json=False`` as ``key=value`` text for people. When it is None the
    ``TAONET_LOG_FORMAT`` environment variable decides (``json`` or ``text``), and
    without that it is text. Each line carries the event's level and a UTC ISO
    timestamp, and the context bound for its task (structlog context variables: a
    channel server's ``conn_id``, ``remote`` and ``peer`` on every line of a
    connection).

    Raises :class:`~taonet.ConfigError` for a level or format it does not know,
    whether given here or in the environment, and configures nothing then. Call it
    once, before anything logs: a logger that has already logged keeps the set-up it
    had (loggers are cached on first use). taonet never calls it itself: importing
    taonet configures no logging.
    """
    import sys

    import structlog

    threshold = _level(level)
    as_json = _json(json)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        # Module-level loggers are lazy proxies; without caching each call binds anew.
        cache_logger_on_first_use=True,
    )
