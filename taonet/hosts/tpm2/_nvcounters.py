"""Counters in TPM NV: rollback protection a restored state directory cannot undo.

Each (program, label) gets its own NV counter index in the owner range, the first
free one of a few candidates derived from a hash of the host's quote key, the
program and the label (a candidate held by something else is skipped: anyone can
compute them). The state directory's ``counters.json`` (HMAC-protected, see
:mod:`._state`) records each index and its *base*: the NV value at which the Tao
counter reads 0 (a new NV counter starts above the highest value any counter on
the TPM has had, not at 0). The entry is written before the NV space is defined,
and the base once, right after. A Tao counter is ``NV value - base``; it only moves
by TPM2_NV_Increment, which no one can undo.

The indices are defined under the owner hierarchy with the owner's (usually empty)
authorization, so any user of the TPM can delete one (TPMA_NV_POLICY_DELETE, which
would forbid that, is for platform-hierarchy indices only: the TPM refuses it from
the owner). What such a user cannot do is roll a count back, and this module makes
sure of that: every NV_Read and NV_Increment is authorized in the runtime's kept
salted HMAC session, whose command HMAC covers the Name of the counter this host
defined (nameAlg || SHA-256 of its exact public area: type COUNTER, attributes,
empty authPolicy, 8 bytes, WRITTEN once incremented), so the TPM itself refuses the
command if the index at that handle is anything else by then, even one swapped in
between two of this host's commands by another client of a resource manager; and
the answer's HMAC is checked, so the value read is the TPM's. Such a refusal, and a
prior NV_ReadPublic answer that is not exactly that public area, is "replaced" (an
index replaced by an ordinary one holding a chosen value); and a
rollback-protected blob names its NV counter's index and the counter's own value
(not the Tao count), so with the state directory put back to before the label
existed, an old blob is refused: the label's new counter is at another index (the
old one, still defined, is skipped) or, if the old counter was deleted, at a value
above every value it had (a TPM starts a new counter above the highest value any
deleted counter reached).
Deleting a counter still denies service (its label's blobs are refused).

Rollback-protected sealing is the Tao's (as :class:`~taonet.hosts.HostCounters`):
a seal seals ``RollbackSealedData{entry{program, label, counter}, data}`` at the NV
value the next increment reaches, then increments (a failed seal leaves the last
good blob current; a blob whose increment failed is refused); an unseal reads the
NV counter and refuses a blob sealed at a lower value ("rollback detected": an old
blob, e.g. from a restored state directory of a host stacked on this one) or at a
higher one. A label missing from the record (an older copy of the state
directory) gets a new counter at another index, never the old one adopted; its
old blobs stay refused because their NV values are below the new counter's.
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
#: Candidate NV indices tried for one counter before giving up (squatted indices).
MAX_INDEX_ATTEMPTS: Final = 16


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


def counter_public(index: int, *, written: bool = True) -> bytes:
    """The TPMS_NV_PUBLIC of one of this host's counters (``written``: once incremented):
    NV_ReadPublic must return exactly this, else the index was replaced."""
    return (
        _wire.u32(index)
        + _wire.u16(_wire.TPM_ALG_SHA256)
        + _wire.u32(NV_COUNTER_ATTRIBUTES | (NV_WRITTEN if written else 0))
        + _wire.u16(0)
        + _wire.u16(8)
    )


def is_counter_public(index: int, params: bytes) -> bool | None:
    """From NV_ReadPublic's answer: True if ``index`` is exactly this host's counter,
    written; False if it is, never written; None if it is something else."""
    public = _wire.Reader(params, "NV_ReadPublic").tpm2b()
    if public == counter_public(index, written=True):
        return True
    if public == counter_public(index, written=False):
        return False
    return None


def check_counter_public(index: int, params: bytes) -> bool:
    """Whether this host's counter at ``index`` was written; HostError unless
    NV_ReadPublic's answer is exactly that counter (type COUNTER, the exact
    attributes, empty authPolicy, 8 bytes: the same as comparing its NV Name, a
    hash of that public area)."""
    written = is_counter_public(index, params)
    if written is None:
        raise _replaced(index)
    return written


def counter_name(index: int, *, written: bool = True) -> bytes:
    """The NV Name of this host's counter at ``index``: nameAlg || SHA-256(TPMS_NV_PUBLIC)."""
    public = counter_public(index, written=written)
    return _wire.u16(_wire.TPM_ALG_SHA256) + hashlib.sha256(public).digest()


#: NV_Read's parameters for a counter: size 8, offset 0.
NV_READ_COUNTER_PARAMS: Final = _wire.u16(8) + _wire.u16(0)


def nv_read_command(index: int) -> bytes:
    """NV_Read of a counter with the empty password (other TPM users, tests: the host
    reads in its HMAC session, see :meth:`Tpm2Counters._nv_value`)."""
    return _wire.command(
        _wire.CC_NV_READ, [index, index], NV_READ_COUNTER_PARAMS, _wire.password_auth()
    )


