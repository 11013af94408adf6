"""Program trees: a hosted program that is a directory, measured file by file.

A Linux host can run a program that is a directory (a Python service split over
modules and packages, say) as well as a single file. :func:`copy_tree` walks the
directory as the caller would see it and copies it into the program's private
directory, hashing every file as it is written, in one pass over descriptors it
holds:

* **As the caller, on held descriptors.** The directory itself is found as for a
  single file (``_lookup`` in :mod:`._process`: every directory on the way must be
  searchable by the caller, links on the way followed as the kernel would). Inside
  the tree every entry is opened ``O_PATH | O_NOFOLLOW`` relative to the descriptor
  of the directory that was checked, its type and permissions are taken from that
  descriptor (``fstat``, and its POSIX access ACL), and a file is then read, and a
  directory listed, through ``/proc/self/fd`` of that very descriptor: renaming or
  swapping an entry during the walk changes nothing that is read, and a swap for a
  link is seen as a link. The caller (its uid, gid and supplementary groups, by mode
  bits and access ACLs, as the kernel decides; uid 0 is exempt) must be able to list
  and search every directory (``r-x``) and read every file (``r``); no file may be
  on a filesystem mounted ``noexec`` (for anyone: whoever mounted it so meant that
  nothing there runs).
* **What is refused.** A symbolic link anywhere in the tree (links are not
  measured: a link, even one that stays inside the tree, is refused, so nothing can
  lead out of it), a FIFO, a socket or a device. A hard link is copied as the file
  it is (its bytes are what is measured; other names of it outside the tree do not
  matter, since the copy is made from one descriptor). Directories named
  ``__pycache__`` are skipped, neither copied nor measured (Python's caches of
  compiled modules, written by whoever ran the sources; the copy is read-only, so
  the interpreter compiles in memory).
* **Bounded** (:class:`TreeLimits`, ``[program_tree]`` in ``host.toml``): at most
  ``max_files`` entries (files and directories, everything a listing returns,
  counted as it is read: a directory of 100,000 files is refused after
  ``max_files`` names), ``max_bytes`` bytes in all (checked against each file's size
  before it is read, and again while it is copied, so a file that grows is caught),
  directories at most ``max_depth`` levels below the root, and names of at most
  ``max_name_bytes`` bytes (relative paths at most 4096). A refusal says which limit
  and where. Against a user's share of the host (``max_size``) the copy is charged
  what it takes on disk: every file and directory at least one block (4096 bytes:
  an inode and its name) plus each file's bytes in whole blocks, so 10,000 empty
  directories cost 40 MB of that share, not nothing.
* **Copied as the caller may use it.** Each copied file and directory is the
  host's while it is written (0600 and 0700; files are not fsync'd one by one: a
  copy serves one run and is never used after a crash), then sealed: for the host's own uid
  (and any program of a non-root host) directories 0500 and files 0400, or 0500 if
  the source had an execute bit; for another uid on a root host, root-owned with the
  caller's gid and access ACLs that give that uid alone ``r-x`` on directories and
  ``r--`` (``r-x`` if executable) on files (modes shown 0550 and 0440/0550), falling
  back to those modes for the group where the filesystem has no ACLs. The program
  can read and run its copy but not change it. An entry the kernel runs that is a
  binary (no ``#!`` line) is then made execute-only for the caller, so that its
  process is not dumpable (:mod:`._process`).

The **manifest** (:func:`encode_manifest`) is the tree's canonical description:
``MANIFEST_MAGIC``, the number of entries (u32), then each entry in the order of its
relative path's bytes: its kind (u8: 1 file, 2 directory), the path's length (u32)
and bytes (``/``-separated, no ``.`` or ``..``), and for a file whether it is
executable (u8 0 or 1: any execute bit), its size (u64) and the SHA-256 of its bytes
(32 bytes). All integers are big-endian. Every variable-length field is
length-prefixed and the rest have fixed sizes, so the encoding is unambiguous: two
different trees (a byte moved between a name and a content, or between two files, a
file for a directory, an execute bit) give different manifests. The tree's hash is
the SHA-256 of its manifest, and its principal is ``ProgramTree([hash], "entry")``
(see :func:`tree_subprin`): a different extension from a single file's
``Program([hash])``, so a directory's name can never be taken for a file's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs

from taonet import auth
from taonet._errors import AuthorizationError, ConfigError, HostError
from taonet._files import file_kind

__all__ = [
    "MANIFEST_MAGIC",
    "PROGRAM_TREE",
    "SKIPPED_DIRECTORIES",
    "TreeEntry",
    "TreeLimits",
    "copy_tree",
    "encode_manifest",
    "tree_hash",
    "tree_subprin",
]

#: The first bytes of every manifest (and so part of every tree's hash).
MANIFEST_MAGIC: Final = b"taonet program tree manifest v1\n"
#: The principal extension of a program that is a directory.
PROGRAM_TREE: Final = "ProgramTree"
#: Directories neither copied nor measured (see the module docstring).
SKIPPED_DIRECTORIES: Final = frozenset({"__pycache__"})
#: Entry kinds in the manifest.
FILE: Final = 1
DIRECTORY: Final = 2
#: Longest relative path in a tree (PATH_MAX).
MAX_PATH_BYTES: Final = 4096
_CHUNK: Final = 1 << 20
_WALK: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Reopens a held descriptor through /proc/self/fd (a magic link to that very file).
_READ: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_EXECUTE_BITS: Final = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"program_tree {attribute.name} must be a positive integer: {value!r}")


@attrs.frozen
class TreeLimits:
    """Bounds on a program that is a directory (``[program_tree]`` in ``host.toml``)."""

    #: Entries (files and directories) in the tree.
    max_files: int = attrs.field(default=10_000, validator=_positive)
    #: Bytes of all its files together (another user's start is also held to its
    #: per-start share of its uid's budget).
    max_bytes: int = attrs.field(default=1 << 30, validator=_positive)
    #: Levels of directories below the tree's root.
    max_depth: int = attrs.field(default=32, validator=_positive)
    #: Bytes in one file or directory name.
    max_name_bytes: int = attrs.field(default=255, validator=_positive)


@attrs.frozen
class TreeEntry:
    """One file or directory of a tree, as the manifest records it."""

    #: Relative, ``/``-separated path.
    path: bytes
    #: :data:`FILE` or :data:`DIRECTORY`.
    kind: int
    executable: bool = False
    size: int = 0
    digest: bytes = b""


def encode_manifest(entries: Iterable[TreeEntry]) -> bytes:
    """The canonical manifest of a tree (see the module docstring).

    ``entries`` in any order; ValueError for a duplicate path, a path that is empty,
    absolute or holds ``.``, ``..`` or an empty component, or a file without a
    32-byte digest.
    """
    ordered = sorted(entries, key=lambda entry: entry.path)
    out = [MANIFEST_MAGIC, struct.pack(">I", len(ordered))]
    previous: bytes | None = None
    for entry in ordered:
        if entry.path == previous:
            raise ValueError(f"the manifest names {entry.path!r} twice")
        previous = entry.path
        parts = entry.path.split(b"/")
        if any(part in (b"", b".", b"..") for part in parts) or b"\0" in entry.path:
            raise ValueError(f"{entry.path!r} is not a relative path inside the tree")
        out.append(struct.pack(">BI", entry.kind, len(entry.path)))
        out.append(entry.path)
        if entry.kind == FILE:
            if len(entry.digest) != 32:
                raise ValueError(f"{entry.path!r} has no SHA-256 digest")
            out.append(struct.pack(">BQ", 1 if entry.executable else 0, entry.size))
            out.append(entry.digest)
        elif entry.kind != DIRECTORY:
            raise ValueError(f"unknown entry kind {entry.kind}")
    return b"".join(out)


def tree_hash(entries: Iterable[TreeEntry]) -> bytes:
    """SHA-256 of the tree's manifest: what its principal names."""
    return hashlib.sha256(encode_manifest(entries)).digest()


