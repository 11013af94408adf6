"""The ``taonet`` command line.

Every subcommand turns a :class:`~taonet.TaoError` or an ``OSError`` into one line on
stderr and exit status 2, an interrupt into ``taonet: interrupted`` and status 130, and
output into a pipe whose reader is gone into a quiet status 141; nothing prints a
traceback for a user error.
"""

from __future__ import annotations

from taonet.cli._main import main

__all__ = ["main"]

main.__module__ = __name__
