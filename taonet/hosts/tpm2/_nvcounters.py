"""Counters in TPM NV: rollback protection a restored state directory cannot undo.

Each (program, label) gets its own NV counter index in the owner range, chosen
from a hash of the host's quote key, the program and the label. The state
directory's ``counters.json`` (HMAC-protected, see :mod:`._state`) records each
index and its *base*: the NV value at which the Tao counter reads 0 (a new NV
counter starts at the highest value any counter on the TPM has had, not at 0). The
entry is written before the NV space is defined, and the base once, right after.
A Tao counter is ``NV value - base``; it only moves by TPM2_NV_Increment, which no
one can undo.

Rollback-protected sealing is the Tao's (as :class:`~taonet.hosts.HostCounters`):
a seal increments the label's counter once and seals
``RollbackSealedData{entry{program, label, counter}, data}``; an unseal reads the NV
counter and refuses a blob sealed at a lower value ("rollback detected": an old
blob, e.g. from a restored state directory of a host stacked on this one) or at a
higher one (this host's own counter record was rolled back). A label whose NV
index exists on the TPM but is missing from the record (an older copy of the
state directory) is refused, never recreated.
"""

from __future__ import annotations

import hashlib
from typing import Final

import trio

from taonet import auth
from taonet._errors import CodecError, HostError
from taonet._log import get_logger
from taonet.hosts._counters import _sealed_data
from taonet.hosts._tao import (
    MAX_COUNTER,
    MAX_SEALED_BYTES,
    SEAL_POLICY_ANY,
    SEAL_POLICY_SELF,
    check_counter,
    check_label,
    check_policy,
)
from taonet.hosts.tpm2 import _wire
from taonet.hosts.tpm2._core import Tpm2Core
from taonet.hosts.tpm2._runtime import TpmRuntime
from taonet.hosts.tpm2._state import CounterEntry, StateDir
from taonet.wire import parse

__all__ = ["MAX_COUNTER_STEP", "Tpm2Counters"]

_log = get_logger(__name__)
_NV_FIRST: Final = 0x01000000
_NV_SPAN: Final = 0x00400000  # TCG owner range 0x01000000-0x013FFFFF
#: Most increments one init_counter may make (NV counters move one at a time).
MAX_COUNTER_STEP: Final = 1024
MAX_COUNTERS: Final = 256


#: Counter index attributes: TPM_NT_COUNTER, AUTHWRITE, AUTHREAD, NO_DA,
#: OWNERREAD (empty authValue: anyone with TPM access may increment, which
#: can deny service but never roll a counter back).
NV_COUNTER_ATTRIBUTES: Final = (0x1 << 4) | 0x00000004 | 0x00040000 | 0x02000000 | 0x00020000


#: TPMA_NV_WRITTEN: set by the TPM once an index was written (incremented).
NV_WRITTEN: Final = 0x20000000


def nv_define_counter_command(index: int) -> bytes:
    public = (
        _wire.u32(index)
        + _wire.u16(_wire.TPM_ALG_SHA256)
        + _wire.u32(NV_COUNTER_ATTRIBUTES)
        + _wire.u16(0)
        + _wire.u16(8)
    )
    params = _wire.tpm2b(b"") + _wire.tpm2b(public)
    return _wire.command(
        _wire.CC_NV_DEFINE_SPACE, [_wire.TPM_RH_OWNER], params, _wire.password_auth()
    )


def nv_read_public_command(index: int) -> bytes:
    return _wire.command(_wire.CC_NV_READ_PUBLIC, [index], b"")


def parse_nv_read_public(params: bytes) -> tuple[int, int]:
    """(attributes, dataSize) of an NV index."""
    r = _wire.Reader(params, "NV_ReadPublic")
    public = _wire.Reader(r.tpm2b(), "NV_ReadPublic")
    public.u32()
    public.u16()
    attributes = public.u32()
    public.tpm2b()
    return attributes, public.u16()


def nv_increment_command(index: int) -> bytes:
    return _wire.command(_wire.CC_NV_INCREMENT, [index, index], b"", _wire.password_auth())