def tree_subprin(
    digest: bytes,
    entry: str,
    interpreter: tuple[str, bytes] | None = None,
    *,
    program_id: int = 0,
) -> auth.SubPrin:
    """``ProgramTree([hash], "entry")``, with ``"/interpreter", [its hash]`` after them
    when the host's interpreter runs the entry, and the program id first if not 0."""
    args: list[auth.Term] = [auth.Bytes(digest), auth.Str(entry)]
    if program_id:
        args.insert(0, auth.Int(program_id))
    if interpreter is not None:
        args += [auth.Str(interpreter[0]), auth.Bytes(interpreter[1])]
    return auth.SubPrin((auth.PrinExt(PROGRAM_TREE, tuple(args)),))


def check_entry(entry: str) -> bytes:
    """The entry's relative path as bytes; HostError unless it stays inside a tree."""
    raw = os.fsencode(entry)
    parts = raw.split(b"/")
    if (
        not raw
        or len(raw) > 255
        or raw.startswith(b"/")
        or any(part in (b"", b".", b"..") for part in parts)
        or b"\0" in raw
        or any(os.fsdecode(part) in SKIPPED_DIRECTORIES for part in parts[:-1])
    ):
        raise HostError(
            f"the entry {entry!r} must be a relative path of at most 255 bytes inside the "
            "program's directory (no '..', no empty or '.' components)"
        )
    return raw


