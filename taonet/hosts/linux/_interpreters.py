"""The interpreters a Linux host offers its programs, chosen and measured by the host.

``host.toml`` names them in an ``[interpreters]`` table, e.g.
``python3 = "/usr/bin/python3"`` (``taonet host init`` writes the Python that runs
taonet, else ``/usr/bin/python3``). They are Python interpreters: the host runs them
isolated (``-I``: no ``PYTHON*`` variables, no user site directory, neither the
working directory nor the script's on ``sys.path``) and writing no bytecode (``-B``:
the copy stays what was measured).

**Checked at start** (:func:`check_interpreter`): the path is absolute and is
resolved one component at a time from ``/`` (symbolic links followed, at most 40);
every directory passed through and the file it ends at must belong to root or to the
host's own user and be writable by nobody else (no group or other write bit; with a
POSIX ACL the group bits are its mask, so no named entry can write either), except
that a sticky directory (``/tmp``) may be writable by others when what is looked up
in it belongs to root or the host's user (the sticky bit keeps others from renaming
or removing it). The
file must be a regular file with an execute bit. Its identity is its path (as
configured: a virtual environment's ``bin/python`` link keeps that environment) and
the SHA-256 of the file it resolves to; that identity is part of the name of every
program it runs. At each program start the path is resolved and checked again, and
the file hashed again if it changed (device, inode, size, times), so a name always
says what runs. What the interpreter loads (its standard library, its
site-packages, taonet itself) is not measured: it is the host's, as the host's own
code is.

**Which programs it runs** (:func:`choose_interpreter`): a script whose first line is
``#!/usr/bin/env NAME`` (or ``#!/bin/env NAME``) is run by the host's interpreter
``NAME``, never by one looked up in a ``PATH``; if the host offers no ``NAME`` the
start is refused (any other ``env`` line, with options or more words, is refused
too). A program directory's entry is run the same way, and an entry ending in
``.py`` with no ``#!`` line by ``python3``. A file with any other ``#!`` line (an
absolute interpreter such as ``#!/bin/sh``) or none (a binary) is executed by the
kernel, as before, and named as before. A host whose ``host.toml`` has no
``[interpreters]`` table (made by an earlier taonet) offers none and runs
``#!/usr/bin/env`` scripts as before (the kernel looks the interpreter up in the
program's ``PATH``, the host's), logging a warning at start.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping
from typing import Final

import attrs

from taonet._errors import ConfigError, HostError

__all__ = [
    "BOOTSTRAP",
    "ENV_PATHS",
    "PYTHON",
    "SHEBANG_BYTES",
    "Interpreter",
    "check_interpreter",
    "choose_interpreter",
    "default_interpreters",
]

#: Interpreter names: what ``#!/usr/bin/env NAME`` may say.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
#: The interpreter for a program directory's ``.py`` entry without a ``#!`` line.
PYTHON: Final = "python3"
#: ``#!`` interpreters that look another up in ``PATH``.
ENV_PATHS: Final = ("/usr/bin/env", "/bin/env")
#: Bytes of a file's first line the kernel reads (BINPRM_BUF_SIZE).
SHEBANG_BYTES: Final = 256
#: Longest interpreter path (it is part of program names, which are bounded).
MAX_INTERPRETER_PATH: Final = 256
#: What ``python -I -c`` runs for a program directory's entry (``sys.argv[1]``): as
#: ``python ENTRY`` would, with the entry's directory first on ``sys.path``, which
#: ``-I`` leaves out. Part of the ``ProgramTree`` format: changing it means a new
#: extension name.
BOOTSTRAP: Final = (
    "import os,runpy,sys;p=sys.argv[1];del sys.argv[0];"
    "sys.path.insert(0,os.path.dirname(p));runpy.run_path(p,run_name='__main__')"
)
_MAX_LINKS: Final = 40
_CHUNK: Final = 1 << 20
_UNSAFE: Final = stat.S_IWGRP | stat.S_IWOTH


@attrs.frozen
class Interpreter:
    """An interpreter the host offers, as checked and measured."""

    name: str
    #: As configured (absolute; what the host executes).
    path: str
    #: SHA-256 of the file the path resolves to.
    digest: bytes
    #: (device, inode, size, mtime_ns, ctime_ns) of that file when it was hashed.
    stamp: tuple[int, int, int, int, int] = attrs.field(eq=False, repr=False)

    @property
    def identity(self) -> tuple[str, bytes]:
        """(path, SHA-256): what a program's name says of it."""
        return self.path, self.digest


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _check_owner(
    st: os.stat_result, owner: int, where: str, what: str, *, sticky_ok: bool = False
) -> None:
    if st.st_uid not in (0, owner):
        raise ConfigError(
            f"{what}: {where} belongs to uid {st.st_uid}, not to root or this host's user, "
            "who alone may decide what code runs as an interpreter"
        )
    if st.st_mode & _UNSAFE and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise ConfigError(
            f"{what}: {where} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}), "
            "who could replace the interpreter"
        )


