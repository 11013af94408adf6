"""Counters per hosted program and rollback-protected sealing, on a host's counter table.

:class:`HostCounters` builds rollback-protected sealing on a
:class:`~taonet.hosts._counter_store.CounterStore` (the Go LinuxHost's semantics, bugs
fixed): a seal bumps the label's counter and seals
``RollbackSealedData{entry{program, label, counter}, data}``; the blob opens only
while the counter still holds its value. (The table, its sealers and store, and who
can roll the table back: :mod:`taonet.hosts._counter_store`, whose names this module
also exports.)

Every change of a table under a :class:`ParentTableSealer` is one rollback-protected
seal of the parent, down to one TPM NV increment on a TPM root: :class:`HostCounters`
then spends a :class:`~taonet.hosts._write_budget.WriteBudget` (token buckets per
program, per uid and for the host, with a reserve for root and the host's owner) on
each change, and refuses one over budget with a HostError saying when to retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from taonet import auth
from taonet._errors import CodecError, HostError
from taonet.hosts._counter_store import (
    COUNTERS_FILE,
    DEFAULT_TABLE_LABEL,
    MAX_LABELS_PER_PROGRAM,
    MAX_TABLE_ENTRIES,
    CounterStore,
    CounterTable,
    ParentTableSealer,
    SoftTableSealer,
    TableSealer,
)
from taonet.hosts._tao import (
    MAX_COUNTER,
    MAX_SEALED_BYTES,
    SEAL_POLICY_ANY,
    SEAL_POLICY_SELF,
    check_counter,
    check_label,
    check_policy,
)
from taonet.hosts._write_budget import WriteAccount, WriteBudget
from taonet.wire import message_class, parse, serialize

if TYPE_CHECKING:
    from taonet.hosts._core import KeyCore

__all__ = [
    "COUNTERS_FILE",
    "DEFAULT_TABLE_LABEL",
    "MAX_LABELS_PER_PROGRAM",
    "MAX_TABLE_ENTRIES",
    "ChargedCounters",
    "CounterStore",
    "CounterTable",
    "HostCounters",
    "ParentTableSealer",
    "SoftTableSealer",
    "TableSealer",
]


def _sealed_data(caller: auth.Prin, label: str, counter: int, data: bytes) -> bytes:
    entry = message_class("RollbackEntry")(
        hosted_program_name=str(caller), entry_label=label, counter=counter
    )
    return serialize(message_class("RollbackSealedData")(entry=entry, protected_data=data))


class HostCounters:
    """Counters and rollback-protected sealing for the programs of a key core."""

    def __init__(
        self,
        core: KeyCore,
        store: CounterStore,
        *,
        program_of: Callable[[auth.Prin], auth.Prin] | None = None,
        budget: WriteBudget | None = None,
    ) -> None:
        """``program_of`` maps a caller to the program its counters are charged to
        (a Linux host: the name it launched, whatever the program extended it to),
        so one program cannot fill the table, nor escape its write budget, by
        extending its name. ``budget`` limits how often changes are written; default:
        a :class:`WriteBudget` with its defaults for a store under a
        :class:`ParentTableSealer`, none for another."""
        self._core = core
        self._store = store
        self._program_of = program_of
        self._budget = budget if budget is not None or not store.parent_sealed else WriteBudget()

    def _spend(self, caller: auth.Prin, account: WriteAccount | None) -> None:
        """One change written for ``caller`` (charged to ``account``; None: the program
        ``program_of`` gives, privileged): HostError if over the write budget."""
        if self._budget is not None:
            if account is None:
                charged = caller if self._program_of is None else self._program_of(caller)
                account = WriteAccount(str(charged))
            self._budget.take(account)

    def _check_quota(self, caller: auth.Prin, label: str) -> None:
        if self._program_of is None or self._store.get_counter(caller, label) is not None:
            return
        if self._store.count_under(self._program_of(caller)) >= MAX_LABELS_PER_PROGRAM:
            raise HostError(f"a program may have at most {MAX_LABELS_PER_PROGRAM} counters")

    @property
    def store(self) -> CounterStore:
        return self._store

    @property
    def rollback_protected(self) -> bool:
        """Whether rolling back the stored counter table itself is detected."""
        return self._store.rollback_protected

    def charged_to(self, account: WriteAccount) -> ChargedCounters:
        """These counters for one program whose changes are charged to ``account``."""
        return ChargedCounters(self, account)

    async def init_counter(
        self, caller: auth.Prin, label: str, counter: int, *, account: WriteAccount | None = None
    ) -> None:
        self._core.check_caller(caller)
        self._check_quota(caller, check_label(label))
        current = self._store.get_counter(caller, label)
        if current is None or check_counter(counter) > current:
            self._spend(caller, account)  # lower is refused and equal is a no-op: nothing written
        await self._store.init_counter(caller, label, check_counter(counter))

    async def get_counter(self, caller: auth.Prin, label: str) -> int:
        self._core.check_caller(caller)
        value = self._store.get_counter(caller, check_label(label))
        if value is None:
            raise HostError(f"this program has no counter {label!r}")
        return value

    async def rollback_protected_seal(
        self,
        caller: auth.Prin,
        label: str,
        data: bytes,
        policy: str = SEAL_POLICY_SELF,
        *,
        account: WriteAccount | None = None,
    ) -> bytes:
        self._core.check_caller(caller)
        check_label(label)
        if check_policy(policy) == SEAL_POLICY_ANY:
            # Any program on the host could seal a blob naming this one under "any".
            raise HostError("rollback-protected sealing is for one program: use self or few")
        data = bytes(data)
        if len(_sealed_data(caller, label, MAX_COUNTER, data)) > MAX_SEALED_BYTES:
            raise HostError(f"rollback-protected seal: data over {MAX_SEALED_BYTES} bytes")
        self._check_quota(caller, label)
        self._spend(caller, account)
        counter = await self._store.bump(caller, label)
        return self._core.seal_for(caller, _sealed_data(caller, label, counter, data), policy)

    async def rollback_protected_unseal(
        self, caller: auth.Prin, sealed: bytes
    ) -> tuple[bytes, str]:
        plain, policy = self._core.unseal_for(caller, sealed)
        if policy == SEAL_POLICY_ANY:
            raise HostError("not rollback-protected data: it was sealed under policy 'any'")
        try:
            msg = parse("RollbackSealedData", plain, what="rollback-protected data")
        except CodecError as exc:
            raise HostError(f"not rollback-protected data: {exc}") from None
        program, label, sealed_at = (
            msg.entry.hosted_program_name,
            msg.entry.entry_label,
            int(msg.entry.counter),
        )
        if not isinstance(program, str) or program != str(caller):
            raise HostError("this rollback-protected data was sealed for another program")
        check_label(label)
        current = self._store.get_counter(caller, label) or 0
        if sealed_at < current:
            raise HostError(
                f"rollback detected: the data for {label!r} was sealed at counter "
                f"{sealed_at}, the counter is now {current}"
            )
        if sealed_at > current:
            raise HostError(
                f"the host's counter table is behind this blob: the data for {label!r} was "
                f"sealed at counter {sealed_at}, the counter is {current} "
                "(the host's state was rolled back)"
            )
        return bytes(msg.protected_data), policy


class ChargedCounters:
    """:class:`HostCounters` for one hosted program, its changes charged to one
    :class:`~taonet.hosts._write_budget.WriteAccount` (a Linux host: its uid and
    measurement)."""

    def __init__(self, counters: HostCounters, account: WriteAccount) -> None:
        self._counters = counters
        self._account = account

    async def init_counter(self, caller: auth.Prin, label: str, counter: int) -> None:
        await self._counters.init_counter(caller, label, counter, account=self._account)

    async def get_counter(self, caller: auth.Prin, label: str) -> int:
        return await self._counters.get_counter(caller, label)

    async def rollback_protected_seal(
        self, caller: auth.Prin, label: str, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        return await self._counters.rollback_protected_seal(
            caller, label, data, policy, account=self._account
        )

    async def rollback_protected_unseal(
        self, caller: auth.Prin, sealed: bytes
    ) -> tuple[bytes, str]:
        return await self._counters.rollback_protected_unseal(caller, sealed)
