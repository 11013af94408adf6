"""Starting hosted programs: measure a private copy, then run exactly that copy.

A Linux Tao host names each hosted program by the SHA-256 of its binary, so what
runs must be exactly what was hashed. :func:`prepare_program` finds the file the
caller named as the kernel would for the caller: it walks the path one component
at a time from ``/``, following symbolic links itself, and refuses unless the
caller (its uid, gid and supplementary groups, by mode bits and any POSIX access
ACL, evaluated as the kernel does; uid 0 is exempt) may search every directory it
passes through and read and execute the file, which must not be on a filesystem
mounted ``noexec``. Each check is made on a descriptor the host then holds, and the
file is opened relative to the directory that was checked and must be the very
file that was checked (same device and inode), so swapping a link or a directory
during the walk gets a refusal, never someone else's file. The file is copied from
that one open descriptor into a fresh private directory, hashing the bytes as they
are written.
The copy is what :func:`spawn_program` executes, so rewriting or replacing the
source afterwards (or while it is being copied) changes nothing: the name is of
what was copied and runs.

The copies are private. The programs directory is mode 0711 (others may pass
through it but not list it). A root host preparing a program for another uid makes
its directory and the copy root-owned (the caller's gid as group) and grants the
caller's uid alone access with a POSIX access ACL: ``u::rwx,u:<uid>:--x,g::---,
m::--x,o::---`` on the directory (shown as mode 0710) and ``u::r-x,u:<uid>:r-x,
g::---,m::r-x,o::---`` on the copy (shown as 0550: with an ACL the group bits show
the mask, while the owning group gets the ``g::`` entry, nothing). So the program
can run (and read) its copy but not change it, and no other user, not even one in
the caller's primary group, can reach it, though its path shows in
``/proc/<pid>/cmdline``. The copy is written while it is root's alone (mode 0600),
fsync'd, and only then given the caller's gid and its ACL, which sets its mode in
the same step. On a filesystem without ACLs (``ENOTSUP``) the host falls back to
group permissions, root:gid modes 0710 and 0550, which also let the caller's
primary group read the copy, and logs ``program_copy_acl_unsupported`` (once). A
program for the host's own uid (and any program of a non-root host) gets mode 0700
and a copy of mode 0500, and no ACL. Any ACL a new directory inherited (from a
default ACL above it) is removed before the copy is created in it.

**Not dumpable.** A program runs as its caller's uid, and any other process of that
uid (another program of the caller, a sibling hosted program) could otherwise take
its Tao channel (``pidfd_getfd``, reopening ``/proc/<pid>/fd/N``), ptrace it or
make it dump core, and act under its name. The kernel makes a process that executes
a file it may not read non-dumpable, which closes all of these to processes without
``CAP_SYS_PTRACE``; so a binary the kernel executes (a copy with no ``#!`` line: a
single file, or a program directory's entry) is made execute-only for the caller
(:func:`_make_execute_only`: ``--x`` for its uid by ACL, mode shown 0510, on a root
host; mode 0100 where the caller is the copy's owner, which a non-root owner may
execute but not read), and a program the host's interpreter runs is started from the
host's execute-only copy of that interpreter
(:func:`~taonet.hosts.linux._interpreters.private_copy`). The host also sets its own
``RLIMIT_CORE`` to 0, hard, which its children inherit and only ``CAP_SYS_RESOURCE``
can raise. Limits: a script the kernel runs through an absolute ``#!`` interpreter
(``#!/bin/sh``) runs that readable interpreter and stays dumpable (use
``#!/usr/bin/env NAME`` with one of the host's interpreters, or a binary); a program
that executes another readable file (``subprocess``) makes that child dumpable; on a
non-root host every program has the host's uid, owns its copy and the host's files
and can reach the host itself (programs of one non-root host are not protected from
each other). Under bubblewrap the program and the ``sh`` that waits for bwrap (the
host's execute-only copy, which holds the channel's descriptors) are not dumpable,
but bwrap itself cannot be (it must write its user namespace's maps) and runs as the
caller in a user namespace the caller owns: bwrap's processes close the channel's
descriptors once the program runs, yet a process of the caller's uid that attaches
to bwrap before then (a narrow window at each start) could take them.

A root host chdirs a child into its working directory *before* dropping to the
caller's uid (that is how :mod:`subprocess` works), so :func:`spawn_program` first
checks, with :func:`check_directory_access`, that the caller could reach that
directory itself, and then has the child chdir into the directory that was checked
(through the descriptor held for it), not into whatever the path names by then.

A program may also be a directory (:mod:`._tree`): every file in it is walked with
the same care, on held descriptors, bounded, copied and measured into a manifest,
and one file in it, the *entry*, runs (by default ``__main__.py``). A single file is
measured as in the original CloudProxy, ``Program([sha256])``: a binary, or a script
whose absolute ``#!`` interpreter the kernel starts, unmeasured. A script that asks
for its interpreter through ``#!/usr/bin/env NAME`` (and a directory's ``.py``
entry) is run by the interpreter the host offers under that name, never one found in
a ``PATH``, isolated (``python -I``), and that interpreter's path and hash are part of
the program's name (:mod:`._interpreters`). So the names are:

* ``Program([h])``: a single file the kernel executes (``h``: SHA-256 of its bytes);
* ``Script([h], "/interpreter", [i])``: a single file run by the host's interpreter
  (``i``: SHA-256 of the interpreter's binary);
* ``ProgramTree([m], "entry")`` or ``ProgramTree([m], "entry", "/interpreter", [i])``:
  a directory (``m``: SHA-256 of its manifest), its entry run by the kernel or by the
  host's interpreter;

each with the program id first when the host hands out ids. Libraries a program
loads from outside its file or directory are not part of its name.

:class:`HostChannel` holds the two pipes between the host and one child (the
``pipe`` channel of ``CLOUDPROXY_TAO_HOST_SPEC``), :class:`Sandbox` optionally
wraps the program in bubblewrap, and :func:`signal_group` signals a program's whole
process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import resource
import secrets
import shutil
import stat
import struct
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from taonet import auth
from taonet._errors import AuthorizationError, ConfigError, HostError
from taonet._log import get_logger
from taonet.domain import program_subprin
from taonet.hosts._parent import HOST_CHANNEL_TYPE, HOST_SPEC, HOST_TYPE
from taonet.hosts.linux._interpreters import (
    SHEBANG_BYTES,
    Interpreter,
    check_interpreter,
    check_kernel_run,
    choose_interpreter,
    interpreter_argv,
    private_copy,
)
from taonet.hosts.linux._tree import (
    Seal,
    TreeLimits,
    check_entry,
    copy_tree,
    remove_tree,
    tree_hash,
    tree_subprin,
)

__all__ = [
    "HostChannel",
    "PreparedProgram",
    "Sandbox",
    "check_directory_access",
    "prepare_program",
    "remove_stale_copies",
    "remove_stale_interpreter_copies",
    "signal_group",
    "spawn_program",
]

log = get_logger(__name__)

#: Bytes read (and hashed, and written) at a time while copying a program.
COPY_CHUNK: Final = 1 << 20
#: Default bound on a program's size.
DEFAULT_MAX_SIZE: Final = 1 << 30

#: The programs directory: others may pass through it, not list it.
_PROGRAMS_DIR_MODE: Final = 0o711
#: A copy and its directory for the host's own uid (or any copy of a non-root host).
_PRIVATE_DIR_MODE: Final = 0o700
_PRIVATE_COPY_MODE: Final = 0o500
#: A root host's copy for another uid where ACLs are unsupported: root-owned, the
#: caller's gid as group (with an ACL, the modes these show; see _ACL_* below).
_SHARED_DIR_MODE: Final = 0o710
_SHARED_COPY_MODE: Final = 0o550
#: POSIX ACLs as the kernel takes them in the ``system.posix_acl_*`` extended
#: attributes (``include/uapi/linux/posix_acl_xattr.h``): a little-endian u32
#: version, then (u16 tag, u16 perm, u32 id) entries sorted by tag, then id.
_ACL_ACCESS: Final = "system.posix_acl_access"
_ACL_DEFAULT: Final = "system.posix_acl_default"
_ACL_VERSION: Final = 2
_ACL_USER_OBJ: Final = 0x01
_ACL_USER: Final = 0x02
_ACL_GROUP_OBJ: Final = 0x04
_ACL_GROUP: Final = 0x08
_ACL_MASK: Final = 0x10
_ACL_OTHER: Final = 0x20
_ACL_UNDEFINED_ID: Final = 0xFFFFFFFF
#: What the owner (root) and the caller's uid get, as rwx bits.
_ACL_DIR_PERMS: Final = (0o7, 0o1)
_ACL_COPY_PERMS: Final = (0o5, 0o5)
_ACL_UNSUPPORTED: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
#: Taken (and never released) by the first warning that ACLs are unsupported.
_ACL_WARNED: Final = threading.Lock()
#: Opens one path component for the walk: never follows a link, never reads.
_WALK_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: As the kernel's limit on the symbolic links one lookup may follow.
_MAX_SYMLINKS: Final = 40
_HOST_VARIABLES: Final = (HOST_TYPE, HOST_CHANNEL_TYPE, HOST_SPEC)
#: A copy just written may briefly be open for writing in another process forked
#: in between (until that process execs and close-on-exec closes it): exec then
#: fails with ETXTBSY. Retrying a few times, briefly, rides that out.
_ETXTBSY_ATTEMPTS: Final = 5
_ETXTBSY_BACKOFF: Final = 0.02
#: The supervisor between the host and bwrap (see :meth:`Sandbox.wrap`).
_SHELL: Final = "/bin/sh"
_SUPERVISOR: Final = '"$@"; exit "$?"'


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _encode_acl(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """The ``system.posix_acl_*`` value of ``entries``: (tag, rwx bits, id) each.

    Sorted as the kernel requires (by tag, then id). Whether the set of entries is
    a valid ACL is left to the kernel (EINVAL).
    """
    data = [struct.pack("<I", _ACL_VERSION)]
    for tag, perm, ident in sorted(entries, key=lambda entry: (entry[0], entry[2])):
        if not 0 <= perm <= 0o7:
            raise ValueError(f"ACL permissions must be rwx bits, not {perm:#o}")
        data.append(struct.pack("<HHI", tag, perm, ident))
    return b"".join(data)


def _only_user_acl(uid: int, owner: int, user: int) -> bytes:
    """An access ACL: ``owner`` bits for the owner, ``user`` bits for ``uid``, no others.

    The owning group and everyone else get nothing; the mask is ``user`` (so the
    mode's group bits, which show the mask, read ``user``).
    """
    return _encode_acl(
        [
            (_ACL_USER_OBJ, owner, _ACL_UNDEFINED_ID),
            (_ACL_USER, user, uid),
            (_ACL_GROUP_OBJ, 0, _ACL_UNDEFINED_ID),
            (_ACL_MASK, user, _ACL_UNDEFINED_ID),
            (_ACL_OTHER, 0, _ACL_UNDEFINED_ID),
        ]
    )


def _set_acl(fd: int, acl: bytes, where: Path) -> bool:
    """Give ``fd`` the access ACL ``acl`` (which sets its mode); False if unsupported.

    The first time a filesystem has no ACLs, a warning is logged; other errors raise.
    """
    try:
        os.setxattr(fd, _ACL_ACCESS, acl)
    except OSError as exc:
        if exc.errno not in _ACL_UNSUPPORTED:
            raise
        if _ACL_WARNED.acquire(blocking=False):
            log.warning(
                "program_copy_acl_unsupported",
                path=str(where),
                fallback="the caller's primary group may read copies for other users",
            )
        return False
    return True


def _clear_acls(fd: int) -> None:
    """Remove any access and default ACL from ``fd`` (none, or none possible: fine)."""
    for name in (_ACL_ACCESS, _ACL_DEFAULT):
        try:
            os.removexattr(fd, name)
        except OSError as exc:
            if exc.errno != errno.ENODATA and exc.errno not in _ACL_UNSUPPORTED:
                raise


#: The principal extension of a single file run by the host's interpreter.
SCRIPT: Final = "Script"


@attrs.frozen
class PreparedProgram:
    """A hosted program's private copy, ready to run, and the hash of its bytes."""

    #: The private copy of the file that runs (absolute): the program, or the entry
    #: of a program directory.
    path: Path
    #: Its private directory (removed by :meth:`cleanup`).
    directory: Path
    #: SHA-256 of exactly the bytes copied, or of a program directory's manifest.
    program_hash: bytes
    #: The path the caller asked for (informational: it is not what runs).
    source: str
    #: The root of a program directory's copy (None: a single file).
    root: Path | None = None
    #: The entry's path within the program directory (None: a single file).
    entry: str | None = None
    #: The host's interpreter that runs it (None: the kernel executes it).
    interpreter: Interpreter | None = None
    #: Bytes copied.
    size: int = 0
    #: What the copy is charged against a uid's share of the host: a single file its
    #: bytes; a program directory's each file and directory a block and an inode,
    #: and file bytes in whole blocks (:func:`~taonet.hosts.linux._tree.entry_cost`).
    charged: int = 0
    #: The host's execute-only copy of the interpreter, executed in its place
    #: (``argv[0]`` stays the interpreter's configured path); None: ``argv[0]``.
    executable: str | None = None
    #: Where the host keeps its execute-only copies of interpreters (and of the
    #: ``sh`` that waits for bwrap); None: the program was not prepared for a host.
    copies: Path | None = None

    def subprin(self, *, program_id: int = 0) -> auth.SubPrin:
        """The extension that names this program under its host (module docstring)."""
        identity = None if self.interpreter is None else self.interpreter.identity
        if self.entry is not None:
            return tree_subprin(self.program_hash, self.entry, identity, program_id=program_id)
        if identity is None:
            return program_subprin(self.program_hash, program_id=program_id)
        args: tuple[auth.Term, ...] = (
            auth.Bytes(self.program_hash),
            auth.Str(identity[0]),
            auth.Bytes(identity[1]),
        )
        if program_id:
            args = (auth.Int(program_id), *args)
        return auth.SubPrin((auth.PrinExt(SCRIPT, args),))

    def argv(self, args: Sequence[str]) -> list[str]:
        """The command that runs the copy with ``args``."""
        if self.interpreter is None:
            return [str(self.path), *args]
        return [*interpreter_argv(self.interpreter, str(self.path), self.root is not None), *args]

    def cleanup(self) -> None:
        """Remove the copy and its directory; idempotent, never raises."""
        with contextlib.suppress(Exception):
            remove_tree(self.directory)


def _class_shift(st: os.stat_result, uid: int, gid: int, groups: Sequence[int]) -> int:
    """Where the one class of mode bits that applies sits: owner, else group, else other."""
    if uid == st.st_uid:
        return 6
    if gid == st.st_gid or st.st_gid in groups:
        return 3
    return 0


#: A parsed access ACL: its (tag, rwx bits, id) entries.
_Acl = tuple[tuple[int, int, int], ...]


def _access_acl(fd: int, where: str) -> _Acl | None:
    """The access ACL of the object ``fd`` refers to (``O_PATH`` or not); None if none.

    Read through ``/proc/self/fd/<fd>``, which names exactly that object (Linux
    refuses ``fgetxattr`` on an ``O_PATH`` descriptor). No ACL, or a filesystem
    without them (where the kernel checks mode bits only), is None. Anything else,
    and an ACL this cannot parse, is a :class:`~taonet.HostError`: the check fails
    closed.
    """
    try:
        data = os.getxattr(f"/proc/self/fd/{fd}", _ACL_ACCESS)
    except OSError as exc:
        if exc.errno == errno.ENODATA or exc.errno in _ACL_UNSUPPORTED:
            return None
        raise HostError(f"cannot read the POSIX ACL of {where}: {_why(exc)}") from exc
    if len(data) < 4 or len(data) % 8 != 4 or struct.unpack_from("<I", data)[0] != _ACL_VERSION:
        raise HostError(f"cannot check {where}: its POSIX ACL is not in a known format")
    return tuple(
        (tag, perm & 0o7, ident) for tag, perm, ident in struct.iter_unpack("<HHI", data[4:])
    )


def _permitted(
    st: os.stat_result,
    acl: _Acl | None,
    uid: int,
    gid: int,
    groups: Sequence[int],
    want: int,
) -> bool:
    """Whether (uid, gid, groups), not uid 0, has all the rwx bits ``want`` here.

    Without an ACL, one class of mode bits applies, the first that matches: owner,
    then group, then other. With an access ACL, as the kernel's
    ``posix_acl_permission``: the owner gets the ``u::`` entry; a named user its
    ``u:<uid>:`` entry within the mask; else if the owning group or a named group
    is one of the caller's, access needs one of those entries to grant ``want``
    and the mask to allow it (no fall through to others); else the ``o::`` entry.
    """
    if acl is None:
        return (st.st_mode >> _class_shift(st, uid, gid, groups)) & want == want
    mask = next((perm for tag, perm, _ in acl if tag == _ACL_MASK), 0o7)
    mine = {gid, *groups}
    in_a_group = False
    if uid == st.st_uid:
        return any(tag == _ACL_USER_OBJ and perm & want == want for tag, perm, _ in acl)
    for tag, perm, ident in acl:
        if tag == _ACL_USER and ident == uid:
            return perm & mask & want == want
    for tag, perm, ident in acl:
        if (tag == _ACL_GROUP_OBJ and st.st_gid in mine) or (tag == _ACL_GROUP and ident in mine):
            in_a_group = True
            if perm & want == want:
                return mask & want == want
    if in_a_group:
        return False
    return any(tag == _ACL_OTHER and perm & want == want for tag, perm, _ in acl)


def _may_read_and_execute(
    st: os.stat_result, acl: _Acl | None, uid: int, gid: int, groups: Sequence[int]
) -> bool:
    """Whether the kernel would let (uid, gid, groups) read and execute this file.

    By its mode bits and its access ``acl`` (see :func:`_permitted`). uid 0 reads
    anything and executes a file with any execute bit set. Capabilities other than
    root's are not considered.
    """
    if uid == 0:
        return bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    return _permitted(st, acl, uid, gid, groups, stat.S_IROTH | stat.S_IXOTH)


def _may_search(
    st: os.stat_result, acl: _Acl | None, uid: int, gid: int, groups: Sequence[int]
) -> bool:
    """Whether the kernel would let (uid, gid, groups) search this directory (uid 0 may).

    By its mode bits and its access ``acl`` (see :func:`_permitted`).
    """
    return uid == 0 or _permitted(st, acl, uid, gid, groups, stat.S_IXOTH)


def _describe(st: os.stat_result, acl: bool = False) -> str:
    extra = ", and a POSIX ACL" if acl else ""
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}{extra}"


