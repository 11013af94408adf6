"""A host's counter table: (program, label) -> counter, kept sealed in a file.

A :class:`CounterTable` holds, per hosted program (the text of its full name) and
label, a counter that only increases. A :class:`CounterStore` seals it with a
:class:`TableSealer` and writes it before any change is reported
(:mod:`taonet.hosts._counters` builds counters and rollback-protected sealing on it).

Who can roll back the table itself? With :class:`SoftTableSealer` (the soft host's
own key), whoever can restore or delete the whole host directory, unnoticed:
``rollback_protected`` is False (TPM NV counters will close this). With
:class:`ParentTableSealer` (the parent's rollback-protected seal) an older table,
or a missing one once one was written, is refused. A crash after the parent's
counter moved but before the new file replaced the old one then fails closed: the
table reads as rolled back until an operator decides what to trust. A write that
fails there (a full disk, which a hosted program can cause) does not leave it so: the
store logs an error, answers the change with a HostError, keeps the sealed table and
writes it before the next change (none is made until it is written) and at
:meth:`CounterStore.aclose`. The change takes effect only once written (so a
rollback-protected seal answered so makes the program's older blob for that label
stale then: it should seal again). Only a crash (or a disk still full at shutdown)
before it is written leaves the table one step behind the parent.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import trio

from taonet import auth
from taonet._errors import CodecError, HostError, TaoError
from taonet._files import atomic_write, read_file
from taonet._log import get_logger
from taonet.hosts._tao import (
    MAX_COUNTER,
    MAX_SEALED_BYTES,
    SEAL_POLICY_SELF,
    Tao,
    check_counter,
    check_label,
)
from taonet.wire import message_class, parse, serialize

if TYPE_CHECKING:
    from taonet.hosts._soft import SoftHost

__all__ = [
    "COUNTERS_FILE",
    "DEFAULT_TABLE_LABEL",
    "MAX_LABELS_PER_PROGRAM",
    "MAX_TABLE_ENTRIES",
    "CounterStore",
    "CounterTable",
    "ParentTableSealer",
    "SoftTableSealer",
    "TableSealer",
]

#: The sealed counter table's file name in a soft host's directory.
COUNTERS_FILE: Final = "counters.sealed"
#: The parent's counter label that protects a stacked host's table.
DEFAULT_TABLE_LABEL: Final = "taonet.host.counters"
#: Most labels one program may have, and most counters in one table.
MAX_LABELS_PER_PROGRAM: Final = 256
MAX_TABLE_ENTRIES: Final = 8192
_MAX_TABLE_FILE: Final = MAX_SEALED_BYTES + 64 * 1024
_T = TypeVar("_T")
log = get_logger(__name__)


def _context(label: str) -> bytes:
    """Prefix of a sealed table: no other sealed data (nor another store's) passes for it."""
    return b"taonet counter table v1\x00" + label.encode() + b"\x00"


class CounterTable:
    """(program name text, label) -> counter; ``version`` increases on every change."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], int] = {}
        self._labels: Counter[str] = Counter()  # labels per program
        self.version = 0

    def __len__(self) -> int:
        return len(self._counters)

    def items(self) -> Iterator[tuple[str, str, int]]:
        """(program, label, counter) for every counter, sorted."""
        for (program, label), counter in sorted(self._counters.items()):
            yield program, label, counter

    def copy(self) -> CounterTable:
        table = CounterTable()
        table._counters = dict(self._counters)
        table._labels = self._labels.copy()
        table.version = self.version
        return table

    def count_under(self, program: str) -> int:
        """How many counters ``program`` and the names extending it hold."""
        prefix = program + "."
        return sum(
            n for name, n in self._labels.items() if name == program or name.startswith(prefix)
        )

    def get(self, program: str, label: str) -> int | None:
        """The counter, or None if ``program`` has none for ``label``."""
        return self._counters.get((program, label))

    def init(self, program: str, label: str, value: int) -> bool:
        """Set a counter; HostError if below the current value. True if it changed."""
        key = self._key(program, label)
        check_counter(value)
        current = self._counters.get(key)
        if current is not None and value < current:
            raise HostError(
                f"counter {label!r} is at {current}; counters only increase, {value} is lower"
            )
        if current == value:
            return False
        self._set(key, value, new=current is None)
        return True

    def bump(self, program: str, label: str) -> int:
        """Add one to a counter (a missing one starts from 0) and return the new value."""
        key = self._key(program, label)
        current = self._counters.get(key)
        if current is not None and current >= MAX_COUNTER:
            raise HostError(f"counter {label!r} is at its maximum and cannot be bumped")
        value = (current or 0) + 1
        self._set(key, value, new=current is None)
        return value

    @staticmethod
    def _key(program: str, label: str) -> tuple[str, str]:
        if not isinstance(program, str) or not program:
            raise HostError("a counter's program name must be a non-empty string")
        return program, check_label(label)

    def _set(self, key: tuple[str, str], value: int, *, new: bool) -> None:
        if new:
            if len(self._counters) >= MAX_TABLE_ENTRIES:
                raise HostError(f"this host's counter table is full ({MAX_TABLE_ENTRIES} counters)")
            if self._labels[key[0]] >= MAX_LABELS_PER_PROGRAM:
                raise HostError(f"a program may have at most {MAX_LABELS_PER_PROGRAM} counters")
        if self.version >= MAX_COUNTER:
            raise HostError("the counter table's version is exhausted")
        if new:
            self._labels[key[0]] += 1
        self._counters[key] = value
        self.version += 1

    def to_bytes(self) -> bytes:
        """The table as a serialized RollbackCounterTable (entries sorted)."""
        entry = message_class("RollbackEntry")
        return serialize(
            message_class("RollbackCounterTable")(
                entries=[
                    entry(hosted_program_name=program, entry_label=label, counter=counter)
                    for program, label, counter in self.items()
                ],
                version=self.version,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CounterTable:
        """Decode strictly: CodecError for duplicates, negatives, bad names or labels."""
        msg = parse("RollbackCounterTable", data, what="counter table")
        table = cls()
        for entry in msg.entries:
            program, label, counter = entry.hosted_program_name, entry.entry_label, entry.counter
            if not isinstance(program, str) or not program:
                raise CodecError("counter table: an entry has an empty or non-UTF-8 program name")
            try:
                check_label(label)
            except HostError as exc:
                raise CodecError(f"counter table: {exc}") from None
            if counter < 0:
                raise CodecError(f"counter table: counter {label!r} is negative ({counter})")
            if (program, label) in table._counters:
                raise CodecError(f"counter table: counter {label!r} of {program} appears twice")
            table._counters[program, label] = counter
            table._labels[program] += 1
        if msg.version < 0:
            raise CodecError(f"counter table: the version is negative ({msg.version})")
        table.version = msg.version
        return table


class TableSealer(Protocol):
    """Seals a host's counter table for storage."""

    #: Whether a stored table that was rolled back (or deleted) is detected.
    rollback_protected: bool

    async def seal(self, data: bytes) -> bytes: ...

    async def unseal(self, blob: bytes) -> bytes: ...

    async def check_absent(self) -> None:
        """Called when no table is stored: HostError unless starting empty is safe."""


class SoftTableSealer:
    """Seals the table with a soft host's own key (policy "self" of the host's name).

    Not rollback protected: with soft keys at the root, whoever can restore the whole
    host directory can roll the table back (or delete it) unnoticed. TPM NV counters
    will close this.
    """

    rollback_protected: bool = False

    def __init__(self, host: SoftHost) -> None:
        self._host = host
        self._context = _context(DEFAULT_TABLE_LABEL)

    @property
    def label(self) -> str:
        """The label that tells this host's table apart from other sealed data."""
        return DEFAULT_TABLE_LABEL

    async def seal(self, data: bytes) -> bytes:
        return self._host.seal_for(self._host.name, self._context + data, SEAL_POLICY_SELF)

    async def unseal(self, blob: bytes) -> bytes:
        data, policy = self._host.unseal_for(self._host.name, blob)
        if policy != SEAL_POLICY_SELF or not data.startswith(self._context):
            raise HostError("the sealed data is not this host's counter table")
        return data[len(self._context) :]

    async def check_absent(self) -> None:
        return None


class ParentTableSealer:
    """Seals the table with the parent Tao's rollback-protected seal under ``label``."""

    rollback_protected: bool = True

    def __init__(self, parent: Tao, label: str = DEFAULT_TABLE_LABEL) -> None:
        self._parent = parent
        self._label = check_label(label)
        self._context = _context(label)

    @property
    def label(self) -> str:
        """The parent's counter label that protects the table."""
        return self._label

    async def seal(self, data: bytes) -> bytes:
        return await self._parent.rollback_protected_seal(
            self._label, self._context + data, SEAL_POLICY_SELF
        )

    async def unseal(self, blob: bytes) -> bytes:
        data, policy = await self._parent.rollback_protected_unseal(blob)
        if policy != SEAL_POLICY_SELF or not data.startswith(self._context):
            raise HostError(f"the sealed data is not a counter table under label {self._label!r}")
        return data[len(self._context) :]

    async def check_absent(self) -> None:
        # Starting empty is safe only while the parent never sealed a table for us:
        # setting its counter to 0 fails if the counter has moved (or cannot be set).
        try:
            await self._parent.init_counter(self._label, 0)
        except TaoError as exc:
            raise HostError(
                f"no counter table is stored, but the parent's counter {self._label!r} "
                f"shows one was written, or cannot be checked: {exc}"
            ) from exc


class CounterStore:
    """A :class:`CounterTable` kept sealed in a file; every change is durable first.

    Use :meth:`open`. With ``path`` None the store lives in memory only.
    """

    def __init__(self, table: CounterTable, path: Path | None, sealer: TableSealer | None) -> None:
        self._table = table
        self._path = path
        self._sealer = sealer
        self._lock = trio.Lock()
        # A table sealed under the parent's moved counter whose write failed.
        self._pending: tuple[CounterTable, bytes] | None = None

    @classmethod
    async def open(cls, path: Path | None, sealer: TableSealer | None = None) -> CounterStore:
        """Load the table sealed at ``path`` (none yet: an empty table).

        A file that cannot be read, unsealed or decoded is a HostError naming it,
        never an empty table.
        """
        if path is None:
            return cls(CounterTable(), None, None)
        if sealer is None:
            raise ValueError("a counter store with a file needs a sealer")
        path = Path(path)
        try:
            if not await trio.to_thread.run_sync(os.path.lexists, path):
                await sealer.check_absent()
                return cls(CounterTable(), path, sealer)
            read = functools.partial(read_file, path, limit=_MAX_TABLE_FILE)
            blob = await trio.to_thread.run_sync(read)
            table = CounterTable.from_bytes(await sealer.unseal(blob))
        except TaoError as exc:
            raise HostError(f"cannot open the counter table {path}: {exc}") from exc
        return cls(table, path, sealer)

    @property
    def rollback_protected(self) -> bool:
        """Whether rolling back the stored table is detected (False in memory)."""
        return self._sealer is not None and self._sealer.rollback_protected

    @property
    def parent_sealed(self) -> bool:
        """Whether every change is a rollback-protected seal of the parent (one TPM NV
        increment on a TPM root), so worth a write budget."""
        return isinstance(self._sealer, ParentTableSealer)

    def count_under(self, program: auth.Prin) -> int:
        """How many counters ``program`` and the names it extended to hold."""
        return self._table.count_under(str(program))

    def get_counter(self, name: auth.Prin, label: str) -> int | None:
        """The counter of program ``name`` for ``label``, or None if it has none."""
        return self._table.get(str(name), check_label(label))

    async def init_counter(self, name: auth.Prin, label: str, value: int) -> None:
        """Set a counter (only upwards; equal is a no-op), durably."""
        await self._change(lambda table: table.init(str(name), label, value))

    async def bump(self, name: auth.Prin, label: str) -> int:
        """Add one to a counter (missing: from 0), durably; return the new value."""
        return await self._change(lambda table: table.bump(str(name), label))

    async def _change(self, change: Callable[[CounterTable], _T]) -> _T:
        async with self._lock:
            await self._flush()
            table = self._table.copy()
            result = change(table)
            if table.version != self._table.version:
                await self._store(table)
                # Only a stored table becomes current: a failed write leaves the old one.
                self._table = table
            return result

    @property
    def pending(self) -> bool:
        """Whether a table the parent already counted is not yet written (its write
        failed): it is written before the next change and at :meth:`aclose`."""
        return self._pending is not None

    async def aclose(self) -> None:
        """Write the pending table, if any (a host's shutdown): logged as an error if it
        still cannot be written (the next start then refuses the table as rolled back)."""
        async with self._lock:
            with contextlib.suppress(HostError):  # _flush logged it
                await self._flush()

    async def _flush(self) -> None:
        """Write the pending table (HostError, logged, if it still cannot be)."""
        if self._pending is None:
            return
        table, blob = self._pending
        try:
            await self._write(blob)
        except TaoError as exc:
            log.error(  # noqa: TRY400 - the error is the message, no traceback
                "counter_table_still_unwritten", path=str(self._path), error=str(exc)
            )
            raise HostError(
                f"cannot store the counter table in {self._path}: an earlier change, already "
                f"counted by the parent, is still not written ({exc}); no change is made "
                "until it is (free space)"
            ) from exc
        log.info("counter_table_written_on_retry", path=str(self._path))
        self._pending = None
        self._table = table

    async def _write(self, blob: bytes) -> None:
        assert self._path is not None  # only a store with a file seals
        write = functools.partial(atomic_write, self._path, blob, mode=0o600)
        await trio.to_thread.run_sync(write)

    async def _store(self, table: CounterTable) -> None:
        if self._path is None or self._sealer is None:
            return
        try:
            blob = await self._sealer.seal(table.to_bytes())
        except TaoError as exc:
            raise HostError(f"cannot store the counter table in {self._path}: {exc}") from exc
        try:
            await self._write(blob)
        except TaoError as exc:
            if self._sealer.rollback_protected:
                # The parent's counter has moved: the file on disk is now one step behind
                # it and would be refused as rolled back. Keep the blob and write it
                # before anything else (and at shutdown); until then the old table holds.
                self._pending = (table, blob)
                log.error(  # noqa: TRY400 - the error is the message, no traceback
                    "counter_table_unwritten", path=str(self._path), error=str(exc)
                )
                raise HostError(
                    f"cannot store the counter table in {self._path}: {exc}; the parent "
                    "already counted this change, so it is kept and written (and takes "
                    "effect) before the next change or at shutdown"
                ) from exc
            raise HostError(f"cannot store the counter table in {self._path}: {exc}") from exc