def nv_read_command(index: int) -> bytes:
    return _wire.command(
        _wire.CC_NV_READ, [index, index], _wire.u16(8) + _wire.u16(0), _wire.password_auth()
    )


def parse_nv_read_counter(params: bytes) -> int:
    r = _wire.Reader(params, "NV_Read")
    data = r.tpm2b()
    if len(data) != 8:
        raise HostError("the TPM's NV counter is not 8 bytes")
    return int.from_bytes(data, "big")


class Tpm2Counters:
    """A TPM host's counters (a :class:`~taonet.hosts.Counters`)."""

    def __init__(self, core: Tpm2Core, runtime: TpmRuntime, state: StateDir) -> None:
        self._core = core
        self._runtime = runtime
        self._state = state
        self._mac_key = core.derived_key(b"counter map")
        self._table: dict[tuple[str, str], CounterEntry] = {}
        self._lock = trio.Lock()

    rollback_protected: Final = True

    async def load(self) -> None:
        """Read the counter map (ConfigError if it was edited)."""
        self._table = await trio.to_thread.run_sync(self._state.counters, self._mac_key)

    def _index(self, program: str, label: str) -> int:
        digest = hashlib.sha256(
            b"taonet tpm2 counter\x00"
            + self._core.quote_key_der
            + b"\x00"
            + program.encode()
            + b"\x00"
            + label.encode()
        ).digest()
        return _NV_FIRST + int.from_bytes(digest[:4], "big") % _NV_SPAN

    async def _store(self, table: dict[tuple[str, str], CounterEntry]) -> None:
        await trio.to_thread.run_sync(self._state.write_counters, self._mac_key, table)
        self._table = table

    async def _nv_value(self, index: int) -> int | None:
        """The NV counter's value; None if it is defined but never incremented."""

        async def read() -> int | None:
            try:
                _, params = await self._runtime.call(nv_read_command(index))
            except _wire.TpmError as exc:
                if exc.base == _wire.RC_NV_UNINITIALIZED:
                    return None
                raise
            return parse_nv_read_counter(params)

        return await self._runtime.run(read)

    async def _increment(self, index: int) -> None:
        await self._runtime.run(lambda: self._runtime.call(nv_increment_command(index)))

    async def _defined(self, index: int) -> bool:
        async def read_public() -> bool:
            try:
                _, params = await self._runtime.call(nv_read_public_command(index))
            except _wire.TpmError as exc:
                if exc.base == _wire.RC_HANDLE:
                    return False
                raise
            attributes, size = parse_nv_read_public(params)
            if attributes & ~NV_WRITTEN != NV_COUNTER_ATTRIBUTES or size != 8:
                raise HostError(
                    f"NV index {index:#x} is not one of this host's counters (another "
                    "user of the TPM defined it)"
                )
            return True

        return await self._runtime.run(read_public)

    async def _entry(
        self, caller: auth.Prin, label: str, *, create: int | None
    ) -> CounterEntry | None:
        """The counter's entry (finishing an interrupted creation); with ``create`` set,
        a missing counter is made with that value. Hold the lock."""
        key = (str(caller), label)
        entry = self._table.get(key)
        if entry is None:
            if create is None:
                return None
            if len(self._table) >= MAX_COUNTERS:
                raise HostError(f"this TPM host has {MAX_COUNTERS} counters, its most")
            index = self._index(*key)
            if any(e.index == index for e in self._table.values()) or await self._defined(index):
                raise HostError(
                    f"the TPM already has an NV counter for {label!r} ({index:#x}) that this "
                    "host's state directory does not record: the directory was restored from "
                    "an older copy (rollback), or another user of the TPM took that index"
                )
            entry = CounterEntry(index, None)
            await self._store({**self._table, key: entry})
        if entry.base is None:
            # Creation interrupted or under way: define, initialize, record the base.
            index = entry.index
            if not await self._defined(index):
                await self._runtime.run(
                    lambda: self._runtime.call(nv_define_counter_command(index))
                )
                _log.info("tpm_nv_counter_defined", index=hex(index))
            value = await self._nv_value(entry.index)
            if value is None:
                await self._increment(entry.index)
                value = await self._nv_value(entry.index)
                assert value is not None
            entry = CounterEntry(entry.index, value - (create or 0))
            await self._store({**self._table, key: entry})
        return entry

    async def _value(self, entry: CounterEntry) -> int:
        assert entry.base is not None
        value = await self._nv_value(entry.index)
        if value is None or value < entry.base:
            raise HostError(
                f"NV counter {entry.index:#x} is below this host's record of it: the "
                "state directory does not belong to this TPM's counters"
            )
        return value - entry.base

    async def init_counter(self, caller: auth.Prin, label: str, counter: int) -> None:
        self._core.check_caller(caller)
        check_label(label)
        check_counter(counter)
        async with self._lock:
            entry = await self._entry(caller, label, create=counter)
            assert entry is not None
            current = await self._value(entry)
            if counter < current:
                raise HostError(
                    f"counter {label!r} is at {current}; counters only increase, {counter} is lower"
                )
            if counter - current > MAX_COUNTER_STEP:
                raise HostError(
                    f"a TPM counter moves one step at a time: raising {label!r} by "
                    f"{counter - current} is over {MAX_COUNTER_STEP} steps"
                )
            for _ in range(counter - current):
                await self._increment(entry.index)

    async def get_counter(self, caller: auth.Prin, label: str) -> int:
        self._core.check_caller(caller)
        check_label(label)
        async with self._lock:
            entry = await self._entry(caller, label, create=None)
            if entry is None:
                raise HostError(f"this program has no counter {label!r}")
            return await self._value(entry)

    async def rollback_protected_seal(
        self, caller: auth.Prin, label: str, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        self._core.check_caller(caller)
        check_label(label)
        if check_policy(policy) == SEAL_POLICY_ANY:
            raise HostError("rollback-protected sealing is for one program: use self or few")
        data = bytes(data)
        if len(_sealed_data(caller, label, MAX_COUNTER, data)) > MAX_SEALED_BYTES:
            raise HostError(f"rollback-protected seal: data over {MAX_SEALED_BYTES} bytes")
        async with self._lock:
            entry = await self._entry(caller, label, create=0)
            assert entry is not None
            if await self._value(entry) >= MAX_COUNTER:
                raise HostError(f"counter {label!r} is at its maximum and cannot be bumped")
            await self._increment(entry.index)
            counter = await self._value(entry)
        return await self._core.seal_for(caller, _sealed_data(caller, label, counter, data), policy)

    async def rollback_protected_unseal(
        self, caller: auth.Prin, sealed: bytes
    ) -> tuple[bytes, str]:
        plain, policy = await self._core.unseal_for(caller, sealed)
        if policy == SEAL_POLICY_ANY:
            raise HostError("not rollback-protected data: it was sealed under policy 'any'")
        try:
            msg = parse("RollbackSealedData", plain, what="rollback-protected data")
        except CodecError as exc:
            raise HostError(f"not rollback-protected data: {exc}") from None
        program, label = msg.entry.hosted_program_name, msg.entry.entry_label
        sealed_at = int(msg.entry.counter)
        if not isinstance(program, str) or program != str(caller):
            raise HostError("this rollback-protected data was sealed for another program")
        check_label(label)
        async with self._lock:
            entry = await self._entry(caller, label, create=None)
            if entry is None:
                raise HostError(
                    f"rollback detected: this host has no record of counter {label!r} "
                    "(its state directory was restored from an older copy?)"
                )
            current = await self._value(entry)
        if sealed_at < current:
            raise HostError(
                f"rollback detected: the data for {label!r} was sealed at counter "
                f"{sealed_at}, the TPM counter is now {current}"
            )
        if sealed_at > current:
            raise HostError(
                f"host counter state rolled back: the data for {label!r} was sealed at "
                f"counter {sealed_at}, but the TPM counter is {current}"
            )
        return bytes(msg.protected_data), policy
