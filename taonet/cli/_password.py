"""Getting passwords: from ``--password-file`` (scripts) or a prompt (people)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from taonet._errors import ConfigError
from taonet._files import read_file


def add_password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        type=Path,
        help="read the password from FILE (its first line; - for standard input) "
        "instead of prompting",
    )


def get_password(password_file: Path | None, *, prompt: str, confirm: bool = False) -> bytes:
    """The password from the file, or asked for on the terminal."""
    if password_file is not None:
        if str(password_file) == "-":
            data = sys.stdin.buffer.readline(64 * 1024)
            line = data.split(b"\n", 1)[0].rstrip(b"\r")
            if not line:
                raise ConfigError("no password on standard input")
            return line
        data = read_file(password_file, limit=64 * 1024)
        line = data.split(b"\n", 1)[0].rstrip(b"\r")
        if not line:
            raise ConfigError(f"password file {password_file} is empty")
        return line
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for a password: use --password-file FILE")
    first = getpass.getpass(f"{prompt}: ")
    if not first:
        raise ConfigError("the password must not be empty")
    if confirm and getpass.getpass(f"{prompt} (again): ") != first:
        raise ConfigError("the passwords do not match")
    return first.encode()