def _resolve(path: str, owner: int, what: str) -> int:
    """An ``O_PATH`` descriptor of the file ``path`` ends at, every step checked."""
    if not path.startswith("/"):
        raise ConfigError(f"{what}: {path!r} is not an absolute path")
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        here = os.open("/", flags)
    except OSError as exc:  # pragma: no cover
        raise ConfigError(f"{what}: cannot open /: {exc.strerror}") from None
    where = "/"
    pending = path.split("/")[::-1]
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            parent = os.fstat(here)
            # Sticky and writable by others: fine if what is found in it is safe.
            _check_owner(parent, owner, where, what, sticky_ok=part != "..")
            try:
                fd = os.open(part, flags, dir_fd=here)
            except OSError as exc:
                raise ConfigError(
                    f"{what}: cannot open {os.path.join(where, part)}: {exc.strerror}"
                ) from None
            st = os.fstat(fd)
            if parent.st_mode & _UNSAFE and st.st_uid not in (0, owner):
                os.close(fd)
                raise ConfigError(
                    f"{what}: {os.path.join(where, part)} belongs to uid {st.st_uid} and is "
                    f"in {where}, which others may write"
                )
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                links += 1
                if links > _MAX_LINKS or not target:
                    raise ConfigError(f"{what}: too many or empty links at {where}")
                pending.extend(target.split("/")[::-1])
                if target.startswith("/"):
                    os.close(here)
                    here = os.open("/", flags)
                    where = "/"
                continue
            os.close(here)
            here = fd
            where = os.path.normpath(os.path.join(where, part))
        st = os.fstat(here)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            raise ConfigError(f"{what}: {where} is not an executable regular file")
        _check_owner(st, owner, where, what)
    except BaseException:
        os.close(here)
        raise
    return here


def check_interpreter(
    name: str, path: str, *, owner: int, known: Interpreter | None = None
) -> Interpreter:
    """Check and measure the interpreter ``name`` at ``path`` (see the module docstring).

    ``owner`` is the host's uid. With ``known`` (the same interpreter as measured
    before), the file is hashed again only if it changed. ConfigError if it is
    refused.
    """
    what = f"the interpreter {name} ({path})"
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"[interpreters]: {name!r} is not an interpreter name")
    if len(os.fsencode(path)) > MAX_INTERPRETER_PATH:
        raise ConfigError(f"{what}: paths are limited to {MAX_INTERPRETER_PATH} bytes")
    fd = _resolve(path, owner, what)
    try:
        st = os.fstat(fd)
        if known is not None and known.path == path and known.stamp == _stamp(st):
            return known
        try:
            reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read it: {exc.strerror}") from None
        try:
            digest = hashlib.sha256()
            while chunk := os.read(reader, _CHUNK):
                digest.update(chunk)
            st = os.fstat(reader)
        finally:
            os.close(reader)
    finally:
        os.close(fd)
    return Interpreter(name, path, digest.digest(), _stamp(st))


def default_interpreters(owner: int | None = None) -> tuple[tuple[str, str], ...]:
    """What ``taonet host init`` offers: ``python3`` as the Python running taonet
    (so programs can import it), else ``/usr/bin/python3``, if either passes
    :func:`check_interpreter` for ``owner`` (default: this process's uid); else none."""
    import sys

    owner = os.geteuid() if owner is None else owner
    for candidate in (sys.executable, "/usr/bin/python3"):
        if not candidate or not os.path.isabs(candidate):
            continue
        try:
            check_interpreter(PYTHON, candidate, owner=owner)
        except ConfigError:
            continue
        return ((PYTHON, candidate),)
    return ()


def _shebang(head: bytes) -> tuple[str, str] | None:
    """(interpreter, argument) of a ``#!`` line as the kernel splits it, or None."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    if not line:
        return None
    parts = line.replace(b"\t", b" ").split(b" ", 1)
    argument = parts[1].strip(b" \t") if len(parts) > 1 else b""
    return os.fsdecode(parts[0]), os.fsdecode(argument)


def choose_interpreter(
    head: bytes,
    *,
    what: str,
    interpreters: Mapping[str, Interpreter] | None,
    entry: str | None = None,
) -> str | None:
    """The name of the host's interpreter that runs a program, or None: the kernel.

    ``head`` is the start of the file that runs (its copy); ``entry`` its path
    within a program directory (None: a single file). ``interpreters`` are those
    the host offers (None: no ``[interpreters]`` table). HostError when the file
    asks for an interpreter the host does not offer (see the module docstring).
    """
    line = _shebang(head[:SHEBANG_BYTES])
    offered = ", ".join(sorted(interpreters or ())) or "none"
    if line is None:
        if entry is not None and entry.endswith(".py") and not head.startswith(b"\x7fELF"):
            if interpreters is None or PYTHON not in interpreters:
                raise HostError(
                    f"{what} is a Python file without a '#!' line, to be run by the host's "
                    f"{PYTHON}, which this host does not offer ([interpreters] in host.toml: "
                    f"{offered})"
                )
            return PYTHON
        return None
    program, argument = line
    if program not in ENV_PATHS:
        return None  # an absolute interpreter: the kernel runs it, as before
    if interpreters is None:
        return None  # an earlier host.toml: as before (warned at start)
    if not argument or not NAME_PATTERN.match(argument):
        raise HostError(
            f"{what} starts with '#!{program} {argument}': the host runs "
            f"'#!{program} NAME' scripts with its own interpreter NAME only (offered: "
            f"{offered})"
        )
    if argument not in interpreters:
        raise HostError(
            f"{what} asks for '{argument}' through {program}, which this host does not offer "
            f"(offered: {offered}; [interpreters] in host.toml): it never looks an "
            "interpreter up in a PATH"
        )
    return argument


def interpreter_argv(interpreter: Interpreter, target: str, tree: bool) -> list[str]:
    """How the host runs ``target`` (a copy) with ``interpreter``: isolated, and
    writing no bytecode."""
    if tree:
        return [interpreter.path, "-I", "-B", "-c", BOOTSTRAP, target]
    return [interpreter.path, "-I", "-B", target]
