"""Argument parsing and error handling for the ``taonet`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from taonet import __version__
from taonet._errors import TaoError
from taonet.cli import _auth_cmd, _demo_cmd, _domain_cmd, _host_cmd, _service_cmd

EXIT_ERROR = 2


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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except TaoError as exc:
        print(f"taonet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BaseExceptionGroup as group:
        # Errors from inside trio nurseries arrive wrapped; unwrap user errors.
        leaves = _leaves(group)
        if not all(isinstance(leaf, TaoError | KeyboardInterrupt) for leaf in leaves):
            raise
        for leaf in leaves:
            print(f"taonet: error: {leaf}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("taonet: interrupted", file=sys.stderr)
        return 130
    return result


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
