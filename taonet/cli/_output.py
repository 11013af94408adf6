"""``--output text|json``: what a command prints, for people or for scripts.

Every command that prints data takes ``-o/--output``. ``text`` (the default) is for
people; ``json`` is one JSON document on standard output per command, with stable
snake_case keys: byte strings as lowercase hex, times as ISO 8601 in UTC (and as
integer nanoseconds since the epoch where the field ends in ``_ns``), principals in
their text form. Errors never go to standard output: in either mode a failure is one
``taonet: error: ...`` line on standard error and an exit status from the table in
``taonet --help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from typing import Any, Final

__all__ = ["JSON_HELP", "add_output_option", "emit", "iso_time", "wants_json"]

#: What ``--help`` says about the JSON form (once, in the top-level help).
JSON_HELP: Final = """\
output:
  -o json prints one JSON document on standard output: snake_case keys, bytes as
  lowercase hex, times as ISO 8601 UTC strings (and *_ns integers), principals as text,
  certificate serials (up to 160 bits) as decimal strings.
  Errors are never on standard output: one "taonet: error: ..." line on standard error."""


def add_output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="text for people (default) or json: one JSON document for scripts",
    )


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "text") == "json"


def emit(args: argparse.Namespace, document: Any, text: Callable[[], None]) -> None:
    """Print ``document`` as JSON when asked for, else call ``text`` to print lines."""
    if wants_json(args):
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        text()


def iso_time(time_ns: int | None) -> str | None:
    """ISO 8601 in UTC (``2026-11-28T08:12:23.123456Z``) for nanoseconds since the epoch."""
    if time_ns is None:
        return None
    moment = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")