@attrs.frozen
class Seal:
    """How the copies are made the caller's (see the module docstring)."""

    #: The group the copies get (-1: unchanged).
    group: int
    #: The uid that alone may use them (with ``acl``), or None: the host's own uid.
    uid: int | None
    #: Whether the filesystem takes access ACLs (else modes for the group).
    acl: bool


@attrs.define
class TreeCopy:
    """What :func:`copy_tree` copied: the entries, their bytes, and the entry's checks."""

    entries: list[TreeEntry] = attrs.Factory(list)
    total: int = 0
    #: What the copy is charged (:func:`entry_cost` of each entry).
    charged: int = 0
    count: int = 0
    #: Whether the caller may read and execute the entry itself (for an entry the
    #: kernel runs), as checked on the source.
    entry_executable: bool = False
    entry_found: bool = False


def copy_tree(
    src: int,
    dst: int,
    *,
    source: str,
    entry: bytes,
    uid: int,
    gid: int,
    groups: Sequence[int],
    limits: TreeLimits,
    max_bytes: int,
    seal: Seal,
    budget: int | None = None,
) -> TreeCopy:
    """Copy the tree at ``src`` (an ``O_PATH`` descriptor of the source directory,
    already found searchable by the caller) into the empty directory ``dst`` (a
    directory descriptor), as the module docstring says.

    ``entry`` is the relative path of the file to run (recorded in the result:
    whether the caller may execute it). Raises :class:`~taonet.AuthorizationError`
    where the caller may not read something (or it is on a ``noexec`` mount), and
    :class:`~taonet.HostError` for what is refused or over a limit. ``dst`` is
    sealed too; the caller removes the copy on failure.

    ``budget`` (None: ``max_bytes``) bounds what the copy costs on disk, as charged
    (:func:`entry_cost`: every file and directory a block and an inode, and each
    file's bytes in whole blocks), so that empty files and directories are not free;
    the result's ``charged`` says what it cost.
    """
    walk = _Walk(source, entry, uid, gid, groups, limits, min(max_bytes, limits.max_bytes), seal)
    walk.budget = max_bytes if budget is None else budget
    walk.charge(b"", entry_cost(None))
    walk.check_directory(src, b"")
    walk.directory(src, dst, b"", 0)
    walk.seal_directory(dst, b"")
    return walk.result


