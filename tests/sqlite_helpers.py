"""sqlite3 connections for tests that are closed, not left to the garbage collector.

``with sqlite3.connect(path) as conn`` commits but does not close; Python 3.13 then
warns (an error here) whenever the collector runs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def sqlite_connection(path: str | Path, *, uri: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection that commits when the block succeeds and is closed either way."""
    conn = sqlite3.connect(path, uri=uri)
    try:
        with conn:
            yield conn
    finally:
        conn.close()
