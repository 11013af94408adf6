"""Careful file helpers for programs built on taonet.

* :func:`atomic_write`: replace a file so that a reader sees the old contents or
  the new, never a torn mix, and the new contents survive a crash once the call
  returns (temp file with the exact mode, ``fsync``, rename, ``fsync`` of the
  directory). Key files and sealed blobs are written this way.
* :func:`read_file`: read a whole file, refusing one larger than a stated limit.
* :func:`file_kind`: what a file of a given ``st_mode`` is, in words ("a directory",
  "a FIFO", ...), for messages that refuse it.

Both raise :class:`~taonet.ConfigError` (chained from the ``OSError``) for anything
the filesystem refuses, with the path in the message.
"""

from __future__ import annotations

from taonet._files import atomic_write, file_kind, read_file

__all__ = ["atomic_write", "file_kind", "read_file"]

for _public in (atomic_write, file_kind, read_file):
    _public.__module__ = __name__
del _public
