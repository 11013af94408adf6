"""Small file systems for storage tests: a full one, a read-only one (tmpfs; needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(where: Path, *, size: str = "1m", owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (created) for the block; unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    _mount("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    try:
        if owner is not None:
            os.chown(where, *owner)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def remount_read_only(where: Path) -> None:
    """Make the tmpfs at ``where`` read-only (files open for writing must be closed first)."""
    _mount("mount", "-o", "remount,ro", str(where))