@attrs.define
class _Found:
    """Where :func:`_lookup` is (or ended): an object that is not a link, and its parent."""

    #: An ``O_PATH`` descriptor of the object, and its status.
    fd: int
    st: os.stat_result
    #: The checked directory it was found in and its name there, unless the last
    #: step was ``/`` or ``..`` (a directory, then).
    parent: int | None = None
    name: str | None = None

    def step(self, fd: int, st: os.stat_result, name: str | None) -> None:
        """Move on to ``fd``: found as ``name`` in the current object, or (None) not."""
        old_parent, self.parent = self.parent, None
        if old_parent is not None:
            with contextlib.suppress(OSError):
                os.close(old_parent)
        if name is None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        else:
            self.parent = self.fd
        self.fd, self.st, self.name = fd, st, name

    def close(self) -> None:
        for fd in (self.fd, self.parent):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _open_step(directory: int | None, name: str) -> tuple[int, os.stat_result]:
    """Open ``name`` in ``directory`` (None: the absolute path) without following it."""
    fd = os.open(name, _WALK_FLAGS, dir_fd=directory)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


_PROC_SUPER_MAGIC: Final = 0x9FA0
_LIBC: Final = ctypes.CDLL(None, use_errno=True)


def _on_procfs(fd: int) -> bool:
    """Whether ``fd`` (``O_PATH`` will do) is on a proc filesystem (``fstatfs``);
    True if that cannot be told (fail closed)."""
    buffer = ctypes.create_string_buffer(256)  # struct statfs: f_type first
    if _LIBC.fstatfs(fd, buffer) != 0:
        return True
    return int(ctypes.c_long.from_buffer(buffer).value) == _PROC_SUPER_MAGIC