class _Walk:
    def __init__(
        self,
        source: str,
        entry: bytes,
        uid: int,
        gid: int,
        groups: Sequence[int],
        limits: TreeLimits,
        max_bytes: int,
        seal: Seal,
    ) -> None:
        self.source = source
        self.entry = entry
        self.uid, self.gid, self.groups = uid, gid, tuple(groups)
        self.limits = limits
        self.max_bytes = max_bytes
        self.seal = seal
        self.result = TreeCopy()
        self.budget = max_bytes

    def charge(self, rel: bytes, cost: int) -> None:
        """Charge ``cost`` bytes for ``rel``; HostError past the budget."""
        self.result.charged += cost
        if self.result.charged > self.budget:
            raise self.refuse(
                b"",
                f"would take over {self.budget} bytes on disk ({self.where(rel)} brings it to "
                f"{self.result.charged}, each file and directory charged at least "
                f"{ENTRY_COST} bytes; this user's share of the host)",
            )

    def where(self, rel: bytes) -> str:
        """Where ``rel`` is, for messages (a name that is not UTF-8 shown escaped)."""
        if not rel:
            return self.source
        return os.path.join(self.source, rel.decode("utf-8", "backslashreplace"))

    def refuse(self, rel: bytes, problem: str) -> HostError:
        return HostError(f"the program directory {self.source}: {self.where(rel)} {problem}")

    def denied(self, rel: bytes, st: os.stat_result, acl: bool, what: str) -> AuthorizationError:
        from taonet.hosts.linux._process import _describe

        return AuthorizationError(
            f"uid {self.uid} (gid {self.gid}) may not {what} {self.where(rel)} "
            f"({_describe(st, acl)}), part of the program directory {self.source}"
        )

    def _acl(self, fd: int, rel: bytes) -> tuple[tuple[int, int, int], ...] | None:
        from taonet.hosts.linux._process import _access_acl

        return None if self.uid == 0 else _access_acl(fd, self.where(rel))

    def check_directory(self, fd: int, rel: bytes) -> None:
        """The caller must be able to list and search the directory at ``fd``."""
        from taonet.hosts.linux._process import _permitted

        st = os.fstat(fd)
        acl = self._acl(fd, rel)
        want = stat.S_IROTH | stat.S_IXOTH
        if self.uid != 0 and not _permitted(st, acl, self.uid, self.gid, self.groups, want):
            raise self.denied(rel, st, acl is not None, "list and search the directory")

    def list(self, fd: int, rel: bytes) -> list[str]:
        """The names in the directory at ``fd`` (an ``O_PATH`` descriptor), counted."""
        try:
            listing = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self.refuse(rel, f"cannot be listed: {_why(exc)}") from exc
        names: list[str] = []
        try:
            with os.scandir(listing) as entries:
                for found in entries:
                    self.result.count += 1
                    if self.result.count > self.limits.max_files:
                        raise self.refuse(
                            b"",
                            f"holds more than {self.limits.max_files} files and directories "
                            "(the limit: [program_tree] max_files in host.toml)",
                        )
                    name = os.fsencode(found.name)
                    if len(name) > self.limits.max_name_bytes:
                        raise self.refuse(
                            _join(rel, name[:64]) + b"...",
                            f"has a name of {len(name)} bytes, over the limit of "
                            f"{self.limits.max_name_bytes} ([program_tree] max_name_bytes)",
                        )
                    names.append(found.name)
        except OSError as exc:
            raise self.refuse(rel, f"cannot be listed: {_why(exc)}") from exc
        finally:
            os.close(listing)
        return sorted(names, key=os.fsencode)

    def directory(self, src: int, dst: int, rel: bytes, depth: int) -> None:
        for name in self.list(src, rel):
            child = _join(rel, os.fsencode(name))
            if len(child) > MAX_PATH_BYTES:
                raise self.refuse(child[:64] + b"...", f"is over {MAX_PATH_BYTES} bytes long")
            try:
                fd = os.open(name, _WALK, dir_fd=src)
            except OSError as exc:
                raise self.refuse(child, f"cannot be opened: {_why(exc)}") from exc
            try:
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    raise self.refuse(
                        child,
                        "is a symbolic link: links are not measured, so a program directory "
                        "may hold none (copy the file it names instead)",
                    )
                if stat.S_ISDIR(st.st_mode):
                    if name in SKIPPED_DIRECTORIES:
                        continue
                    if depth + 1 > self.limits.max_depth:
                        raise self.refuse(
                            child,
                            f"is more than {self.limits.max_depth} directories deep "
                            "(the limit: [program_tree] max_depth)",
                        )
                    self.check_directory(fd, child)
                    self.subdirectory(fd, dst, name, child, depth + 1)
                elif stat.S_ISREG(st.st_mode):
                    self.file(fd, st, dst, name, child)
                else:
                    raise self.refuse(
                        child,
                        f"is {file_kind(st.st_mode)}: a program directory may hold only "
                        "regular files and directories",
                    )
            finally:
                os.close(fd)

    def subdirectory(self, src: int, parent: int, name: str, rel: bytes, depth: int) -> None:
        self.charge(rel, entry_cost(None))
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            dst = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
        except OSError as exc:
            raise HostError(f"cannot copy {self.where(rel)}: {_why(exc)}") from exc
        try:
            self.directory(src, dst, rel, depth)
            self.seal_directory(dst, rel)
        finally:
            os.close(dst)
        self.result.entries.append(TreeEntry(rel, DIRECTORY))

    def file(self, fd: int, st: os.stat_result, parent: int, name: str, rel: bytes) -> None:
        from taonet.hosts.linux._process import _may_read_and_execute, _permitted

        acl = self._acl(fd, rel)
        if self.uid != 0 and not _permitted(st, acl, self.uid, self.gid, self.groups, stat.S_IROTH):
            raise self.denied(rel, st, acl is not None, "read")
        room = self.max_bytes - self.result.total
        if st.st_size > room:
            raise self.over(rel, st.st_size)
        self.charge(rel, entry_cost(st.st_size))
        try:
            src = os.open(f"/proc/self/fd/{fd}", _READ)
        except OSError as exc:
            raise self.refuse(rel, f"cannot be read: {_why(exc)}") from exc
        try:
            again = os.fstat(src)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):  # pragma: no cover
                raise self.refuse(rel, "changed while it was being checked")
            if os.fstatvfs(src).f_flag & os.ST_NOEXEC:
                raise AuthorizationError(
                    f"uid {self.uid} (gid {self.gid}) may not run {self.where(rel)}: it is on "
                    "a filesystem mounted noexec"
                )
            if rel == self.entry:
                self.result.entry_found = True
                self.result.entry_executable = _may_read_and_execute(
                    st, acl, self.uid, self.gid, self.groups
                )
            executable = bool(st.st_mode & _EXECUTE_BITS)
            size, digest = self.copy(src, parent, name, rel, room, executable)
        finally:
            os.close(src)
        self.result.total += size
        self.result.entries.append(TreeEntry(rel, FILE, executable, size, digest))

    def over(self, rel: bytes, size: int) -> HostError:
        return self.refuse(
            b"",
            f"is over its limit of {self.max_bytes} bytes ({self.where(rel)} is {size} bytes "
            f"after {self.result.total}; [program_tree] max_bytes, and another user's share)",
        )

    def copy(
        self, src: int, parent: int, name: str, rel: bytes, room: int, executable: bool
    ) -> tuple[int, bytes]:
        from taonet.hosts.linux._process import _set_acl

        digest = hashlib.sha256()
        total = 0
        try:
            out = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
        except OSError as exc:
            raise HostError(f"cannot copy {self.where(rel)}: {_why(exc)}") from exc
        try:
            while True:
                try:
                    chunk = os.read(src, _CHUNK)
                except OSError as exc:
                    raise self.refuse(rel, f"cannot be read: {_why(exc)}") from exc
                if not chunk:
                    break
                total += len(chunk)
                if total > room:  # it grew while being copied
                    raise self.over(rel, total)
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            # No fsync: the program reads its copy through the page cache, and a copy
            # is never used again after a crash (one fsync per file made a directory of
            # 1000 files take a second).
            os.fchown(out, -1, self.seal.group)  # still 0600: the group gets nothing yet
            perms = 0o5 if executable else 0o4
            if self.seal.uid is None:
                os.fchmod(out, perms << 6)
            elif not (self.seal.acl and _set_acl(out, _user_acl(self.seal.uid, perms), Path(name))):
                os.fchmod(out, perms << 6 | perms << 3)
        except OSError as exc:
            raise HostError(f"cannot write the copy of {self.where(rel)}: {_why(exc)}") from exc
        finally:
            os.close(out)
        return total, digest.digest()

    def seal_directory(self, fd: int, rel: bytes) -> None:
        """Give a copied directory its final mode (or ACL): see the module docstring."""
        from taonet.hosts.linux._process import _set_acl

        try:
            os.fchown(fd, -1, self.seal.group)
            if self.seal.uid is None:
                os.fchmod(fd, 0o500)
            elif not (
                self.seal.acl and _set_acl(fd, _user_acl(self.seal.uid, 0o5), Path(self.where(rel)))
            ):
                os.fchmod(fd, 0o550)
        except OSError as exc:
            raise HostError(f"cannot seal the copy of {self.where(rel)}: {_why(exc)}") from exc


