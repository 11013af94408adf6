"""Argument parsing and error handling for the ``taonet`` command.

Whatever a command raises that is not a bug becomes one line on stderr and a
non-zero exit: a :class:`~taonet.TaoError` or an ``OSError`` (also from inside a
trio nursery) exits 2, an interrupt 130. A reader that closes our standard output
early (``taonet list | head -1``) is no error worth a line: the command ends
quietly with status 141, as a C tool killed by ``SIGPIPE`` would.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
from collections.abc import Sequence

from taonet import TaoError, __version__
from taonet.cli import _auth_cmd, _demo_cmd, _domain_cmd, _host_cmd, _service_cmd
from taonet.cli._failures import describe, leaves

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for a tool killed by a closed pipe.
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taonet",
        description=(
            "taonet: the CloudProxy Tao on Trio. Programs prove what code they are: "
            "hosts measure and name them, domains decide whom to trust."
        ),
    )
    parser.add_argument("--version", action="version", version=f"taonet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _auth_cmd.register(sub)
    _domain_cmd.register(sub)
    _service_cmd.register(sub)
    _host_cmd.register(sub)
    _demo_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``taonet`` command; its exit status (argparse exits 2 on bad usage)."""
    try:
        args = build_parser().parse_args(argv)
        result: int = args.func(args)
        # Flush here, not at interpreter exit, so a closed pipe is seen below.
        sys.stdout.flush()
    except BaseException as exc:  # sorted out, or re-raised, in _failure
        return _failure(exc)
    return result


def _failure(exc: BaseException) -> int:
    """The exit status for ``exc`` after saying what went wrong; re-raises a bug."""
    if isinstance(exc, SystemExit):  # argparse: usage errors, --help, --version
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        raise exc
    found = leaves(exc)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in found):
        _say("taonet: interrupted")
        return EXIT_INTERRUPTED
    if not all(isinstance(leaf, TaoError | OSError) for leaf in found):
        raise exc  # a bug: its traceback is what a report needs
    if any(isinstance(leaf, BrokenPipeError) for leaf in found) and _stdout_reader_gone():
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    seen: set[str] = set()
    for leaf in found:
        line = describe(leaf)
        if line not in seen:
            seen.add(line)
            _say(f"taonet: error: {line}")
    return EXIT_ERROR


def _say(line: str) -> None:
    """Print to stderr; a stderr nobody reads any more is no reason for a traceback."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _stdout_reader_gone() -> bool:
    """True if standard output is a pipe or socket whose reader has closed it."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return False


def _silence_stdout() -> None:
    """Point standard output at /dev/null so the flush at exit cannot fail again."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
