"""Starting taonet again in a child process without trusting the caller's directory.

``python -m taonet`` puts the current directory first on ``sys.path``, and a plain
interpreter obeys ``PYTHONPATH``, ``PYTHONHOME``, ``PYTHONSTARTUP``,
``sitecustomize`` and friends: a child started that way from a directory another
user can write (or with their environment) runs their code, as whoever started it,
with the password on its standard input. :func:`taonet_argv` gives the command line
of an isolated interpreter (``-I``: no current directory, no ``PYTHON*`` variables,
no user site packages) that imports the very taonet this process runs, and
:func:`child_environment` the few variables such a child keeps. Start the child in
a directory nobody else can write (``/``) and give it absolute paths.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import taonet

__all__ = ["KEEP_ENVIRONMENT", "child_environment", "safe_search_path", "taonet_argv"]

#: The one statement the isolated child runs. Its first argument is the directory
#: holding the parent's ``taonet`` package; it is appended, never prepended, so it
#: cannot shadow the standard library, and only matters when taonet is not installed.
_BOOT: Final = (
    "import sys; root = sys.argv.pop(1); "
    "root in sys.path or sys.path.append(root); "
    "from taonet.cli._main import _entry; _entry()"
)

#: Variables a re-executed taonet keeps (a trailing * is a prefix); everything else,
#: ``LD_*`` and ``PYTHON*`` included, is dropped. ``PATH`` loses relative entries.
KEEP_ENVIRONMENT: Final = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TAONET_LOG",
)


def package_root() -> Path:
    """The directory that holds the ``taonet`` package this process imported."""
    return Path(taonet.__file__).resolve().parent.parent


def taonet_argv(*args: str) -> list[str]:
    """The command line that runs ``taonet ARGS...`` in an isolated interpreter."""
    return [sys.executable, "-I", "-c", _BOOT, str(package_root()), *args]


def safe_search_path(path: str | None) -> str:
    """``path`` without empty or relative entries (each means "the current directory")."""
    entries = [e for e in (path or os.defpath).split(os.pathsep) if os.path.isabs(e)]
    return os.pathsep.join(entries) or os.defpath


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default ``os.environ``) a re-executed taonet keeps."""
    source = os.environ if environ is None else environ

    def kept(name: str) -> bool:
        return any(
            name.startswith(p[:-1]) if p.endswith("*") else name == p for p in KEEP_ENVIRONMENT
        )

    env = {k: v for k, v in source.items() if kept(k)}
    env["PATH"] = safe_search_path(source.get("PATH"))
    return env
