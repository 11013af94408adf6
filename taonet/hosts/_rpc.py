"""The Tao RPC: a hosted program talks to its host over a message channel.

Wire format (compatible with the original's protorpc, and decided by the sans-IO
:class:`taonet.wire.Envelope` on both ends): a request is two frames,
an ``RPCHeader{op, seq}`` and then an ``RPCRequest`` body; a response is two
frames, an ``RPCHeader{op, seq, error?}`` and then an ``RPCResponse`` body, which
is empty when ``error`` is set (the client still reads and drops it). Sequence
numbers let several calls be in flight on one channel.

* :class:`RPCTao` is the client, a :class:`~taonet.hosts.Tao` for a hosted
  program. Waiting callers take turns reading responses and hand each to the
  caller its sequence number names (no background reader, so a lone call costs no
  extra task switch). Use ``async with RPCTao.connect(stream) as tao:``, or
  construct one and ``await nursery.start(tao.run)`` yourself. An error answer
  raises the error class the host raised (:class:`~taonet.NotSupportedError`,
  :class:`~taonet.HostError`, ...; a host that names no kind, like the original:
  HostError) with the host's message, and leaves the channel usable; a malformed
  frame, a response to a call nobody made or under another op (the envelope checks
  each response's header against the calls it sent), or the host closing the
  channel fails every pending (and later) call and closes the channel (noticed
  when a call is waiting).
* :func:`serve_tao_rpc` is the host side for one hosted program: it answers the
  requests on one channel in order from a given :class:`~taonet.hosts.Tao`. A Tao
  without counters answers the counter methods with its "not supported" error. As
  in the original, an unknown method or a body that does not decode is answered
  with an error. What a program's requests can make the host hold is bounded: a
  4 KiB header frame, a body limit per method (:data:`REQUEST_LIMITS`), a timeout on
  a request that has begun and on an answer not taken, and an optional
  :class:`ByteBudget` shared by several channels for large bodies. The client
  checks the per-method limits too, so an oversized call fails alone. A request
  over its limit whose header was read is answered with the error (CodecError)
  under its op and seq before the channel is closed, so the caller learns which
  call failed and why.

Payloads: principals, sub-principals and forms travel in the auth binary encoding,
attestations as serialized ``Attestation`` messages, times as int64 nanoseconds.
Counter methods: InitCounter sends ``label`` and ``counter`` and gets an empty
response; GetCounter sends ``label`` and gets ``counter``; RollbackProtectedSeal
sends ``label``, ``data`` and ``policy`` and gets ``data``; RollbackProtectedUnseal
sends ``data`` and gets ``data`` and ``policy``. Labels (1 to 256 bytes of UTF-8)
and counters (int64 >= 0) are checked on both sides.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Final

import trio

from taonet import auth
from taonet._errors import CodecError, HostError, ProtocolError, TaoError
from taonet._log import get_logger
from taonet._messages import CHUNK_SIZE, MessageStream, take
from taonet.attestation import Attestation
from taonet.hosts._tao import (
    MAX_RANDOM_BYTES,
    MAX_SEALED_BYTES,
    NOT_SUPPORTED,
    SEAL_POLICY_SELF,
    Tao,
    check_counter,
    check_label,
    check_policy,
    check_size,
    check_time,
)
from taonet.wire import (
    END_OF_STREAM,
    MAX_FRAME_CEILING,
    MAX_REQUEST_HEADER,
    NEED_DATA,
    Envelope,
    Request,
    Response,
    Role,
    message_class,
    parse,
    serialize,
)
from taonet.wire._framing import LARGE_FRAME

__all__ = [
    "COUNTER_METHODS",
    "DEFAULT_RPC_MAX_FRAME",
    "MAX_REQUEST_HEADER",
    "METHODS",
    "NOT_SUPPORTED",
    "REQUEST_LIMITS",
    "REQUEST_TIMEOUT",
    "UNKNOWN_METHOD_LIMIT",
    "ByteBudget",
    "RPCTao",
    "serve_tao_rpc",
]

log = get_logger(__name__)

#: The original's frame ceiling: room for a maximal sealed blob plus the envelope.
DEFAULT_RPC_MAX_FRAME: Final = MAX_FRAME_CEILING
#: Seconds a request may take to arrive once its first byte is in (the header, and
#: then the body), and an answer to be taken by the program.
REQUEST_TIMEOUT: Final = 10.0
#: Calls cancelled after sending whose late answers are still expected, at most.
_MAX_ABANDONED: Final = 1024

GET_TAO_NAME: Final = "Tao.GetTaoName"
EXTEND_TAO_NAME: Final = "Tao.ExtendTaoName"
GET_RANDOM_BYTES: Final = "Tao.GetRandomBytes"
GET_SHARED_SECRET: Final = "Tao.GetSharedSecret"  # noqa: S105 (a method name)
ATTEST: Final = "Tao.Attest"
SEAL: Final = "Tao.Seal"
UNSEAL: Final = "Tao.Unseal"
INIT_COUNTER: Final = "Tao.InitCounter"
GET_COUNTER: Final = "Tao.GetCounter"
ROLLBACK_PROTECTED_SEAL: Final = "Tao.RollbackProtectedSeal"
ROLLBACK_PROTECTED_UNSEAL: Final = "Tao.RollbackProtectedUnseal"

#: The counter methods; hosts without counters answer them with NOT_SUPPORTED.
COUNTER_METHODS: Final = frozenset(
    {INIT_COUNTER, GET_COUNTER, ROLLBACK_PROTECTED_SEAL, ROLLBACK_PROTECTED_UNSEAL}
)
#: Every method of the Tao service.
METHODS: Final = frozenset(
    {GET_TAO_NAME, EXTEND_TAO_NAME, GET_RANDOM_BYTES, GET_SHARED_SECRET, ATTEST, SEAL, UNSEAL}
    | COUNTER_METHODS
)

#: Room in a request body beside its payload (field tags and lengths, a policy, a label).
_ENVELOPE: Final = 4096
_SMALL: Final = 1024
#: Largest request body per method: tiny for those that carry sizes and labels, a
#: sealed payload's worth (MAX_SEALED_BYTES, since a stacked host's counter table
#: is sealed through its parent) for the sealing methods.
REQUEST_LIMITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        GET_TAO_NAME: _SMALL,
        GET_RANDOM_BYTES: _SMALL,
        GET_SHARED_SECRET: _SMALL,
        INIT_COUNTER: _SMALL,
        GET_COUNTER: _SMALL,
        EXTEND_TAO_NAME: 16 * 1024,
        ATTEST: 64 * 1024,
        SEAL: MAX_SEALED_BYTES + _ENVELOPE,
        UNSEAL: MAX_SEALED_BYTES + _ENVELOPE,
        ROLLBACK_PROTECTED_SEAL: MAX_SEALED_BYTES + _ENVELOPE,
        ROLLBACK_PROTECTED_UNSEAL: MAX_SEALED_BYTES + _ENVELOPE,
    }
)
#: Largest body read (to answer with an error) for a method the host does not know.
UNKNOWN_METHOD_LIMIT: Final = _SMALL

_INT32_MAX: Final = 2**31 - 1
_UINT64_MAX: Final = 2**64 - 1


def _byte_stream(stream: MessageStream | trio.abc.Stream) -> trio.abc.Stream:
    # A MessageStream adds no bytes of its own: the envelope reads the stream under it.
    return stream.stream if isinstance(stream, MessageStream) else stream


def _request_limit(op: str) -> int:
    return REQUEST_LIMITS.get(op, UNKNOWN_METHOD_LIMIT)


async def _send(stream: trio.abc.Stream, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await stream.send_all(chunk)


def _present(msg: Any) -> frozenset[str]:
    return frozenset(field.name for field, _ in msg.ListFields())


# --------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("done", "error", "op", "response")

    def __init__(self, op: str) -> None:
        self.op = op
        self.done = trio.Event()
        self.response: Any = None
        self.error: TaoError | None = None


class RPCTao(Tao):
    """A :class:`Tao` reached over the Tao RPC (see the module docstring).

    ``stream`` is any :class:`trio.abc.Stream` (or a
    :class:`~taonet.channel.MessageStream`, whose stream is used directly); frames
    are at most ``max_frame`` bytes. The RPCTao owns it and closes it when the channel
    fails or :meth:`aclose` is called.
    """

    def __init__(
        self,
        stream: MessageStream | trio.abc.Stream,
        *,
        max_frame: int = DEFAULT_RPC_MAX_FRAME,
    ) -> None:
        self._stream = _byte_stream(stream)
        self._envelope = Envelope(Role.CLIENT, body_limit=max_frame, max_frame=max_frame)
        self._send_lock = trio.Lock()
        self._seq = itertools.count(1)
        # The host's last answer to GetTaoName, decoded (names rarely change).
        self._last_name: tuple[bytes, auth.Prin] | None = None
        # The calls whose caller waits. The envelope checks that each response answers
        # a call it sent (seq and op); one it awaits that is not here was abandoned by
        # its caller after sending: its late answer is dropped.
        self._pending: dict[int, _Pending] = {}
        # Callers read responses themselves, one at a time under this lock, and hand
        # each to whoever it answers: no extra task hop per call.
        self._receive_lock = trio.Lock()
        self._closed = trio.Event()
        self._failure: TaoError | None = None
        self._running = False

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        stream: MessageStream | trio.abc.Stream,
        *,
        max_frame: int = DEFAULT_RPC_MAX_FRAME,
    ) -> AsyncIterator[RPCTao]:
        """An RPCTao open for the block; closed at the end."""
        tao = cls(stream, max_frame=max_frame)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(tao.run)
                try:
                    yield tao
                finally:
                    await tao.aclose()
        except BaseExceptionGroup as group:
            # run() never raises, so the group holds the block's own error:
            # let it through unwrapped, as if there were no nursery.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    @property
    def max_frame(self) -> int:
        """The largest frame sent or accepted."""
        return self._envelope.max_frame

    @property
    def closed(self) -> bool:
        """True once the channel failed or was closed; every call then raises."""
        return self._failure is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the client open until it fails or is closed; start it with ``nursery.start``.

        Responses are read by the callers themselves (whoever waits reads, and hands
        each answer to its caller); cancelling this task closes the client.
        """
        if self._running:
            raise RuntimeError("this RPCTao is already running")
        if self._failure is not None:
            raise trio.ClosedResourceError("this RPCTao is closed")
        self._running = True
        try:
            task_status.started()
            await self._closed.wait()
        finally:
            self._running = False
            self._fail(HostError("the Tao RPC client was closed"))
            with trio.CancelScope(shield=True):
                await self._close_stream()

    async def _await_response(self, pending: _Pending) -> None:
        """Read responses (one at a time, taking turns with other callers) until
        ``pending`` has its answer or the channel has failed."""
        while not pending.done.is_set():
            await take(self._receive_lock)
            try:
                if pending.done.is_set():
                    return
                failure = await self._read_one()
                if failure is not None:
                    if self._failure is None:
                        log.warning("tao_rpc_client_failed", error=str(failure))
                    self._fail(failure)
                    await self._close_stream()
            finally:
                self._receive_lock.release()

    async def _read_one(self) -> TaoError | None:
        """Read and dispatch one response; return the error that ends the channel.

        The envelope keeps what was received across a cancelled read, so a caller
        cancelled part way through a response leaves it for the next reader.
        """
        envelope = self._envelope
        try:
            while (event := envelope.next_event()) is NEED_DATA:
                envelope.receive_data(await self._stream.receive_some(CHUNK_SIZE))
        except ProtocolError as exc:  # the host closed inside a response
            return ProtocolError(f"bad response from the Tao host: {exc}")
        except CodecError as exc:
            return ProtocolError(f"bad frame from the Tao host: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return HostError(f"the Tao RPC channel broke: {exc or type(exc).__name__}")
        if event is END_OF_STREAM:
            return HostError("the Tao host closed the RPC channel")
        assert isinstance(event, Response)  # answering a call sent, under its op
        pending = self._pending.pop(event.seq, None)
        if pending is None:  # abandoned by its caller
            return None
        if event.error is not None:
            pending.error = event.error
        else:
            try:
                pending.response = parse("RPCResponse", event.body, what=f"{pending.op} response")
            except CodecError as exc:
                pending.error = ProtocolError(str(exc))
                pending.done.set()
                return ProtocolError(str(exc))
        pending.done.set()
        return None

    async def _close_stream(self) -> None:
        self._envelope.clear()
        await trio.aclose_forcefully(self._stream)

    def _fail(self, failure: TaoError) -> None:
        if self._failure is None:
            self._failure = failure
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = failure
                pending.done.set()
        self._pending.clear()
        self._closed.set()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            raise type(failure)(str(failure)) from failure

    async def aclose(self) -> None:
        """Close the channel; pending and later calls raise HostError."""
        self._fail(HostError("the Tao RPC client was closed"))
        await self._close_stream()

    async def _call(self, op: str, expect: frozenset[str], **fields: Any) -> Any:
        """Send one request; return the RPCResponse holding exactly ``expect``."""
        self._raise_failure()
        if not self._running:
            raise RuntimeError("start RPCTao.run in a nursery, or use RPCTao.connect")
        body = serialize(message_class("RPCRequest")(**fields))
        if len(body) > self.max_frame:
            raise HostError(
                f"{op}: a {len(body)}-byte request is over the {self.max_frame}-byte frame limit"
            )
        if len(body) > REQUEST_LIMITS[op]:
            # The host would close the channel: say so here, and keep it.
            raise HostError(
                f"{op}: a {len(body)}-byte request is over the {REQUEST_LIMITS[op]}-byte "
                "limit for this method"
            )
        seq = next(self._seq)
        if seq > _UINT64_MAX:  # pragma: no cover - not in this universe
            raise HostError("the Tao RPC ran out of sequence numbers")
        chunks = self._envelope.request(op, seq, body)
        pending = _Pending(op)
        self._pending[seq] = pending
        sent = False
        try:
            try:
                # Header and body go out together, never interleaved with another call.
                await take(self._send_lock)
                try:
                    await _send(self._stream, chunks)
                finally:
                    self._send_lock.release()
            except BaseException as exc:
                # A header without its body desynchronizes the channel for good.
                if not isinstance(exc, trio.Cancelled):
                    log.warning("tao_rpc_send_failed", op=op, error=str(exc))
                self._fail(HostError(f"{op}: sending the request failed: {exc!r}"))
                if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                    raise HostError(f"{op}: the Tao RPC channel is closed") from exc
                raise
            sent = True
            await self._await_response(pending)
        finally:
            if not pending.done.is_set():
                self._pending.pop(seq, None)
                abandoned = self._envelope.awaiting - len(self._pending)
                if sent and self._failure is None and abandoned > _MAX_ABANDONED:
                    # A host that never answers: stop remembering, give up on it.
                    self._fail(HostError("the Tao host left too many calls unanswered"))
        if pending.error is not None:
            raise type(pending.error)(str(pending.error)) from None
        response = pending.response
        present = _present(response)
        if present != expect:
            want = ", ".join(sorted(expect)) or "no fields"
            got = ", ".join(sorted(present)) or "no fields"
            raise ProtocolError(f"{op}: the response should hold {want}, it holds {got}")
        return response

    # -- the Tao interface --------------------------------------------------------------

    async def get_tao_name(self) -> auth.Prin:
        response = await self._call(GET_TAO_NAME, frozenset({"data"}))
        data = bytes(response.data)
        last = self._last_name
        if last is not None and last[0] == data:
            return last[1]
        try:
            name = auth.decode_prin(data)
        except CodecError as exc:
            raise ProtocolError(f"{GET_TAO_NAME}: bad principal: {exc}") from None
        self._last_name = (data, name)
        return name

    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        if not isinstance(subprin, auth.SubPrin):
            raise HostError("extend_tao_name takes a SubPrin")
        await self._call(EXTEND_TAO_NAME, frozenset(), data=auth.encode(subprin))

    async def get_random_bytes(self, n: int) -> bytes:
        check_size(n, what="random bytes", limit=MAX_RANDOM_BYTES)
        response = await self._call(GET_RANDOM_BYTES, frozenset({"data"}), size=n)
        return self._sized(GET_RANDOM_BYTES, bytes(response.data), n)

    async def get_shared_secret(self, n: int, policy: str = SEAL_POLICY_SELF) -> bytes:
        check_size(n, what="shared secret", limit=MAX_RANDOM_BYTES)
        if not isinstance(policy, str):
            raise HostError("shared secret: the policy must be a string")
        response = await self._call(GET_SHARED_SECRET, frozenset({"data"}), size=n, policy=policy)
        return self._sized(GET_SHARED_SECRET, bytes(response.data), n)

    @staticmethod
    def _sized(op: str, data: bytes, n: int) -> bytes:
        if len(data) != n:
            raise ProtocolError(f"{op}: asked for {n} bytes, the host returned {len(data)}")
        return data

    async def attest(
        self,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        check_time(time, "time")
        check_time(expiration, "expiration")
        fields: dict[str, Any] = {"data": auth.encode(message)}
        if issuer is not None:
            if not isinstance(issuer, auth.Prin):
                raise HostError("attest: the issuer must be a principal")
            fields["issuer"] = auth.encode(issuer)
        if time is not None:
            fields["time"] = time
        if expiration is not None:
            fields["expiration"] = expiration
        response = await self._call(ATTEST, frozenset({"data"}), **fields)
        try:
            return Attestation.from_bytes(bytes(response.data))
        except CodecError as exc:
            raise ProtocolError(f"{ATTEST}: bad attestation: {exc}") from None

    async def seal(self, data: bytes, policy: str = SEAL_POLICY_SELF) -> bytes:
        if not isinstance(policy, str):
            raise HostError("seal: the policy must be a string")
        response = await self._call(SEAL, frozenset({"data"}), data=bytes(data), policy=policy)
        return bytes(response.data)

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        response = await self._call(UNSEAL, frozenset({"data", "policy"}), data=bytes(sealed))
        return bytes(response.data), _policy_of(UNSEAL, response)

    async def init_counter(self, label: str, counter: int) -> None:
        check_label(label)
        check_counter(counter)
        await self._call(INIT_COUNTER, frozenset(), label=label, counter=counter)

    async def get_counter(self, label: str) -> int:
        check_label(label)
        response = await self._call(GET_COUNTER, frozenset({"counter"}), label=label)
        try:
            return check_counter(int(response.counter))
        except HostError:
            raise ProtocolError(
                f"{GET_COUNTER}: the host returned a negative counter ({response.counter})"
            ) from None

    async def rollback_protected_seal(
        self, label: str, data: bytes, policy: str = SEAL_POLICY_SELF
    ) -> bytes:
        check_label(label)
        if not isinstance(policy, str):
            raise HostError("rollback-protected seal: the policy must be a string")
        response = await self._call(
            ROLLBACK_PROTECTED_SEAL,
            frozenset({"data"}),
            label=label,
            data=bytes(data),
            policy=policy,
        )
        return bytes(response.data)

    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        response = await self._call(
            ROLLBACK_PROTECTED_UNSEAL, frozenset({"data", "policy"}), data=bytes(sealed)
        )
        return bytes(response.data), _policy_of(ROLLBACK_PROTECTED_UNSEAL, response)


def _policy_of(op: str, response: Any) -> str:
    policy = response.policy
    if not isinstance(policy, str):  # a proto2 string that is not UTF-8 comes back as bytes
        raise ProtocolError(f"{op}: the host returned a policy that is not UTF-8 text")
    return policy


# --------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------

_Handler = Callable[[Tao, Any], Awaitable[dict[str, Any]]]


def _need(request: Any, op: str, *names: str) -> None:
    missing = [name for name in names if not request.HasField(name)]
    if missing:
        raise HostError(f"{op}: the request needs {', '.join(missing)}")


async def _get_tao_name(tao: Tao, request: Any) -> dict[str, Any]:
    return {"data": auth.encode(await tao.get_tao_name())}


async def _extend_tao_name(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, EXTEND_TAO_NAME, "data")
    await tao.extend_tao_name(auth.decode_subprin(bytes(request.data)))
    return {}


async def _get_random_bytes(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, GET_RANDOM_BYTES, "size")
    return {"data": await tao.get_random_bytes(int(request.size))}


async def _get_shared_secret(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, GET_SHARED_SECRET, "size")
    policy = str(request.policy) if request.HasField("policy") else SEAL_POLICY_SELF
    return {"data": await tao.get_shared_secret(int(request.size), check_policy(policy))}


async def _attest(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, ATTEST, "data")
    message = auth.decode_form(bytes(request.data))
    issuer = auth.decode_prin(bytes(request.issuer)) if request.HasField("issuer") else None
    attestation = await tao.attest(
        message,
        issuer=issuer,
        time=int(request.time) if request.HasField("time") else None,
        expiration=int(request.expiration) if request.HasField("expiration") else None,
    )
    return {"data": attestation.to_bytes()}


async def _seal(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, SEAL, "data")
    policy = str(request.policy) if request.HasField("policy") else SEAL_POLICY_SELF
    return {"data": await tao.seal(bytes(request.data), check_policy(policy))}


async def _unseal(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, UNSEAL, "data")
    data, policy = await tao.unseal(bytes(request.data))
    return {"data": data, "policy": policy}


def _label(request: Any) -> str:
    return check_label(request.label)  # not UTF-8: bytes, refused by check_label


async def _init_counter(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, INIT_COUNTER, "label", "counter")
    await tao.init_counter(_label(request), check_counter(int(request.counter)))
    return {}


async def _get_counter(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, GET_COUNTER, "label")
    return {"counter": check_counter(await tao.get_counter(_label(request)))}


async def _rollback_protected_seal(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, ROLLBACK_PROTECTED_SEAL, "label", "data")
    policy = str(request.policy) if request.HasField("policy") else SEAL_POLICY_SELF
    data = bytes(request.data)
    return {"data": await tao.rollback_protected_seal(_label(request), data, check_policy(policy))}


async def _rollback_protected_unseal(tao: Tao, request: Any) -> dict[str, Any]:
    _need(request, ROLLBACK_PROTECTED_UNSEAL, "data")
    data, policy = await tao.rollback_protected_unseal(bytes(request.data))
    return {"data": data, "policy": policy}


_HANDLERS: Final[dict[str, _Handler]] = {
    GET_TAO_NAME: _get_tao_name,
    EXTEND_TAO_NAME: _extend_tao_name,
    GET_RANDOM_BYTES: _get_random_bytes,
    GET_SHARED_SECRET: _get_shared_secret,
    ATTEST: _attest,
    SEAL: _seal,
    UNSEAL: _unseal,
    INIT_COUNTER: _init_counter,
    GET_COUNTER: _get_counter,
    ROLLBACK_PROTECTED_SEAL: _rollback_protected_seal,
    ROLLBACK_PROTECTED_UNSEAL: _rollback_protected_unseal,
}


class ByteBudget:
    """Bytes that the requests of several channels may hold at once (say, one user's
    programs): a large request waits for its share before its body is read.

    Shares are granted first come, first served. A request over the whole budget
    waits for all of it (it never fits beside another large one).
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"a byte budget must be a positive int, got {limit!r}")
        self.limit = limit
        self._free = limit
        self._waiting: collections.deque[tuple[int, trio.Event]] = collections.deque()

    @property
    def held(self) -> int:
        """Bytes granted and not yet released."""
        return self.limit - self._free

    async def acquire(self, n: int) -> int:
        """Wait for ``n`` bytes (at most the whole budget); return what was granted."""
        n = min(n, self.limit)
        if not self._waiting and n <= self._free:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._free -= n
            await trio.lowlevel.cancel_shielded_checkpoint()  # granted: keep it
            return n
        turn = (n, trio.Event())
        self._waiting.append(turn)
        try:
            await turn[1].wait()
        except BaseException:
            if turn[1].is_set():  # granted as we were cancelled: give it back
                self.release(n)
            else:
                self._waiting.remove(turn)
                self._grant()
            raise
        return n

    def release(self, n: int) -> None:
        """Give back bytes that :meth:`acquire` granted."""
        self._free += n
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._free:
            n, granted = self._waiting.popleft()
            self._free -= n
            granted.set()


async def serve_tao_rpc(
    stream: MessageStream | trio.abc.Stream,
    tao: Tao,
    *,
    max_frame: int = DEFAULT_RPC_MAX_FRAME,
    request_timeout: float | None = REQUEST_TIMEOUT,
    budget: ByteBudget | None = None,
) -> None:
    """Answer one hosted program's Tao RPC requests from ``tao``, in order.

    Limits (so that one program cannot make its host hold memory): a request's
    header frame is at most :data:`MAX_REQUEST_HEADER` bytes and its body at most
    what :data:`REQUEST_LIMITS` allows its method (a method it does not know:
    :data:`UNKNOWN_METHOD_LIMIT`), both below ``max_frame``. Once a request's first
    byte is in, the whole request must be in within ``request_timeout`` seconds; an
    answer must be taken by the program within ``request_timeout`` seconds.
    ``None`` disables those timeouts. A body over :data:`LARGE_FRAME` bytes is read
    only once ``budget`` (if given, shared with other channels) grants its length,
    until the answer is sent.

    An unknown method and a body that does not decode are answered with an error
    (the frames are intact); a :class:`~taonet.TaoError` from ``tao`` (or from
    decoding a payload) becomes the response's error string, with its kind (see
    :mod:`taonet.wire._envelope`), so the client raises the same class. The channel stays open
    after those. A header that does not decode, a frame over its limit, a request or
    answer over its time, or the program closing inside a request closes the channel
    (logged, not raised): the function returns. Before it closes, a request whose
    header was read and whose body is over its limit is answered with that error under
    its op and seq (:meth:`taonet.wire.Envelope.answer_failure`). It also returns when the program
    closes the channel. The stream is closed on return, and what it had received
    freed.
    """
    if request_timeout is not None and (
        isinstance(request_timeout, bool)
        or not isinstance(request_timeout, int | float)
        or not request_timeout > 0
    ):
        raise ValueError(f"request_timeout must be a positive number, got {request_timeout!r}")
    channel = _Channel(_byte_stream(stream), max_frame)
    try:
        if request_timeout is None:
            await _serve_all(channel, tao, None, budget)
            return
        watchdog = _Watchdog(request_timeout)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog.run, nursery.cancel_scope)
            await _serve_all(channel, tao, watchdog, budget)
            nursery.cancel_scope.cancel()
        if watchdog.expired is not None:
            event, op = watchdog.expired
            log.warning(event, op=_clip(op), error=f"overdue by {request_timeout} s")
    finally:
        channel.envelope.clear()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(channel.stream)


_REQUEST_OVERDUE: Final = "tao_rpc_request_timeout"
_ANSWER_OVERDUE: Final = "tao_rpc_response_not_taken"


class _Watchdog:
    """Ends a channel whose request or answer is overdue.

    One task per channel instead of a timer per request: :meth:`arm` and
    :meth:`disarm` only write a deadline, and the task, asleep until the deadline it
    last saw (or one timeout's length when none is armed), cancels the channel's
    scope once an armed deadline has passed.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.deadline = math.inf
        self.what: tuple[str, str] = ("", "")
        self.expired: tuple[str, str] | None = None

    def arm(self, event: str, op: str) -> None:
        self.deadline = trio.current_time() + self.limit_s
        self.what = (event, op)

    def disarm(self) -> None:
        self.deadline = math.inf

    async def run(self, scope: trio.CancelScope) -> None:
        while True:
            now = trio.current_time()
            if self.deadline <= now:
                self.expired = self.what
                scope.cancel()
                return
            await trio.sleep_until(min(self.deadline, now + self.limit_s))


class _Channel:
    """The server's end of one channel: the byte stream and its envelope."""

    __slots__ = ("envelope", "stream")

    def __init__(self, stream: trio.abc.Stream, max_frame: int) -> None:
        self.stream = stream
        self.envelope = Envelope(
            Role.SERVER,
            body_limit=_request_limit,
            header_limit=MAX_REQUEST_HEADER,
            max_frame=max_frame,
        )


async def _serve_all(
    channel: _Channel, tao: Tao, watchdog: _Watchdog | None, budget: ByteBudget | None
) -> None:
    try:
        while await _serve_one(channel, tao, watchdog, budget):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("tao_rpc_channel_broken", error=str(exc) or type(exc).__name__)


async def _serve_one(
    channel: _Channel, tao: Tao, watchdog: _Watchdog | None, budget: ByteBudget | None
) -> bool:
    """Read and answer one request; False when the channel is done.

    One call per request, so that nothing of a request (frames, decoded payloads,
    the answer) stays referenced while the host waits for the next one.
    """
    envelope = channel.envelope
    granted = 0
    try:
        armed = False
        try:
            while (event := envelope.next_event()) is NEED_DATA:
                if watchdog is not None and not armed and envelope.in_message:
                    watchdog.arm(_REQUEST_OVERDUE, "")
                    armed = True
                if budget is not None and not granted:
                    length = envelope.body_length()
                    if length is not None and length > LARGE_FRAME:
                        granted = await budget.acquire(length)
                envelope.receive_data(await channel.stream.receive_some(CHUNK_SIZE))
        except (CodecError, ProtocolError) as exc:
            log.warning("tao_rpc_bad_request", error=str(exc))
            # A request whose header was read hears why, under its op and seq; the
            # channel cannot go on after it.
            chunks = envelope.answer_failure()
            if chunks:
                if watchdog is not None:
                    watchdog.arm(_ANSWER_OVERDUE, "")
                await _send(channel.stream, chunks)
            return False
        if event is END_OF_STREAM:
            return False
        assert isinstance(event, Request)
        if watchdog is not None:
            watchdog.disarm()
        op = event.op
        chunks = await _answer(envelope, event, tao)
        del event
        if watchdog is not None:
            watchdog.arm(_ANSWER_OVERDUE, op)
        await _send(channel.stream, chunks)
        if watchdog is not None:
            watchdog.disarm()
        return True
    finally:
        if granted:
            assert budget is not None
            budget.release(granted)


def _clip(op: str) -> str:
    return op if len(op) <= 64 else op[:64] + "..."


async def _answer(envelope: Envelope, request: Request, tao: Tao) -> list[bytes]:
    """The response (header and body frames) to one request."""
    op = request.op
    error: TaoError | None = None
    body = b""
    try:
        handler = _HANDLERS.get(op)
        if handler is None:
            raise ProtocolError(f"unknown Tao RPC method {_clip(op)!r}")
        message = parse("RPCRequest", request.body, what=f"{op} request")
        fields = await handler(tao, message)
        del message
        body = serialize(message_class("RPCResponse")(**fields))
    except TaoError as exc:
        error = exc
    except Exception as exc:  # a bug must not take the host down with it
        log.exception("tao_rpc_handler_failed", op=op, error_type=type(exc).__name__)
        error = HostError(f"internal error in the host ({type(exc).__name__})")
    if error is None and len(body) > envelope.max_frame:
        error = HostError(
            f"{op}: a {len(body)}-byte response is over the {envelope.max_frame}-byte limit"
        )
    try:
        return envelope.response(op, request.seq, body, error=error)
    except ValueError:  # an error message that does not fit a tiny max_frame
        return envelope.response(op, request.seq, error=HostError("the answer is too long"))
