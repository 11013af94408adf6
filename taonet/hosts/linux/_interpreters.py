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

**Executed from an execute-only copy** (:func:`private_copy`): a program is not run by
the configured file itself but by the host's copy of exactly the bytes measured,
``<host>/interpreters/<sha256 hex>/interpreter``, mode 0111 in a directory of mode
0711, both the host's: its ``argv[0]`` is still the configured path, so the
interpreter finds its standard library and virtual environment as before
(``sys.executable`` is the configured path). The kernel makes a process that executes
a file it may not read non-dumpable, so no other process of the program's uid can
open its descriptors through ``/proc/<pid>/fd``, take them with ``pidfd_getfd``,
ptrace it, or have it dump core: a program's Tao channel (and what it unseals) stays
the program's. The copy is made once per measured interpreter (a new hash gets a new
copy) and hashed as it is written, so it is what the name says.

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

**What the kernel runs must not depend on the working directory**
(:func:`check_kernel_run`): the kernel resolves a relative ``#!`` interpreter, and the
dynamic loader a relative ``PT_INTERP``, ``RPATH`` or ``RUNPATH`` entry, against the
process's working directory, which the caller chooses (``--cwd``). Such a program
would run code the caller picked under the measured name, so it is refused: a ``#!``
interpreter must be an absolute path, and an ELF binary's interpreter absolute and
each of its ``RPATH``/``RUNPATH`` entries, and each library it needs by a path
(``DT_NEEDED`` with a ``/``), absolute or starting with ``$ORIGIN`` (the directory of
the copy itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
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
    "check_kernel_run",
    "choose_interpreter",
    "default_interpreters",
    "private_copy",
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


#: The host's copies of its interpreters: execute-only for everyone (see the module
#: docstring), in a directory others may pass through but not list.
PRIVATE_COPY_MODE: Final = 0o111
PRIVATE_DIR_MODE: Final = 0o711
#: The name of the copy in its directory (named by the interpreter's hash).
PRIVATE_COPY_NAME: Final = "interpreter"


def _private_dir(path: Path) -> None:
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"{path} is not a directory of this host's user") from None
    os.chmod(path, PRIVATE_DIR_MODE, follow_symlinks=False)


def private_copy(interpreter: Interpreter, directory: Path) -> str:
    """The path of the host's execute-only copy of ``interpreter`` under ``directory``.

    Made if missing (see the module docstring): the file the configured path resolves
    to is checked again and copied while it is hashed; a copy whose bytes are not
    ``interpreter.digest`` (the file changed since it was measured) is a ConfigError
    and is not kept. An existing copy is used if it is the host's regular file of mode
    0111 and of the measured size: only the host's user can write in ``directory``.
    """
    what = f"the interpreter {interpreter.name} ({interpreter.path})"
    owner = os.geteuid()
    home = directory / interpreter.digest.hex()
    target = home / PRIVATE_COPY_NAME
    try:
        _private_dir(directory)
        _private_dir(home)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(target)
            if (
                stat.S_ISREG(st.st_mode)
                and st.st_uid == owner
                and stat.S_IMODE(st.st_mode) == PRIVATE_COPY_MODE
                and st.st_size == interpreter.stamp[2]
            ):
                return str(target)
            os.unlink(target)
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot prepare its copy in {directory}: {exc.strerror}"
        ) from exc
    fd = _resolve(interpreter.path, owner, what)
    temporary = home / f".{secrets.token_hex(8)}.tmp"
    try:
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                digest = hashlib.sha256()
                while chunk := os.read(reader, _CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
                os.fchmod(out, PRIVATE_COPY_MODE)
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            os.close(reader)
        if digest.digest() != interpreter.digest:
            raise ConfigError(f"{what} changed while it was being copied: start again")
        os.rename(temporary, target)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot copy it to {home}: {exc.strerror}") from exc
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return str(target)


_PT_INTERP: Final = 3
_PT_DYNAMIC: Final = 2
_PT_LOAD: Final = 1
_DT_STRTAB: Final = 5
_DT_RPATH: Final = 15
_DT_RUNPATH: Final = 29
_DT_NEEDED: Final = 1
#: Bounds on what is read of an ELF file to check it.
_MAX_PHNUM: Final = 4096
_MAX_DYNAMIC: Final = 1 << 20
_MAX_ELF_STRING: Final = 4096
_ORIGIN: Final = ("$ORIGIN", "${ORIGIN}")


class _BadElf(Exception):
    pass


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset) if size > 0 and offset >= 0 else b""
    if len(data) != size:
        raise _BadElf("truncated")
    return data