#: The TPM's answers to a command authorized by an NV index that is no longer the one
#: whose Name the command HMAC covers (or no longer lets its authValue read or write).
_REPLACED_RCS: Final = frozenset(
    {
        _wire.RC_BAD_AUTH,
        _wire.RC_NV_AUTHORIZATION,
        _wire.RC_AUTH_UNAVAILABLE,
        _wire.RC_POLICY_FAIL,
        _wire.RC_NV_UNINITIALIZED,
    }
)


def _replaced(index: int, rc: int | None = None) -> HostError:
    return HostError(
        f"the TPM counter {index:#x} was replaced: its NV index is no longer the "
        "counter this host defined (another user of the TPM deleted and redefined it)",
        rc=rc,
    )


def parse_nv_read_counter(params: bytes) -> int:
    r = _wire.Reader(params, "NV_Read")
    data = r.tpm2b()
    if len(data) != 8:
        raise HostError("the TPM's NV counter is not 8 bytes")
    return int.from_bytes(data, "big")


#: Rollback-protected plaintext: this, the NV index (4 bytes), RollbackSealedData.
_BINDING: Final = b"taonet tpm2 nv\x00"


def _bound(index: int, sealed_data: bytes) -> bytes:
    """The plaintext a rollback-protected seal seals: the NV counter's index and value
    (in ``sealed_data``) name the counter instance, which a restored state directory
    cannot bring back (see the module docstring)."""
    return _BINDING + _wire.u32(index) + sealed_data


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

    def _index(self, program: str, label: str, attempt: int = 0) -> int:
        """The ``attempt``-th candidate NV index for a counter (public: anyone who knows
        the quote key can compute it, so a taken candidate moves on to the next)."""
        digest = hashlib.sha256(
            b"taonet tpm2 counter\x00"
            + self._core.quote_key_der
            + b"\x00"
            + program.encode()
            + b"\x00"
            + label.encode()
            + (b"" if attempt == 0 else b"\x00" + attempt.to_bytes(4, "big"))
        ).digest()
        return _NV_FIRST + int.from_bytes(digest[:4], "big") % _NV_SPAN

    async def _store(self, table: dict[tuple[str, str], CounterEntry]) -> None:
        await trio.to_thread.run_sync(self._state.write_counters, self._mac_key, table)
        self._table = table

    async def _nv_value(self, index: int, *, increment: bool = False) -> int | None:
        """The NV counter's value (after one NV_Increment with ``increment``); None if
        it is defined but never incremented. NV_ReadPublic first checks the index
        is exactly the counter this host defined (see :func:`check_counter_public`:
        the clear message); NV_Increment and NV_Read then run in the salted HMAC
        session over the counter's Name, so the TPM refuses them if the index was
        swapped after that check, and the value read is authenticated."""
        runtime = self._runtime

        async def read() -> int | None:
            _, public = await runtime.call(nv_read_public_command(index))
            written = check_counter_public(index, public)
            if not written and not increment:
                return None
            handles = [index, index]  # authHandle (the index's own authValue), nvIndex
            try:
                if increment:
                    name = counter_name(index, written=written)
                    await runtime.hmac_call(_wire.CC_NV_INCREMENT, handles, [name, name], b"")
                name = counter_name(index, written=True)
                params = await runtime.hmac_call(
                    _wire.CC_NV_READ, handles, [name, name], NV_READ_COUNTER_PARAMS
                )
            except _wire.TpmError as exc:
                if exc.base in _REPLACED_RCS:
                    _log.error("tpm_nv_counter_replaced", index=hex(index), rc=hex(exc.tpm_rc))
                    raise _replaced(index, exc.tpm_rc) from exc
                raise
            return parse_nv_read_counter(params)

        return await runtime.run(read)

    async def _increment(self, index: int) -> int:
        """NV_Increment the (checked) counter; its new value."""
        value = await self._nv_value(index, increment=True)
        assert value is not None
        return value

    async def _index_state(self, index: int) -> str:
        """Whether ``index`` is "free", "ours" (shaped exactly like this host's
        counters) or "foreign"."""

        async def read_public() -> str:
            try:
                _, params = await self._runtime.call(nv_read_public_command(index))
            except _wire.TpmError as exc:
                if exc.base == _wire.RC_HANDLE:
                    return "free"
                raise
            return "foreign" if is_counter_public(index, params) is None else "ours"

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
            entry = CounterEntry(await self._free_index(*key), None)
            await self._store({**self._table, key: entry})
        if entry.base is None:
            # Creation interrupted or under way: define, initialize, record the base.
            index = entry.index
            state = await self._index_state(index)
            if state == "foreign":
                raise HostError(
                    f"the TPM counter {index:#x} was replaced: another user of the TPM "
                    "defined that index while this host was making its counter"
                )
            if state == "free":
                await self._runtime.run(
                    lambda: self._runtime.call(nv_define_counter_command(index))
                )
                _log.info("tpm_nv_counter_defined", index=hex(index))
            value = await self._nv_value(entry.index)
            if value is None:
                value = await self._increment(entry.index)
            entry = CounterEntry(entry.index, value - (create or 0))
            await self._store({**self._table, key: entry})
        return entry

    async def _free_index(self, program: str, label: str) -> int:
        """The first candidate index no one holds (the choice is recorded in the MAC'd
        counter map, never recomputed). A held candidate is skipped, never adopted,
        even one shaped like this host's counters: it may be this label's own counter
        under a state directory restored from an older copy (its blobs name that
        index, so they stay refused under the new one) or a squatter's copy."""
        taken = {e.index for e in self._table.values()}
        for attempt in range(MAX_INDEX_ATTEMPTS):
            index = self._index(program, label, attempt)
            if index in taken:
                continue
            state = await self._index_state(index)
            if state == "free":
                return index
            _log.warning("tpm_nv_index_taken", index=hex(index), shaped_like_ours=state == "ours")
        raise HostError(
            f"no free NV index for counter {label!r}: all {MAX_INDEX_ATTEMPTS} candidate "
            "indices are held by other users of the TPM (or by this host's own counters "
            "from older copies of its state directory)"
        )

    async def _value(self, entry: CounterEntry) -> int:
        """The Tao counter: NV value - base."""
        assert entry.base is not None
        return await self._absolute(entry) - entry.base

    async def _absolute(self, entry: CounterEntry) -> int:
        """The checked NV value (at least the entry's base)."""
        assert entry.base is not None
        value = await self._nv_value(entry.index)
        if value is None or value < entry.base:
            raise HostError(
                f"NV counter {entry.index:#x} is below this host's record of it: the "
                "state directory does not belong to this TPM's counters"
            )
        return value

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
        if len(_bound(0, _sealed_data(caller, label, MAX_COUNTER, data))) > MAX_SEALED_BYTES:
            raise HostError(f"rollback-protected seal: data over {MAX_SEALED_BYTES} bytes")
        async with self._lock:
            entry = await self._entry(caller, label, create=0)
            assert entry is not None
            assert entry.base is not None
            now = await self._absolute(entry)
            if now - entry.base >= MAX_COUNTER or now >= MAX_COUNTER:
                raise HostError(f"counter {label!r} is at its maximum and cannot be bumped")
            # Seal at the value the increment will reach, then increment: a seal that
            # fails leaves the counter, and so the last good blob, as it was; a blob
            # whose increment failed names a value the counter never reached and
            # is refused. The blob names the NV counter's own value, which no counter
            # on this TPM takes twice (a redefined counter starts above every value
            # any counter had), so a counter deleted and made again under a
            # restored state directory cannot make an old blob current again.
            sealed = await self._core.seal_for(
                caller, _bound(entry.index, _sealed_data(caller, label, now + 1, data)), policy
            )
            reached = await self._increment(entry.index)
            if reached != now + 1:
                raise HostError(
                    f"the TPM counter for {label!r} moved while sealing (another user of "
                    "the TPM incremented it): seal again"
                )
        return sealed

    async def rollback_protected_unseal(
        self, caller: auth.Prin, sealed: bytes
    ) -> tuple[bytes, str]:
        plain, policy = await self._core.unseal_for(caller, sealed)
        if policy == SEAL_POLICY_ANY:
            raise HostError("not rollback-protected data: it was sealed under policy 'any'")
        if len(plain) < len(_BINDING) + 4 or not plain.startswith(_BINDING):
            raise HostError("not rollback-protected data of a TPM host")
        index = int.from_bytes(plain[len(_BINDING) : len(_BINDING) + 4], "big")
        plain = plain[len(_BINDING) + 4 :]
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
            if entry.index != index:
                raise HostError(
                    f"rollback detected: the data for {label!r} was sealed under NV counter "
                    f"{index:#x}, this host's counter for it is now {entry.index:#x} (its "
                    "state directory was restored from an older copy?)"
                )
            current = await self._absolute(entry)
            base = entry.base
            assert base is not None
        if sealed_at < current:
            raise HostError(
                f"rollback detected: the data for {label!r} was sealed at counter "
                f"{max(sealed_at - base, 0)}, the TPM counter is now {current - base}"
            )
        if sealed_at > current:
            raise HostError(
                f"host counter state rolled back, or the seal's counter increment never "
                f"happened: the data for {label!r} was sealed at counter "
                f"{sealed_at - base}, but the TPM counter is {current - base}"
            )
        return bytes(msg.protected_data), policy