def _user_acl(uid: int, perms: int) -> bytes:
    """``perms`` (rwx bits) for the owner (root) and ``uid``; nothing for anyone else."""
    from taonet.hosts.linux._process import _only_user_acl

    return _only_user_acl(uid, perms, perms)


def _join(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it changed while it was being checked (now a symbolic link)"
    return exc.strerror or type(exc).__name__


#: What every file and directory of a copy is charged at least: a block (and an
#: inode, and its name in its directory), whatever its size.
ENTRY_COST: Final = 4096


def entry_cost(size: int | None) -> int:
    """Bytes charged for one entry of a copy: a directory (None) or a file of ``size``
    bytes, its content in whole blocks plus :data:`ENTRY_COST`."""
    blocks = 0 if size is None else -(-size // ENTRY_COST) * ENTRY_COST
    return ENTRY_COST + blocks


def remove_tree(directory: Path) -> None:
    """Remove a copy whose directories are read-only (0500): make them writable first.

    A symbolic link in it (one a program planted in a copy it owns) is removed, never
    followed: each directory is opened ``O_PATH | O_NOFOLLOW`` and changed through
    that descriptor, and one that is a link by then is left to ``rmtree``, which
    unlinks links.
    """
    for parent, dirs, _ in os.walk(directory):  # os.walk does not descend into links
        for name in dirs:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(parent, name), _WALK)
                try:
                    if stat.S_ISDIR(os.fstat(fd).st_mode):
                        os.chmod(f"/proc/self/fd/{fd}", 0o700)
                finally:
                    os.close(fd)
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
