"""Small, careful file helpers: atomic writes with an exact mode, bounded reads.

``atomic_write`` puts bytes at a path so that a reader sees either the old
file or the new one, never a torn mix, and so that the new contents survive a
crash once the call returns: temp file in the same directory (created with
``O_CREAT | O_EXCL`` and the requested mode), write, ``fsync``, ``os.replace``,
then ``fsync`` of the directory. On any failure the temp file is removed and
the old file is left as it was.

``read_file`` reads a whole file but refuses one larger than a stated limit.

Both raise :class:`~taonet.ConfigError` (chained from the ``OSError``) for
anything the filesystem refuses, with the path in the message.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from taonet._errors import ConfigError

__all__ = ["atomic_write", "file_kind", "open_regular_file", "read_file"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace the file at ``path`` with ``data`` atomically and durably.

    The file ends up with exactly ``mode`` (the umask does not widen or narrow
    it). Raises ConfigError if the directory is missing or unwritable, or the
    write, sync or rename fails; the previous file, if any, is then untouched
    and no temp file is left behind.
    """
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW, mode)
        os.fchmod(fd, mode)
        view = memoryview(bytes(data))
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {target}: {_why(exc)}") from exc
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where unsupported)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:  # pragma: no cover - platforms without directory fds
        raise ConfigError(f"cannot sync directory {directory}: {_why(exc)}") from exc
    try:
        os.fsync(dfd)
    except OSError as exc:  # pragma: no cover - filesystems that refuse directory fsync
        raise ConfigError(f"cannot sync directory {directory}: {_why(exc)}") from exc
    finally:
        os.close(dfd)


def file_kind(mode: int) -> str:
    """What a file of ``mode`` is, in words: "a regular file", "a FIFO", ..."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "something else"


def open_regular_file(
    path: str | os.PathLike[str], *, verb: str = "read"
) -> tuple[int, os.stat_result]:
    """Open a regular file for reading: its (blocking) descriptor and its ``fstat``.

    Opened without blocking and without becoming a controlling terminal, so that
    even a FIFO nobody writes returns at once; then anything but a regular file (a
    FIFO, a device such as ``/dev/zero``, a directory, a socket: reading one could
    block or never end) is refused with a ConfigError, "cannot ``verb`` PATH: it is
    a FIFO, not a regular file". Raises OSError if it cannot be opened at all; the
    caller closes the descriptor.
    """
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_NOCTTY | _O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"cannot {verb} {path}: it is {file_kind(info.st_mode)}, not a regular file"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_file(path: str | os.PathLike[str], *, limit: int) -> bytes:
    """Read the whole file at ``path``, refusing one larger than ``limit`` bytes.

    Raises ConfigError if the file is missing, unreadable, not a regular file (a
    FIFO or a device is refused at once, never waited on), or bigger than ``limit``.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    p = Path(path)
    try:
        fd, st = open_regular_file(p)
        with open(fd, "rb") as f:
            if st.st_size > limit:
                raise ConfigError(f"{p} is {st.st_size} bytes, over the {limit}-byte limit")
            data = f.read(limit + 1)
    except FileNotFoundError as exc:
        raise ConfigError(f"no file at {p}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {_why(exc)}") from exc
    if len(data) > limit:
        raise ConfigError(f"{p} is over the {limit}-byte limit")
    return data