def _lookup(path: str, uid: int, gid: int, groups: Sequence[int], what: str) -> tuple[_Found, str]:
    """Resolve the absolute ``path`` as the kernel would for (uid, gid, groups).

    One component at a time from ``/``, following symbolic links here (at most
    :data:`_MAX_SYMLINKS`), each step opened ``O_PATH | O_NOFOLLOW`` relative to
    the descriptor of the directory before it. A lookup in a directory needs
    search permission on it by its mode bits and access ACL (uid 0 is exempt),
    checked on that descriptor, else :class:`~taonet.AuthorizationError`. Returns
    where the walk ended (the caller closes it) and its path with every link
    resolved. ``what`` names ``path`` in errors; anything else that stops the walk
    (an ACL that cannot be read, say) is a :class:`~taonet.HostError`. (Following a
    link needs no permission on the link, as in the kernel; ``fs.protected_symlinks``
    is not applied for the caller.)
    """
    if not os.path.isabs(path):
        raise HostError(f"{what} must be an absolute path")
    try:
        here = _Found(*_open_step(None, "/"))
    except OSError as exc:
        raise HostError(f"cannot open {what}: {_why(exc)} (/)") from exc
    try:
        pending = path.split("/")[::-1]  # a stack: the next component is last
        parts: list[str] = []
        links = 0
        searchable = False  # whether here.fd was checked
        while pending:
            part = pending.pop()
            if not part:
                continue
            where = "/" + "/".join(parts)
            if not stat.S_ISDIR(here.st.st_mode):
                raise HostError(f"cannot open {what}: {where} is not a directory")
            if not searchable:
                acl = None if uid == 0 else _access_acl(here.fd, f"the directory {where}")
                if not _may_search(here.st, acl, uid, gid, groups):
                    raise AuthorizationError(
                        f"uid {uid} (gid {gid}) may not search the directory {where} "
                        f"({_describe(here.st, acl is not None)}), so may not reach {what}"
                    )
                searchable = True
            if part == ".":
                continue
            target = ""
            try:
                fd, st = _open_step(here.fd, part)
                if stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink("", dir_fd=fd)
                    finally:
                        os.close(fd)
            except OSError as exc:
                raise HostError(
                    f"cannot open {what}: {_why(exc)} ({os.path.join(where, part)})"
                ) from exc
            if stat.S_ISLNK(st.st_mode):
                if uid != 0 and _on_procfs(here.fd):
                    # /proc/PID/{cwd,exe,root,fd/N}: read as root they lead where the
                    # caller may not look, and errors would tell it what is there.
                    raise AuthorizationError(
                        f"cannot open {what}: the host does not follow symbolic links in "
                        f"/proc for uid {uid} ({os.path.join(where, part)})"
                    )
                links += 1
                if links > _MAX_SYMLINKS or not target:
                    problem = "an empty symbolic link" if not target else "too many links"
                    raise HostError(f"cannot open {what}: {problem} ({os.path.join(where, part)})")
                pending.extend(target.split("/")[::-1])
                if target.startswith("/"):
                    try:
                        here.step(*_open_step(None, "/"), None)
                    except OSError as exc:
                        raise HostError(f"cannot open {what}: {_why(exc)} (/)") from exc
                    parts.clear()
                    searchable = False
                continue
            if part == "..":
                here.step(fd, st, None)
                if parts:
                    parts.pop()
            else:
                here.step(fd, st, part)
                parts.append(part)
            searchable = False
        return here, "/" + "/".join(parts)
    except BaseException:
        here.close()
        raise