def _elf_paths(fd: int) -> tuple[str | None, list[str], list[str]]:
    """(PT_INTERP, RPATH and RUNPATH strings, NEEDED names) of the ELF file at ``fd``."""
    ident = _pread(fd, 16, 0)
    wide = {1: False, 2: True}.get(ident[4])
    order = {1: "<", 2: ">"}.get(ident[5])
    if wide is None or order is None:
        raise _BadElf("unknown class or byte order")
    if wide:
        phoff, phentsize, phnum = struct.unpack_from(order + "32xQ14xHH", _pread(fd, 64, 0))
        phdr, dyn = struct.Struct(order + "IIQQQQQQ"), struct.Struct(order + "qQ")
    else:
        phoff, phentsize, phnum = struct.unpack_from(order + "28xI10xHH", _pread(fd, 52, 0))
        phdr, dyn = struct.Struct(order + "IIIIIIII"), struct.Struct(order + "iI")
    if phnum > _MAX_PHNUM or (phnum and phentsize < phdr.size):
        raise _BadElf("program headers")
    headers = []
    for index in range(phnum):
        fields = phdr.unpack(_pread(fd, phdr.size, phoff + index * phentsize))
        if wide:
            kind, _, offset, vaddr, _, filesz = fields[:6]
        else:
            kind, offset, vaddr, _, filesz = fields[:5]
        headers.append((kind, offset, vaddr, filesz))

    def string(offset: int, limit: int) -> str:
        data = os.pread(fd, min(limit, _MAX_ELF_STRING), offset) if offset >= 0 else b""
        if b"\0" not in data:
            raise _BadElf("unterminated string")
        return os.fsdecode(data.split(b"\0", 1)[0])

    interp = None
    for kind, offset, _, filesz in headers:
        if kind == _PT_INTERP:
            interp = string(offset, filesz)
    paths: list[str] = []
    needed: list[str] = []
    for kind, offset, _, filesz in headers:
        if kind != _PT_DYNAMIC:
            continue
        entries = [
            dyn.unpack_from(_pread(fd, dyn.size, offset + at))
            for at in range(0, min(filesz, _MAX_DYNAMIC) - dyn.size + 1, dyn.size)
        ]
        strtab = next((value for tag, value in entries if tag == _DT_STRTAB), None)
        wanted = [value for tag, value in entries if tag in (_DT_RPATH, _DT_RUNPATH)]
        names = [value for tag, value in entries if tag == _DT_NEEDED]
        if not wanted and not names:
            continue
        if strtab is None:
            raise _BadElf("RPATH without a string table")
        # The string table's address, as a file offset through the segment that maps it.
        base = next(
            (
                off + strtab - va
                for k, off, va, size in headers
                if k == _PT_LOAD and va <= strtab < va + size
            ),
            None,
        )
        if base is None:
            raise _BadElf("string table outside the file")
        paths += [string(base + value, _MAX_ELF_STRING) for value in wanted]
        needed += [string(base + value, _MAX_ELF_STRING) for value in names]
    return interp, paths, needed


def check_kernel_run(head: bytes, path: str | os.PathLike[str], what: str) -> None:
    """Refuse a program the kernel is to run that loads code relative to the working
    directory (see the module docstring): HostError. ``head`` is the start of the
    file at ``path`` (a copy the host may read)."""
    line = _shebang(head[:SHEBANG_BYTES])
    if line is not None:
        if not line[0].startswith("/"):
            raise HostError(
                f"{what} starts with '#!{line[0]}', an interpreter relative to the working "
                "directory, which the caller chooses: use an absolute path, or "
                "'#!/usr/bin/env NAME' for one of the host's interpreters"
            )
        return
    if not head.startswith(b"\x7fELF"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise HostError(f"cannot read the copy of {what}: {exc.strerror}") from exc
    try:
        interp, paths, needed = _elf_paths(fd)
    except (_BadElf, struct.error, OSError) as exc:
        raise HostError(
            f"cannot check {what}: not an ELF file this host can read ({exc})"
        ) from None
    finally:
        os.close(fd)
    if interp is not None and not interp.startswith("/"):
        raise HostError(
            f"{what} asks for the ELF interpreter {interp!r}, relative to the working "
            "directory, which the caller chooses"
        )
    for entry in (item for value in paths for item in value.split(":")):
        if not entry.startswith("/") and entry.split("/", 1)[0] not in _ORIGIN:
            raise HostError(
                f"{what} has the library path {entry!r} (RPATH/RUNPATH), relative to the "
                "working directory, which the caller chooses: use $ORIGIN or an absolute path"
            )
    for name in needed:  # a name with a slash is opened as a path, not searched for
        if "/" in name and not name.startswith("/") and name.split("/", 1)[0] not in _ORIGIN:
            raise HostError(
                f"{what} needs the library {name!r}, a path relative to the working "
                "directory, which the caller chooses"
            )
