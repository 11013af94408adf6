"""Argument parsing and error handling for the ``taonet`` command.

Whatever a command raises becomes one line on stderr and an exit status from one
table (:data:`taonet.cli._failures.EXIT_STATUS_TABLE`, printed by ``taonet --help``):
a :class:`~taonet.TaoError` or an ``OSError`` (also from inside a trio nursery) exits
with the status of its kind (usage, not found, refused, unavailable, error), an
interrupt 130, and anything else, a bug, 70 with ``taonet: internal error: ...`` (its
traceback only with ``TAONET_TRACEBACK=1``). A reader that closes our standard
output early (``taonet list | head -1``) is no error worth a line: the command ends
quietly with status 141, as a C tool killed by ``SIGPIPE`` would.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import traceback
from collections.abc import Sequence

from taonet import __version__
from taonet.cli import (
    _audit_cmd,
    _auth_cmd,
    _completion,
    _demo_cmd,
    _domain_cmd,
    _help,
    _host_cmd,
    _loadtest_cmd,
    _quote_service_cmd,
    _secret_cmd,
    _secret_server_cmd,
    _service_cmd,
)
from taonet.cli._failures import EXIT_STATUS_TABLE, ExitStatus, describe, exit_status, leaves
from taonet.cli._output import JSON_HELP

EXIT_INTERRUPTED = int(ExitStatus.INTERRUPTED)
#: 128 + SIGPIPE: what a shell reports for a tool killed by a closed pipe.
EXIT_BROKEN_PIPE = int(ExitStatus.BROKEN_PIPE)
#: Set to 1 to see the traceback of an internal error.
TRACEBACK_VARIABLE = "TAONET_TRACEBACK"

_ENVIRONMENT = """environment:
  TAO_DOMAIN         domain directory when --domain is not given
  TAO_HOST           Linux host directory when --host is not given
  TAONET_LOG         log level: debug, info (default), warning, error, critical
  TAONET_LOG_FORMAT  log lines as text (default) or json, on standard error
  TAONET_TRACEBACK   1: print the traceback of an internal error"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taonet",
        description=(
            "taonet: the CloudProxy Tao on Trio. Programs prove what code they are: "
            "hosts measure and name them, domains decide whom to trust."
        ),
        epilog="\n\n".join([JSON_HELP, EXIT_STATUS_TABLE, _ENVIRONMENT]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taonet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _auth_cmd.register(sub)
    _domain_cmd.register(sub)
    _audit_cmd.register(sub)
    _service_cmd.register(sub)
    _quote_service_cmd.register(sub)
    _secret_server_cmd.register(sub)
    _secret_cmd.register(sub)
    _host_cmd.register(sub)
    _demo_cmd.register(sub)
    _loadtest_cmd.register(sub)
    _completion.register(sub)
    _help.add_examples(parser)
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
    if any(isinstance(leaf, BrokenPipeError) for leaf in found) and _stdout_reader_gone():
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    statuses = [exit_status(leaf) for leaf in found]
    if ExitStatus.INTERNAL in statuses:
        return _internal(exc, found[statuses.index(ExitStatus.INTERNAL)])
    seen: set[str] = set()
    for leaf in found:
        line = describe(leaf)
        if line not in seen:
            seen.add(line)
            _say(f"taonet: error: {line}")
    return int(statuses[0])


def _internal(exc: BaseException, leaf: BaseException) -> int:
    """A bug: one line (and the traceback if TAONET_TRACEBACK=1), status 70."""
    if not isinstance(leaf, Exception):
        raise exc  # SystemExit from deep inside, GeneratorExit...: not ours to hide
    if os.environ.get(TRACEBACK_VARIABLE) == "1":
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exception(exc, file=sys.stderr)
    shown = os.environ.get(TRACEBACK_VARIABLE) == "1"
    where = "" if shown else f" ({TRACEBACK_VARIABLE}=1 shows where)"
    _say(
        f"taonet: internal error: {type(leaf).__name__}: {describe(leaf)[:500]}{where};"
        " please report it"
    )
    return int(ExitStatus.INTERNAL)


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
