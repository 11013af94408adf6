"""Getting passwords: from ``--password-file`` (scripts) or a prompt (people)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from taonet.cli._failures import UsageError
from taonet.files import read_file


def add_password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        type=Path,
        help="read the password from FILE (its first line; - for standard input) "
        "instead of prompting",
    )


def get_password(password_file: Path | None, *, prompt: str, confirm: bool = False) -> bytes:
    """The password from the file, or asked for on the terminal.

    ConfigError if there is none: an empty line, no standard input at all, no
    terminal to ask on, or end of input (Ctrl-D) at the prompt.
    """
    if password_file is not None:
        if str(password_file) == "-":
            if sys.stdin is None:
                raise UsageError("no standard input to read the password from")
            data = sys.stdin.buffer.readline(64 * 1024)
            line = data.split(b"\n", 1)[0].rstrip(b"\r")
            if not line:
                raise UsageError("no password on standard input")
            return line
        data = read_file(password_file, limit=64 * 1024)
        line = data.split(b"\n", 1)[0].rstrip(b"\r")
        if not line:
            raise UsageError(f"password file {password_file} is empty")
        return line
    if sys.stdin is None or not sys.stdin.isatty():
        raise UsageError("no terminal to ask for a password: use --password-file FILE")
    first = _ask(f"{prompt}: ")
    if not first:
        raise UsageError("the password must not be empty")
    if confirm and _ask(f"{prompt} (again): ") != first:
        raise UsageError("the passwords do not match")
    return first.encode()


def _ask(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:
        # getpass leaves the cursor after the prompt: end that line first.
        if sys.stderr is not None and sys.stderr.isatty():
            print(file=sys.stderr)
        raise UsageError("no password given (end of input at the prompt)") from None
