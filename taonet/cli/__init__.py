"""The ``taonet`` command line.

Every subcommand turns a :class:`~taonet.TaoError` into one line on stderr and exit
status 2; nothing prints a traceback for a user error.
"""

from __future__ import annotations

from taonet.cli._main import main

__all__ = ["main"]
