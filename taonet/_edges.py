"""Mapping the failures of the world outside to taonet's error tree, at the edges.

A public entry point that does I/O wraps it in :func:`map_os_errors`: an
``OSError`` (refused, no route, DNS failure, no such file, permission denied, a
closed descriptor), a ``trio.TooSlowError`` (a timeout inside the library), a
``trio.BrokenResourceError``/``ClosedResourceError`` (a connection that broke
under a whole exchange) or an exception group holding only such failures leaves
as ``to(f"{what}: {reason}")``, with ``__cause__`` set to the original. A
:class:`~taonet.TaoError` passes through unchanged, as does anything else
(cancellation, KeyboardInterrupt, a bug), so the helper never hides what is not
a failure of the outside world. After httpcore's ``map_exceptions``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import trio

from taonet._errors import TaoError

__all__ = ["map_os_errors"]

# What the outside world can do to an exchange, as opposed to bugs and cancellation.
_OUTSIDE = (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _reason(exc: BaseException) -> str:
    """One short reason for a failure of the outside world."""
    if isinstance(exc, trio.TooSlowError):
        return str(exc) or "timed out"
    if isinstance(exc, OSError):
        # str(OSError) repeats the errno; strerror is what a person reads. trio's
        # "all attempts to connect failed" has none: its attempts (the cause) say why.
        if exc.errno is not None and exc.errno > 0:
            return os.strerror(exc.errno)  # trio's may name the address again: say it once
        if exc.strerror:
            return exc.strerror
        attempts = [leaf for leaf in _leaves(exc.__cause__ or exc) if leaf is not exc]
        whys = dict.fromkeys(_reason(leaf) for leaf in attempts if isinstance(leaf, OSError))
        return "; ".join(whys) or str(exc) or type(exc).__name__
    text = str(exc)
    cause = exc.__cause__
    if not text and cause is not None:
        text = _reason(cause)
    if isinstance(exc, trio.ClosedResourceError):
        return text or "the connection is closed"
    return text or "the connection broke"


@contextlib.contextmanager
def map_os_errors(*, to: type[TaoError], what: str) -> Iterator[None]:
    """Raise ``to(f"{what}: {reason}")`` from a failure of the outside world in the block.

    ``what`` says what was being done ("cannot reach the Tao host at /run/tao.sock").
    A group is mapped when every leaf is such a failure or a TaoError; its first
    such failure gives the reason (a group of TaoErrors only raises its first).
    """
    try:
        yield
    except TaoError:
        raise
    except _OUTSIDE as exc:
        raise to(f"{what}: {_reason(exc)}") from exc
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not all(isinstance(leaf, (*_OUTSIDE, TaoError)) for leaf in leaves):
            raise
        outside = [leaf for leaf in leaves if isinstance(leaf, _OUTSIDE)]
        if not outside:
            raise leaves[0] from group
        raise to(f"{what}: {_reason(outside[0])}") from group
