"""What a TPM host keeps loaded, and how it gets it back after a TPM reset.

:class:`TpmRuntime` owns one TPM's :class:`~taonet.hosts.tpm2._transport.Transport`
and what is done once per start, not per call: the storage primary (CreatePrimary,
kept loaded), the quote key's saved context, one kept policy session, the
marshaled PCR selection and the PolicyPCR digest (computed in Python), and two kept
sessions: a policy session for Unseal and an HMAC session for the NV counters. Both are
salted to the storage primary, whose Name must be the one recorded at host creation;
Unseal answers are encrypted and HMAC-checked (see ``_session``,
:meth:`TpmRuntime.unseal`), and NV commands in the HMAC session bind the NV index's
Name and have their answers HMAC-checked (:meth:`TpmRuntime.hmac_call`). Two sessions
fit the three loaded-session slots of a TPM without a resource manager. At most the
primary and one more object are loaded at a time: every operation that loads
something flushes it before it returns, so the three transient slots of a small TPM
never run out.

Every operation runs as one sequence under the TPM's lock, shielded from
cancellation (a sequence cancelled half-way would leave an object loaded) but
bounded by :data:`TPM_TIMEOUT`.

TPM reset (swtpm restarted under a running host): the connection drops, or
ContextLoad answers "integrity check failed", or a handle is gone. The runtime
then reads TPM2_ReadClock's resetCount (not obfuscated there, unlike in a quote);
if it moved, it logs ``tpm_reset`` and the call fails with a HostError saying the
TPM was reset. The next call rebuilds (new connection, CreatePrimary, quote key,
session) and reads the PCRs again: if they differ from the ones the host's name
states, the host refuses service with a HostError naming the PCRs, rather than
quietly taking a new name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar

import trio

from taonet._errors import HostError
from taonet._log import get_logger
from taonet.attestation.tpm2 import pcr_digest, pcr_selection_bytes
from taonet.hosts.tpm2 import _session, _wire
from taonet.hosts.tpm2._session import SaltedSession
from taonet.hosts.tpm2._setup import PRIMARY_TEMPLATE
from taonet.hosts.tpm2._transport import ConnectionLost, Transport

__all__ = ["TPM_TIMEOUT", "TpmRuntime", "policy_pcr_digest"]

_log = get_logger(__name__)
_T = TypeVar("_T")

#: Longest one TPM operation may take before the host gives up on it (seconds).
TPM_TIMEOUT: Final = 60.0
# Response codes after which the runtime checks whether the TPM was reset.
_RESET_SIGNS: Final = frozenset(
    {
        _wire.RC_INTEGRITY,
        _wire.RC_HANDLE,
        _wire.RC_REFERENCE_H0,
        _wire.RC_REFERENCE_S0,
        _wire.RC_INITIALIZE,
    }
)


def policy_pcr_digest(pcrs: Mapping[int, bytes]) -> bytes:
    """The policy digest of TPM2_PolicyPCR over ``pcrs`` (SHA-256 session and bank)."""
    selection = pcr_selection_bytes(sorted(pcrs))
    return hashlib.sha256(
        b"\x00" * 32 + struct.pack(">I", _wire.CC_POLICY_PCR) + selection + pcr_digest(pcrs)
    ).digest()


def differing(expected: Mapping[int, bytes], now: Mapping[int, bytes]) -> str:
    """ "PCR 16, PCR 23" (the PCRs whose values differ)."""
    return ", ".join(f"PCR {p}" for p in sorted(expected) if now.get(p) != expected[p])


def _no_answer() -> str:
    return (
        f"the TPM did not answer within {TPM_TIMEOUT:g} s (for swtpm: another client may "
        "hold its one connection)"
    )


class TpmRuntime:
    """One TPM's connection and kept objects (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        *,
        pcrs: tuple[int, ...],
        quote_private: bytes,
        quote_public: bytes,
        primary_name: bytes = b"",
    ) -> None:
        self.transport = transport
        self.pcr_numbers = pcrs
        self.selection = pcr_selection_bytes(pcrs)
        self.quote_blobs = quote_private, quote_public
        #: The PCR values the host's name states (read at the first start).
        self.expected_pcrs: dict[int, bytes] | None = None
        self.policy_digest = b""
        self.primary = 0
        self.session = 0
        self.hmac_session = 0
        #: The storage primary's Name recorded at host creation (see ``_state``); empty
        #: matches no primary, so a runtime made without it never starts a session.
        self.primary_name = primary_name
        self._salted: SaltedSession | None = None
        self._hmac: SaltedSession | None = None
        self._quote_context = b""
        self._clock: tuple[int, int] | None = None
        self._ready = False
        self._closed = False
        self._limiter = trio.CapacityLimiter(1)

    # -- running operations --------------------------------------------------------

    async def run(self, op: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``op`` (a sequence of commands) with the TPM ready and locked.

        HostError if the TPM cannot be reached, was reset (this call only: the
        next rebuilds), or now has other PCR values than the host's name states.
        """
        async with self.transport.lock:
            if self._closed:  # checked under the lock: aclose may have run meanwhile
                raise HostError("this TPM host is closed")
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + TPM_TIMEOUT
                try:
                    if not self._ready:
                        await self._rebuild()
                    return await op()
                except ConnectionLost as exc:
                    await self._diagnose(exc)
                    raise
                except _wire.TpmError as exc:
                    if exc.base in _RESET_SIGNS:
                        await self._diagnose(exc)
                    raise
            self._ready = False
            await self.transport.close()
            raise HostError(_no_answer())

    async def call(self, command: bytes) -> tuple[bytes, bytes]:
        """One command (inside :meth:`run`)."""
        return await self.transport.call(command)

    async def flush(self, handle: int) -> None:
        """Flush a loaded object; a failure leaves it for the next rebuild to flush."""
        try:
            await self.call(_wire.flush_command(handle))
        except HostError:
            self._ready = False

    async def load_quote_key(self) -> int:
        handles, _ = await self.call(_wire.context_load_command(self._quote_context))
        return _wire.handle_of(handles)

    async def read_pcrs(self) -> dict[int, bytes]:
        values: dict[int, bytes] = {}
        numbers = self.pcr_numbers
        for i in range(0, len(numbers), 8):
            chunk = numbers[i : i + 8]
            _, params = await self.call(_wire.pcr_read_command(pcr_selection_bytes(chunk)))
            values.update(_wire.parse_pcr_read(params, chunk))
        return values

    async def read_clock(self) -> tuple[int, int]:
        _, params = await self.call(_wire.read_clock_command())
        return _wire.parse_read_clock(params)

    # -- start, reset, rebuild -------------------------------------------------------

    async def start(self) -> dict[int, bytes]:
        """Build everything and return the PCR values (the host's name states them)."""
        async with self.transport.lock:
            with trio.move_on_after(TPM_TIMEOUT) as scope:
                await self._rebuild()
            if scope.cancelled_caught:
                await self.transport.close()
                raise HostError(_no_answer())
        assert self.expected_pcrs is not None
        return self.expected_pcrs

    async def _rebuild(self) -> None:
        await self.transport.close()
        clock = await self.read_clock()
        await self._flush_leftovers()
        handles, params = await self.call(_wire.create_primary_command(PRIMARY_TEMPLATE))
        self.primary = _wire.handle_of(handles)
        primary_public = _wire.parse_create_primary(params)
        try:
            handles, _ = await self.call(_wire.load_command(self.primary, *self.quote_blobs))
        except _wire.TpmError as exc:
            if not _wire.is_parameter_error(exc.tpm_rc):
                raise
            raise HostError(
                f"this TPM cannot load the host's quote key: the state directory belongs to "
                f"another TPM, or this TPM's owner hierarchy was cleared ({exc})",
                rc=exc.tpm_rc,
            ) from None
        quote = _wire.handle_of(handles)
        try:
            _, params = await self.call(_wire.context_save_command(quote))
        finally:
            await self.call(_wire.flush_command(quote))
        self._quote_context = params
        # After the quote key's Load, whose refusal names a cleared owner hierarchy
        # with the TPM's rc; before any session is salted to the primary.
        if not hmac.compare_digest(_session.object_name(primary_public), self.primary_name):
            _log.error("tpm_primary_changed")
            raise HostError(
                "the TPM's storage primary is not the one recorded when this host was "
                "created: the state directory belongs to another TPM, or something answers "
                "in the TPM's place; no session is salted to it"
            )
        self._salted = await self._start_session(primary_public, _wire.TPM_SE_POLICY)
        self.session = self._salted.handle
        self._hmac = await self._start_session(primary_public, _wire.TPM_SE_HMAC)
        self.hmac_session = self._hmac.handle
        values = await self.read_pcrs()
        self._clock = clock
        if self.expected_pcrs is None:
            self.expected_pcrs = values
            self.policy_digest = policy_pcr_digest(values)
        elif values != self.expected_pcrs:
            which = differing(self.expected_pcrs, values)
            _log.error("tpm_pcrs_changed", pcrs=which)
            raise HostError(
                f"the TPM's PCRs changed ({which} differ from the host's name): this host "
                "refuses to serve under a name that is no longer true; restore those PCRs "
                "or create a new host"
            )
        self._ready = True

    async def _start_session(self, primary_public: bytes, session_type: int) -> SaltedSession:
        """A kept session of ``session_type``, salted to the (checked) storage primary."""
        salt, encrypted = _session.make_salt(*_session.ecc_point(primary_public, PRIMARY_TEMPLATE))
        nonce = secrets.token_bytes(_session.NONCE_SIZE)
        handles, params = await self.call(
            _wire.start_salted_session_command(self.primary, nonce, encrypted, session_type)
        )
        handle = _wire.handle_of(handles)
        nonce_tpm = _wire.parse_start_auth_session(params)
        return _session.SaltedSession(handle, salt, nonce_tpm, nonce)

    async def unseal(self, item: int, public: bytes) -> bytes:
        """TPM2_Unseal of loaded ``item`` (marshaled TPM2B_PUBLIC ``public``) in the kept
        salted session, after PolicyPCR (inside :meth:`run`): the answer is encrypted
        and its HMAC checked. HostError if it fails its check (the next call starts a
        new session); TpmError if the TPM refuses."""
        salted = self._salted
        assert salted is not None
        attributes = _session.ATTR_CONTINUE | _session.ATTR_ENCRYPT
        names = [_session.object_name(public)]
        auth, nonce = salted.command_auth(_wire.CC_UNSEAL, names, b"", attributes)
        command = _wire.unseal_command(item, auth)
        response = await self.transport.call_raw(command)
        try:
            _, params = _wire.split_response(command, response)
            area = _wire.response_auth(command, response)
            plain = salted.open_response(_wire.CC_UNSEAL, params, area, nonce, attributes)
        except HostError:
            self._ready = False  # the session's nonce is unknown now: start another
            raise
        return _wire.parse_unseal(plain)

    async def hmac_call(
        self, cc: int, handles: list[int], names: list[bytes], params: bytes
    ) -> bytes:
        """Command ``cc`` on ``handles`` (whose Names are ``names``: the TPM checks the
        command HMAC over them, so a handle now naming another entity is refused) in
        the kept salted HMAC session (inside :meth:`run`); its parameters, with the
        response HMAC checked. TpmError if the TPM refuses (the session goes on: a
        refused command leaves its nonce as it was); HostError if the answer fails its
        check (the next call starts new sessions)."""
        salted = self._hmac
        assert salted is not None
        attributes = _session.ATTR_CONTINUE
        auth, nonce = salted.command_auth(cc, names, params, attributes)
        command = _wire.command(cc, handles, params, auth)
        response = await self.transport.call_raw(command)
        try:
            _, out = _wire.split_response(command, response)
            area = _wire.response_auth(command, response)
            return salted.open_response(cc, out, area, nonce, attributes)
        except HostError:
            self._ready = False  # the session's nonce may be unknown now: start another
            raise

    async def _flush_leftovers(self) -> None:
        # swtpm has no resource manager: objects and sessions a crashed client
        # loaded stay loaded, and a small TPM has three object slots.
        for first, kinds in ((0x80000000, (0x80,)), (0x02000000, (0x02, 0x03))):
            _, params = await self.call(_wire.get_handles_command(first))
            for handle in _wire.parse_get_handles(params):
                if handle >> 24 in kinds:
                    await self.call(_wire.flush_command(handle))

    async def _diagnose(self, cause: HostError) -> None:
        """After a failure that a TPM reset explains: was it one? Raise if so."""
        before = self._clock
        try:
            if isinstance(cause, ConnectionLost):
                await self.transport.close()
            now = await self.read_clock()
        except HostError as exc:
            self._ready = False
            _log.error("tpm_unreachable", error=str(exc))
            raise HostError(f"the TPM cannot be reached: {exc}") from cause
        # Reset or not, a lost connection or a missing handle means the kept
        # objects cannot be trusted to be loaded: the next call rebuilds them.
        self._ready = False
        if before is not None and now != before:
            self._ready = False
            _log.error(
                "tpm_reset", reset_count_before=before[0], reset_count=now[0], error=str(cause)
            )
            raise HostError(
                f"the TPM was reset (resetCount {before[0]} -> {now[0]}, restartCount "
                f"{before[1]} -> {now[1]}): its loaded keys and sessions are gone ({cause}); "
                "the next call reloads them",
                rc=getattr(cause, "rc", None),
            ) from cause

    async def _flush_kept(self) -> None:
        """Flush the kept session and primary (errors ignored: a rebuild flushes leftovers)."""
        if self.transport.connected:
            for handle in (self.session, self.hmac_session, self.primary):
                if handle:
                    await self.flush(handle)
        self.session = self.hmac_session = self.primary = 0
        self._salted = self._hmac = None
        self._ready = False

    async def aclose(self) -> None:
        """Flush what is loaded and close the connection."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + TPM_TIMEOUT
            async with self.transport.lock:
                await self._flush_kept()
                await self.transport.close()

    async def run_blocking(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run blocking ``fn(*args)`` (tpm2-pytss setup work) in a thread while this
        host's connection is closed (swtpm serves one connection at a time); the next
        operation rebuilds."""
        async with self.transport.lock:
            if self._closed:
                raise HostError("this TPM host is closed")
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + TPM_TIMEOUT
                await self._flush_kept()
                await self.transport.close()
            return await trio.to_thread.run_sync(lambda: fn(*args), limiter=self._limiter)