def check_directory_access(path: str, *, uid: int, gid: int, groups: Sequence[int]) -> None:
    """Check that the caller (``uid``, ``gid``, ``groups``) could reach directory ``path``.

    ``path`` is resolved as the kernel would for the caller, symbolic links
    followed: every directory looked up in on the way, and the directory itself,
    must be searchable by the caller by its mode bits and any POSIX access ACL (uid
    0 is exempt), else :class:`~taonet.AuthorizationError`. ``path`` must be
    absolute and an existing directory, else :class:`~taonet.HostError` (as is an
    ACL that cannot be read or parsed).
    """
    _open_directory(path, uid, gid, groups).close()


@attrs.frozen
class _Directory:
    """A checked directory: its ``O_PATH`` descriptor (never 0-2) and resolved path."""

    fd: int
    real: str

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _open_directory(path: str, uid: int, gid: int, groups: Sequence[int]) -> _Directory:
    what = f"the directory {path}"
    found, real = _lookup(path, uid, gid, groups, what)
    try:
        if not stat.S_ISDIR(found.st.st_mode):
            raise HostError(f"{what} is not a directory")
        acl = None if uid == 0 else _access_acl(found.fd, f"the directory {real}")
        if not _may_search(found.st, acl, uid, gid, groups):
            reached = f", reached as {path}" if real != path else ""
            raise AuthorizationError(
                f"uid {uid} (gid {gid}) may not search the directory {real} "
                f"({_describe(found.st, acl is not None)}{reached})"
            )
        # Above stdio: a child's stdio, set up before it chdirs, cannot clobber it.
        fd = fcntl.fcntl(found.fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError as exc:  # pragma: no cover (out of descriptors)
        raise HostError(f"cannot open {what}: {_why(exc)}") from exc
    finally:
        found.close()
    return _Directory(fd, real)


def _ensure_programs_dir(programs_dir: Path) -> None:
    try:
        os.makedirs(programs_dir.parent, exist_ok=True)
        os.mkdir(programs_dir, _PROGRAMS_DIR_MODE)
    except FileExistsError:
        if not programs_dir.is_dir():
            raise ConfigError(f"the programs directory {programs_dir} is not a directory") from None
        return
    except OSError as exc:
        raise ConfigError(
            f"cannot create the programs directory {programs_dir}: {_why(exc)}"
        ) from exc
    try:
        os.chmod(programs_dir, _PROGRAMS_DIR_MODE)  # the umask may have narrowed it
    except OSError as exc:
        raise ConfigError(f"cannot set the mode of {programs_dir}: {_why(exc)}") from exc


def _copy_name(real: str) -> str:
    name = os.path.basename(real)
    return name if name not in ("", ".", "..") else "program"


#: The host's execute-only interpreter copies, next to the programs directory.
INTERPRETERS_DIR: Final = "interpreters"
#: Bounds on a program directory unless the host says otherwise.
DEFAULT_TREE_LIMITS: Final = TreeLimits()
#: The file a program directory runs when the start names no entry (as ``python DIR``).
DEFAULT_ENTRY: Final = "__main__.py"


def _open_found(found: _Found, what: str) -> int:
    """Open the regular file ``found`` for reading: the very file that was checked."""
    if not stat.S_ISREG(found.st.st_mode) or found.name is None:
        raise HostError(f"{what} is not a regular file or a directory")
    # O_NONBLOCK: were it swapped for a FIFO, opening it must not hang.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        src = os.open(found.name, flags, dir_fd=found.parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link now, where the walk found a file
            raise HostError(f"{what} changed while it was being checked") from exc
        raise HostError(f"cannot open {what}: {_why(exc)}") from exc
    try:
        st = os.fstat(src)
        if (st.st_dev, st.st_ino) != (found.st.st_dev, found.st.st_ino):
            raise HostError(f"{what} changed while it was being checked")
    except BaseException:
        os.close(src)
        raise
    return src


def _prepare(
    source: str,
    programs_dir: Path,
    uid: int,
    gid: int,
    groups: Sequence[int],
    max_size: int,
    entry: str | None,
    interpreters: Mapping[str, Interpreter] | None,
    limits: TreeLimits,
    copies: Path | None,
) -> PreparedProgram:
    programs_dir = Path(os.path.abspath(programs_dir))
    copies = programs_dir.parent / INTERPRETERS_DIR if copies is None else copies
    what = f"the program {source}"
    path = source if os.path.isabs(source) else os.path.join(os.getcwd(), source)
    found, real = _lookup(path, uid, gid, groups, what)
    try:
        if stat.S_ISDIR(found.st.st_mode):
            prepared, runnable = _prepare_tree(
                found.fd, real, source, programs_dir, uid, gid, groups, max_size, entry, limits
            )
        else:
            if entry is not None:
                raise HostError(f"{what} is a file: an entry is for a program directory")
            src = _open_found(found, what)
            try:
                prepared = _prepare_file(
                    src, real, source, programs_dir, uid, gid, groups, max_size
                )
            finally:
                os.close(src)
            runnable = True
    finally:
        found.close()
    try:
        prepared = attrs.evolve(prepared, copies=copies)
        return _choose_interpreter(prepared, runnable, uid, gid, interpreters, copies)
    except BaseException:
        prepared.cleanup()
        raise


def _choose_interpreter(
    prepared: PreparedProgram,
    runnable: bool,
    uid: int,
    gid: int,
    interpreters: Mapping[str, Interpreter] | None,
    copies: Path,
) -> PreparedProgram:
    """``prepared`` with the host's interpreter that is to run it, if any (from the
    first line of its copy), executed from its execute-only copy under ``copies``;
    AuthorizationError if the kernel is to execute a program directory's entry that
    the caller could not (``runnable``). A binary the kernel executes (no ``#!``
    line) is made execute-only for the caller (:func:`_make_execute_only`)."""
    what = prepared.source if prepared.entry is None else f"{prepared.source}/{prepared.entry}"
    try:
        with open(prepared.path, "rb") as copy:
            head = copy.read(SHEBANG_BYTES)
    except OSError as exc:
        raise HostError(f"cannot read the copy of {what}: {_why(exc)}") from exc
    name = choose_interpreter(head, what=what, interpreters=interpreters, entry=prepared.entry)
    if name is None:
        if not runnable:
            raise AuthorizationError(
                f"uid {uid} (gid {gid}) may not execute {what}, the entry of the program "
                "directory, which the kernel is to run (only a '#!/usr/bin/env NAME' "
                "line, or a .py name without '#!', has the host's interpreter run it)"
            )
        check_kernel_run(head, prepared.path, what)
        if not head.startswith(b"#!"):
            _make_execute_only(prepared.path, uid, what)
        return prepared
    assert interpreters is not None
    known = interpreters[name]
    # Checked again (and hashed again if it changed): the name says what runs.
    interpreter = check_interpreter(name, known.path, owner=os.geteuid(), known=known)
    executable = private_copy(interpreter, copies)
    return attrs.evolve(prepared, interpreter=interpreter, executable=executable)


def _make_execute_only(path: Path, uid: int, what: str) -> None:
    """Let the caller ``uid`` execute but not read the copy at ``path`` (a binary).

    The kernel makes a process that executes a file it may not read non-dumpable:
    no other process of its uid can then reach into it (``/proc/<pid>/fd``,
    ``pidfd_getfd``, ptrace, a core dump). A root host's copy for another uid keeps
    its ACL form with ``--x`` for that uid (mode shown 0510), or without ACLs mode
    0510 for the group; any other copy (the host's own uid's) becomes mode 0100,
    which its owner may execute but, not being root, not read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise HostError(f"cannot open the copy of {what}: {_why(exc)}") from exc
    try:
        if os.geteuid() == 0 and uid != 0:
            acl = _access_acl(fd, f"the copy of {what}")
            if acl is None or not _set_acl(fd, _only_user_acl(uid, 0o5, 0o1), path):
                os.fchmod(fd, 0o510)
        else:
            os.fchmod(fd, 0o100)
    except OSError as exc:
        raise HostError(f"cannot make the copy of {what} execute-only: {_why(exc)}") from exc
    finally:
        os.close(fd)


def _new_directory(programs_dir: Path, uid: int, gid: int) -> tuple[Path, bytes | None, int, bool]:
    """A fresh private directory for one program's copy (see the module docstring).

    Returns it, the ACL for a single file's copy (None: by mode), the group the
    copies get (-1: the host's), and whether they are shared with another uid.
    """
    # A root host's copy for another uid is the caller's uid's alone (by an ACL),
    # else (no ACLs) the caller's gid's.
    shared = os.geteuid() == 0 and uid != 0
    group = gid if shared else -1
    _ensure_programs_dir(programs_dir)
    directory = programs_dir / secrets.token_hex(16)
    try:
        os.mkdir(directory, _PRIVATE_DIR_MODE)
    except OSError as exc:
        raise ConfigError(f"cannot create a directory in {programs_dir}: {_why(exc)}") from exc
    try:
        copy_acl = _seal_directory(directory, uid, group, shared)
    except BaseException:
        remove_tree(directory)
        raise
    return directory, copy_acl, group, shared


def _prepare_file(
    src: int,
    real: str,
    source: str,
    programs_dir: Path,
    uid: int,
    gid: int,
    groups: Sequence[int],
    max_size: int,
) -> PreparedProgram:
    st = os.fstat(src)
    if not stat.S_ISREG(st.st_mode):  # pragma: no cover (checked by _open_found)
        raise HostError(f"the program {source} is not a regular file")
    if st.st_size > max_size:
        raise HostError(
            f"the program {source} is {st.st_size} bytes, over the {max_size}-byte limit"
        )
    _refuse_noexec(src, source, uid, gid)
    acl = None if uid == 0 else _access_acl(src, f"the program {source}")
    if not _may_read_and_execute(st, acl, uid, gid, groups):
        raise AuthorizationError(
            f"uid {uid} (gid {gid}) may not read and execute {source} "
            f"({_describe(st, acl is not None)})"
        )
    directory, copy_acl, group, shared = _new_directory(programs_dir, uid, gid)
    prepared = PreparedProgram(
        path=directory / _copy_name(real),
        directory=directory,
        program_hash=b"",
        source=source,
    )
    try:
        copy_mode = _SHARED_COPY_MODE if shared else _PRIVATE_COPY_MODE
        digest, size = _copy(src, prepared.path, source, max_size, group, copy_mode, copy_acl)
    except BaseException:
        prepared.cleanup()
        raise
    # One file, one entry: its bytes (the per-uid count of programs bounds the rest).
    return attrs.evolve(prepared, program_hash=digest, size=size, charged=size)


def _refuse_noexec(fd: int, source: str, uid: int, gid: int) -> None:
    if os.fstatvfs(fd).f_flag & os.ST_NOEXEC:  # the kernel would execute it for no one
        raise AuthorizationError(
            f"uid {uid} (gid {gid}) may not read and execute {source}: "
            "it is on a filesystem mounted noexec"
        )


def _prepare_tree(
    root: int,
    real: str,
    source: str,
    programs_dir: Path,
    uid: int,
    gid: int,
    groups: Sequence[int],
    max_size: int,
    entry: str | None,
    limits: TreeLimits,
) -> tuple[PreparedProgram, bool]:
    """Copy the program directory at ``root`` (its checked ``O_PATH`` descriptor);
    the prepared program, and whether the caller may execute its entry itself."""
    entry = DEFAULT_ENTRY if entry is None else entry
    raw_entry = check_entry(entry)
    directory, copy_acl, group, shared = _new_directory(programs_dir, uid, gid)
    copy_root = directory / _copy_name(real)
    try:
        try:
            os.mkdir(copy_root, 0o700)
            dst = os.open(copy_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot create a directory in {directory}: {_why(exc)}") from exc
        try:
            copied = copy_tree(
                root,
                dst,
                source=source,
                entry=raw_entry,
                uid=uid,
                gid=gid,
                groups=groups,
                limits=limits,
                max_bytes=max_size,
                seal=Seal(
                    group=group, uid=uid if shared else None, acl=shared and copy_acl is not None
                ),
                budget=max_size,
            )
        finally:
            os.close(dst)
        if not copied.entry_found:
            raise HostError(
                f"the program directory {source} has no file {entry} to run"
                + (" (name one: taonet run --entry RELPATH)" if entry == DEFAULT_ENTRY else "")
            )
    except BaseException:
        remove_tree(directory)
        raise
    prepared = PreparedProgram(
        path=copy_root / entry,
        directory=directory,
        program_hash=tree_hash(copied.entries),
        source=source,
        root=copy_root,
        entry=entry,
        size=copied.total,
        charged=copied.charged,
    )
    return prepared, copied.entry_executable


def _seal_directory(directory: Path, uid: int, group: int, shared: bool) -> bytes | None:
    """Make the new (mode 0700) ``directory`` private, or ``uid``'s too if ``shared``.

    It gets ``group`` (-1: unchanged), loses any ACL it inherited, and then is mode
    0700, or if ``shared`` has the ACL that lets ``uid`` search it (or, without
    ACLs, mode 0710). Returns the ACL the copy in it is to get (None: by mode).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open {directory}: {_why(exc)}") from exc
    copy_acl = None
    try:
        os.fchown(fd, -1, group)
        os.fchmod(fd, _PRIVATE_DIR_MODE)  # exactly: the umask may have narrowed it
        _clear_acls(fd)  # what a default ACL above gave it, and would give the copy
        if shared:
            if _set_acl(fd, _only_user_acl(uid, *_ACL_DIR_PERMS), directory):
                copy_acl = _only_user_acl(uid, *_ACL_COPY_PERMS)
            else:
                os.fchmod(fd, _SHARED_DIR_MODE)
    except OSError as exc:
        raise ConfigError(f"cannot set the mode of {directory}: {_why(exc)}") from exc
    finally:
        os.close(fd)
    return copy_acl


def _copy(
    src: int,
    target: Path,
    source: str,
    max_size: int,
    group: int,
    mode: int,
    acl: bytes | None,
) -> tuple[bytes, int]:
    """Copy from ``src`` to a new file at ``target``; the SHA-256 of what was written,
    and its size.

    The copy is written while it is mode 0600 (the host's alone) and fsync'd; then
    it gets ``group`` (-1: unchanged) and the access ``acl`` (which sets its mode),
    or exactly ``mode`` if there is no ACL or the filesystem has none.
    """
    digest = hashlib.sha256()
    total = 0
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise HostError(f"cannot create the copy of {source}: {_why(exc)}") from exc
    try:
        while True:
            try:
                chunk = os.read(src, COPY_CHUNK)
            except OSError as exc:
                raise HostError(f"cannot read the program {source}: {_why(exc)}") from exc
            if not chunk:
                break
            total += len(chunk)
            if total > max_size:  # it grew while being copied
                raise HostError(f"the program {source} is over the {max_size}-byte limit")
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
        os.fsync(out)
        os.fchown(out, -1, group)  # still 0600: the group gets nothing yet
        if acl is None or not _set_acl(out, acl, target):
            os.fchmod(out, mode)
    except OSError as exc:
        raise HostError(f"cannot write the copy of {source}: {_why(exc)}") from exc
    finally:
        os.close(out)
    return digest.digest(), total


async def prepare_program(
    source: str | Path,
    programs_dir: Path,
    *,
    uid: int,
    gid: int,
    groups: Sequence[int] = (),
    max_size: int = DEFAULT_MAX_SIZE,
    entry: str | None = None,
    interpreters: Mapping[str, Interpreter] | None = None,
    tree_limits: TreeLimits = DEFAULT_TREE_LIMITS,
    interpreter_copies: Path | None = None,
) -> PreparedProgram:
    """Check and measure ``source`` for a caller, as a private copy under ``programs_dir``.

    ``source`` (if relative, to the host's working directory) is resolved as the
    kernel would for the caller (``uid``, ``gid``, supplementary ``groups``; see the
    module docstring): every directory on the way, through any symbolic links, must
    be searchable by the caller, and the file must be a regular file of at most
    ``max_size`` bytes that the caller may read and execute, all by mode bits and
    any POSIX access ACL, as the kernel would decide (uid 0 is exempt from the
    directory checks, and needs only some execute bit on the file), and not on a
    filesystem mounted ``noexec`` (for anyone), else
    :class:`~taonet.AuthorizationError`. The file is opened relative to
    the directory checked, not following a link, and must be the same file (device
    and inode) that was checked, else :class:`~taonet.HostError`.

    The bytes are copied from that one descriptor into
    ``programs_dir/<random>/<basename of the resolved file>`` and hashed as written;
    the copy is fsync'd. If the host is root and ``uid`` is not 0, the directory and
    the copy are root:``gid``, with access ACLs that let ``uid`` alone search the
    directory and read and execute the copy (modes 0710 and 0550, as shown); on a
    filesystem without ACLs, they are modes 0710 and 0550 for the group (so spawn
    it with the same ``gid``), and a warning is logged once. Otherwise they are the
    host's, modes 0700 and 0500.
    ``programs_dir`` is created (mode 0711) if missing; a problem with it is a
    :class:`~taonet.ConfigError`. Anything else that stops the program being
    prepared is a :class:`~taonet.HostError`.

    If ``source`` is a directory, it is a program directory (:mod:`._tree`): walked
    and copied to ``programs_dir/<random>/<its basename>/`` within ``tree_limits``
    and ``max_size`` bytes in all, its hash that of its manifest; ``entry`` (default
    ``__main__.py``) is the file in it that runs, which the caller must be able to
    execute unless the host's interpreter runs it. ``entry`` with a single file is a
    HostError. ``interpreters`` are those the host offers (None: no
    ``[interpreters]`` table): the first line of what runs decides whether one of
    them runs it (:func:`~taonet.hosts.linux._interpreters.choose_interpreter`);
    the one chosen is checked again and is in the result, with the path of its
    execute-only copy under ``interpreter_copies`` (default: ``interpreters`` next to
    ``programs_dir``; :func:`~taonet.hosts.linux._interpreters.private_copy`). A copy
    the kernel executes that has no ``#!`` line (a binary) is made execute-only for
    the caller, so that its process is not dumpable (see :func:`_make_execute_only`).

    Libraries a program loads from outside what was copied are not measured. The
    caller owns the result and calls :meth:`PreparedProgram.cleanup` once the
    program is done with.
    """
    if max_size < 0:
        raise ValueError("max_size must not be negative")
    src = os.fspath(source)
    groups = tuple(groups)
    return await trio.to_thread.run_sync(
        _prepare,
        src,
        programs_dir,
        uid,
        gid,
        groups,
        max_size,
        entry,
        interpreters,
        tree_limits,
        interpreter_copies,
    )


def _str_tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


@attrs.frozen
class Sandbox:
    """How a hosted program is confined: ``none``, or ``bwrap`` (bubblewrap).

    Under bwrap the program sees the host's filesystem read-only (its working
    directory read-write), a private /dev, /proc and empty /tmp, and new namespaces
    of every kind; the network is shared unless ``share_network`` is False (hosted
    programs talk TCP on 127.0.0.1). ``read_only`` names more paths to bind read-only
    after the empty /tmp: what a program needs that lives under /tmp (an interpreter
    or a virtual environment, say). Bubblewrap does not forward signals: any signal
    that ends the sandbox's process group kills the program with SIGKILL.
    """

    kind: str = attrs.field(default="none", validator=attrs.validators.in_(("none", "bwrap")))
    share_network: bool = True
    #: The bubblewrap executable: a path, or a name looked up in the host's PATH
    #: (never the hosted program's).
    bwrap: str = "bwrap"
    read_only: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    def wrap(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None,
        program_dir: str | None = None,
        replace: Sequence[tuple[str, str]] = (),
        shell: str = _SHELL,
    ) -> list[str]:
        """The command that runs ``argv`` (whose first item is the program) confined.

        For bwrap, the program's own directory (``program_dir``, by default the
        directory of ``argv[0]``) is bound read-only after the empty /tmp (the host's
        copies may live under /tmp). bwrap runs under a ``sh`` that
        waits for it: ``--die-with-parent`` ties bwrap to the *thread* that started
        it, and Trio starts processes from worker threads that exit when idle, which
        would kill the sandbox seconds after it started. Each (source, target) of
        ``replace`` binds the file ``source`` read-only over ``target`` (the host's
        execute-only copy of an interpreter over the file it was copied from).
        ``shell`` is the ``sh`` to run (the host's execute-only copy of it: it holds
        the program's channel while it waits, so it must not be dumpable).
        """
        argv = list(argv)
        if self.kind == "none":
            return argv
        if not argv:
            raise ValueError("argv must name a program")
        bwrap = self.bwrap if os.path.isabs(self.bwrap) else shutil.which(self.bwrap)
        if bwrap is None:
            raise HostError(f"the sandbox needs bubblewrap, but {self.bwrap!r} is not installed")
        # A non-interactive sh reads no startup file, so the caller's environment
        # (which it passes on) cannot make it run anything but bwrap.
        command = [shell, "-c", _SUPERVISOR, "taonet-sandbox", bwrap]
        command += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        command += ["--tmpfs", "/tmp"]  # noqa: S108 (the sandbox's own, empty)
        for path in self.read_only:
            if not os.path.isabs(path):
                raise HostError(f"sandbox paths must be absolute: {path!r}")
            command += ["--ro-bind", path, path]
        if program_dir is None:
            program_dir = os.path.dirname(argv[0])
        if os.path.isabs(program_dir) and program_dir != "/":
            command += ["--ro-bind", program_dir, program_dir]
        if cwd is not None:
            command += ["--bind", cwd, cwd]
        for source, target in replace:
            command += ["--ro-bind", source, target]
        command += ["--unshare-all"]
        if self.share_network:
            command += ["--share-net"]
        command += ["--die-with-parent", "--new-session"]
        if cwd is not None:
            command += ["--chdir", cwd]
        return [*command, "--", *argv]


class HostChannel(trio.abc.AsyncResource):
    """The two pipes between the host and one hosted program.

    Create with :meth:`open`; pass :attr:`child_fds` to the child and tell it
    :meth:`spec`; take the host's side once with :meth:`host_stream`. After spawning,
    :meth:`close_child_ends` (done by :func:`spawn_program`): a parent that keeps
    them never sees end-of-file. :meth:`aclose` closes whatever is still open.
    """

    def __init__(self, host_read: int, host_write: int, child_read: int, child_write: int):
        self._host_read: int | None = host_read
        self._host_write: int | None = host_write
        self._child: tuple[int, int] | None = (child_read, child_write)
        self._fds = (child_read, child_write)
        self._stream: trio.StapledStream[trio.lowlevel.FdStream, trio.lowlevel.FdStream] | None = (
            None
        )

    @classmethod
    def open(cls) -> HostChannel:
        """Two new close-on-exec pipes: host to child, and child to host."""
        fds: list[int] = []
        try:
            for _ in range(2):
                fds.extend(os.pipe2(os.O_CLOEXEC))
            for index, fd in enumerate(fds):
                if fd <= 2:  # stdio was closed: move it up, so a child's stdio cannot clobber it
                    fds[index] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                    os.close(fd)
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        to_child_read, to_child_write, to_host_read, to_host_write = fds
        return cls(to_host_read, to_child_write, to_child_read, to_host_write)

    @property
    def child_fds(self) -> tuple[int, int]:
        """The child's (read, write) descriptors, to pass to it."""
        return self._fds

    def spec(self) -> str:
        """The ``CLOUDPROXY_TAO_HOST_SPEC`` that tells the child its descriptors."""
        read, write = self._fds
        return f"tao::RPC+tao::FDMessageChannel({read}, {write})"

    def host_stream(self) -> trio.StapledStream[trio.lowlevel.FdStream, trio.lowlevel.FdStream]:
        """The host's side as a stream (which then owns those descriptors); once only."""
        if self._host_read is None or self._host_write is None:
            raise trio.ClosedResourceError("the host's side of this channel was already taken")
        send = trio.lowlevel.FdStream(self._host_write)
        self._host_write = None
        receive = trio.lowlevel.FdStream(self._host_read)
        self._host_read = None
        self._stream = trio.StapledStream(send, receive)
        return self._stream

    def close_child_ends(self) -> None:
        """Close the child's descriptors in the host (idempotent)."""
        child, self._child = self._child, None
        for fd in child or ():
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close every descriptor not yet handed to :meth:`host_stream`."""
        self.close_child_ends()
        for fd in (self._host_read, self._host_write):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._host_read = self._host_write = None

    async def aclose(self) -> None:
        """Close everything, including the host's stream if it was taken."""
        self.close()
        if self._stream is not None:
            await self._stream.aclose()
        else:
            await trio.lowlevel.checkpoint()


def _identity(uid: int, gid: int) -> tuple[int | None, int | None]:
    """The (user, group) to switch to, or (None, None) to stay the host's."""
    if uid < 0 or gid < 0:
        raise HostError(f"uid {uid} and gid {gid} must not be negative")
    host_uid, host_gid = os.geteuid(), os.getegid()
    if (uid, gid) == (host_uid, host_gid):
        return None, None
    if host_uid != 0:
        raise HostError(
            f"a host running as uid {host_uid} (gid {host_gid}) cannot start a program "
            f"as uid {uid} (gid {gid})"
        )
    return uid, gid


def _child_env(
    env: Mapping[str, str], channel: HostChannel | None, host_type: str
) -> dict[str, str]:
    child = {key: value for key, value in env.items() if key not in _HOST_VARIABLES}
    if channel is not None:
        child[HOST_TYPE] = host_type
        child[HOST_CHANNEL_TYPE] = "pipe"
        child[HOST_SPEC] = channel.spec()
    return child


async def spawn_program(
    prepared: PreparedProgram,
    *,
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    uid: int,
    gid: int,
    channel: HostChannel | None,
    host_type: str = "stacked",
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    sandbox: Sandbox = Sandbox(),
    groups: Sequence[int] = (),
) -> trio.Process:
    """Start the prepared copy with ``args`` as ``uid``/``gid``, in its own process group.

    The environment is exactly ``env`` plus the three ``CLOUDPROXY_TAO_HOST_*``
    variables for ``channel`` (which replace any in ``env``; with no channel all
    three are removed). A root host switches to ``uid`` and ``gid`` with exactly the
    supplementary ``groups`` (by default none): the groups the caller's checks were
    made with, by :func:`prepare_program` and here. A program whose ``uid`` and
    ``gid`` are the host's own stays the host's user and keeps the host's groups (so
    check it with those); any other host can only start programs as itself.
    ``stdin``/``stdout``/``stderr`` are descriptors to give the child (None for
    /dev/null); they stay the caller's to close. The channel's child ends are closed
    once the attempt is over, whether it worked or not; on failure, the caller
    still closes the channel. Failure to start is a :class:`~taonet.HostError`.

    The child changes to ``cwd`` while still the host's user, so when it is to run
    as another user the caller (``uid``, ``gid`` and supplementary ``groups``) must
    be able to reach ``cwd`` (see :func:`check_directory_access`: else
    :class:`~taonet.AuthorizationError`, or :class:`~taonet.HostError` if it is not
    an absolute path to a directory), and the child changes into the directory that
    was checked, whatever the path names by then. With no ``cwd`` such a child
    starts in ``/`` (not in the host's working directory); a child that stays the
    host's user inherits the host's working directory, as before. ``prepared`` must
    come from :func:`prepare_program` for the same ``uid`` and ``gid``.

    A program run by the host's interpreter executes its execute-only copy
    (``prepared.executable``) with the interpreter's configured path as ``argv[0]``;
    under bwrap the copy is bound over the interpreter's file instead. This process's
    ``RLIMIT_CORE`` becomes 0, hard, before the first child (see the module docstring).
    """
    directory: _Directory | None = None
    try:
        user, group = _identity(uid, gid)
        run_in = cwd
        if user is not None:
            if cwd is None:
                run_in = "/"
            else:
                directory = await trio.to_thread.run_sync(
                    _open_directory, cwd, uid, gid, tuple(groups)
                )
                cwd = directory.real  # what the sandbox binds (bwrap runs as the caller)
                # The child still holds this descriptor when it chdirs (before it
                # closes what it should not keep): it enters the checked directory.
                run_in = f"/proc/self/fd/{directory.fd}"
        executable = prepared.executable
        replace: list[tuple[str, str]] = []
        if executable is not None and prepared.interpreter is not None and sandbox.kind != "none":
            # bwrap cannot set argv[0]: its copy takes the interpreter's place instead.
            real = await trio.to_thread.run_sync(os.path.realpath, prepared.interpreter.path)
            replace.append((executable, real))
            executable = None
        shell = _SHELL
        if sandbox.kind != "none" and prepared.copies is not None:
            shell = await trio.to_thread.run_sync(_shell_copy, prepared.copies)
        argv = sandbox.wrap(
            prepared.argv(args),
            cwd=cwd,
            program_dir=str(prepared.directory),
            replace=replace,
            shell=shell,
        )
        child_env = _child_env(env, channel, host_type)
        pass_fds = channel.child_fds if channel is not None else ()
        _no_core_dumps()
        for attempt in range(1, _ETXTBSY_ATTEMPTS + 1):
            try:
                return await trio.lowlevel.open_process(
                    argv,
                    executable=executable,
                    stdin=subprocess.DEVNULL if stdin is None else stdin,
                    stdout=subprocess.DEVNULL if stdout is None else stdout,
                    stderr=subprocess.DEVNULL if stderr is None else stderr,
                    env=child_env,
                    cwd=run_in,
                    pass_fds=pass_fds,
                    close_fds=True,
                    process_group=0,
                    # None: stay the host (and keep its groups); else exactly ``groups``.
                    user=user,
                    group=group,
                    extra_groups=None if user is None else list(groups),
                )
            except OSError as exc:
                if exc.errno == errno.ETXTBSY and attempt < _ETXTBSY_ATTEMPTS:
                    await trio.sleep(_ETXTBSY_BACKOFF * attempt)
                    continue
                where = exc.filename
                if directory is not None and where == run_in:
                    where = cwd
                where = f" ({where})" if where is not None else ""
                raise HostError(
                    f"cannot start {prepared.source} as uid {uid}: {_why(exc)}{where}"
                ) from exc
            except ValueError as exc:  # a NUL byte or '=' where subprocess refuses it
                raise HostError(f"cannot start {prepared.source}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        if directory is not None:
            directory.close()
        if channel is not None:
            channel.close_child_ends()


#: A program's private directory in the programs directory (``secrets.token_hex(16)``).
_COPY_DIRECTORY: Final = re.compile(r"^[0-9a-f]{32}$")


#: A directory of the host's interpreter copies (the interpreter's SHA-256, in hex).
_INTERPRETER_DIRECTORY: Final = re.compile(r"^[0-9a-f]{64}$")


def _copies_in_use(programs_dir: str, pattern: re.Pattern[str] = _COPY_DIRECTORY) -> set[str]:
    """Names of the copy directories in ``programs_dir`` that a live process
    executes, works in, or names on its command line (as far as this process may see)."""
    prefix = programs_dir.rstrip("/") + "/"
    used: set[str] = set()

    def note(text: str) -> None:
        start = text.find(prefix)
        while start >= 0:
            name = text[start + len(prefix) :].split("/", 1)[0].split(" ", 1)[0]
            if pattern.match(name):
                used.add(name)
            start = text.find(prefix, start + 1)

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for link in ("exe", "cwd"):
            with contextlib.suppress(OSError):
                note(os.readlink(f"/proc/{pid}/{link}"))
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            note(os.fsdecode(cmdline.read(1 << 20)).replace("\0", " "))
    return used


def remove_stale_copies(programs_dir: Path) -> int:
    """Remove the copies a host left in ``programs_dir`` (a crash, a kill): those of
    programs no longer running. A copy a live process still executes, works in or
    names on its command line is kept (a program that outlived its crashed host).
    Returns how many were removed; a missing ``programs_dir`` has none."""
    try:
        names = [name for name in os.listdir(programs_dir) if _COPY_DIRECTORY.match(name)]
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise ConfigError(
            f"cannot list the programs directory {programs_dir}: {_why(exc)}"
        ) from exc
    if not names:
        return 0
    used = _copies_in_use(os.path.abspath(programs_dir))
    removed = 0
    for name in names:
        if name in used:
            log.warning("stale_copy_in_use", directory=name)
            continue
        remove_tree(programs_dir / name)
        removed += 1
    return removed


def _shell_copy(copies: Path) -> str:
    """The host's execute-only copy of ``sh`` (see :meth:`Sandbox.wrap`)."""
    return private_copy(check_interpreter("sh", _SHELL, owner=os.geteuid()), copies)


def remove_stale_interpreter_copies(directory: Path, keep: Iterable[bytes]) -> int:
    """Remove the host's interpreter copies in ``directory`` whose hash is not in
    ``keep`` (interpreters measured now) and that no live process executes: those of
    an interpreter since updated. Returns how many were removed."""
    wanted = {digest.hex() for digest in keep}
    try:
        names = [n for n in os.listdir(directory) if _INTERPRETER_DIRECTORY.match(n)]
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise ConfigError(f"cannot list {directory}: {_why(exc)}") from exc
    stale = [name for name in names if name not in wanted]
    if not stale:
        return 0
    used = _copies_in_use(os.path.abspath(directory), _INTERPRETER_DIRECTORY)
    removed = 0
    for name in stale:
        if name not in used:
            remove_tree(directory / name)
            removed += 1
    return removed


def _no_core_dumps() -> None:
    """Set this process's ``RLIMIT_CORE`` to 0, hard: its children inherit it.

    A program's core would hold what it unsealed, and whoever shares its uid could
    raise a soft limit (``prlimit``) and make it dump; a hard limit of 0 only
    ``CAP_SYS_RESOURCE`` can raise. The host, which holds keys, dumps no core either.
    """
    if resource.getrlimit(resource.RLIMIT_CORE) != (0, 0):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


async def signal_group(process: trio.Process, sig: int) -> bool:
    """Send ``sig`` to ``process``'s process group; False if the group is gone.

    The group outlives its leader while any member (a grandchild, say) is alive,
    so this reaches those too. A leader that exited but was not yet waited for
    still counts as a member.
    """
    await trio.lowlevel.checkpoint()
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise HostError(f"cannot signal process group {process.pid}: {_why(exc)}") from exc
    return True
