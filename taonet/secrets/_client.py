"""The secret service client: ``async with taonet.secrets.connect(...) as store:``.

One Tao channel carries many calls, and several may be in flight at once (from
several tasks): each request gets its own sequence number, and one reader task
hands each answer to the call it names (the envelope checks that an answer
matches a call made). A refusal raises the exception of its typed code
(:func:`~taonet.secrets.error_for`). When the channel breaks (the server closed
it, idle or restarting; a network failure), the calls in flight raise
:class:`~taonet.ProtocolError` (the cause chained) and the next call opens a new
channel.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final

import attrs
import trio

from taonet import auth
from taonet._edges import map_os_errors
from taonet._errors import AuthenticationError, CodecError, ProtocolError, TaoError
from taonet.channel import ChannelIdentity, CRLSource, TaoStream, open_channel
from taonet.protected import KEY_TYPE, ObjectId, SecretObject
from taonet.secrets import _watch
from taonet.secrets._errors import error_for
from taonet.secrets._protocol import (
    MAX_REQUEST_BODY,
    MAX_RESPONSE_BODY,
    Changed,
    CreateRequest,
    Deleted,
    DeleteRequest,
    Failure,
    Listing,
    ListRequest,
    ReadRequest,
    Request,
    Response,
    RotateRequest,
    WriteRequest,
    decode_response,
    encode_request,
)
from taonet.wire import END_OF_STREAM, NEED_DATA, Envelope, Role
from taonet.wire import Response as EnvelopeResponse

__all__ = ["CALL_TIMEOUT", "SecretStore", "connect"]

#: Bound on one call, from sending to its answer (wrap calls in trio.fail_after for less).
CALL_TIMEOUT: Final = 60.0
_CHUNK: Final = 64 * 1024
_MAX_FRAME: Final = max(MAX_REQUEST_BODY, MAX_RESPONSE_BODY)


@attrs.define
class _Slot:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: EnvelopeResponse | None = None
    failure: BaseException | None = None


class _Channel:
    """One channel and its reader: the calls in flight, by sequence number."""

    def __init__(self, stream: TaoStream) -> None:
        self.stream = stream
        self.envelope = Envelope(
            Role.CLIENT,
            body_limit=MAX_RESPONSE_BODY,
            max_frame=_MAX_FRAME,
            default_error=ProtocolError,
        )
        self.waiting: dict[int, _Slot] = {}
        self.seq = itertools.count(1)
        self.send_lock = trio.Lock()
        self.failure: ProtocolError | None = None

    def fail(self, failure: ProtocolError) -> None:
        if self.failure is None:
            self.failure = failure
        for slot in self.waiting.values():
            slot.failure = self.failure
            slot.done.set()
        self.waiting.clear()

    async def read(self) -> None:
        """Hand every answer to its call until the channel ends; then fail the rest."""
        try:
            while True:
                event = self.envelope.next_event()
                if event is NEED_DATA:
                    self.envelope.receive_data(await self.stream.receive_some(_CHUNK))
                    continue
                if event is END_OF_STREAM:
                    raise ProtocolError("the secret server closed the channel")
                assert isinstance(event, EnvelopeResponse)
                slot = self.waiting.pop(event.seq, None)
                if slot is not None:  # else: its caller gave up waiting
                    slot.response = event
                    slot.done.set()
        except ProtocolError as exc:
            self.fail(exc)
        except (TaoError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            failure = ProtocolError(f"the channel to the secret server broke: {exc}")
            failure.__cause__ = exc
            self.fail(failure)
        finally:
            self.envelope.clear()
            with (
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                trio.CancelScope(shield=True),
            ):
                await self.stream.aclose()

    async def call(self, method: str, body: bytes) -> EnvelopeResponse:
        if self.failure is not None:
            raise self.failure
        # A caller already out of time sends nothing (the lock's fast path below does
        # not look at cancellation).
        await trio.lowlevel.checkpoint_if_cancelled()
        seq = next(self.seq)
        slot = _Slot()
        lock = self.send_lock
        try:  # the usual case, nobody else sending: no extra trip through the scheduler
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            chunks = self.envelope.request(method, seq, body)
            self.waiting[seq] = slot
            # A request once begun is written whole, whatever happens to its caller: a
            # write cut short would break the channel under every other call on it. A
            # server that takes nothing for CALL_TIMEOUT ends the channel instead.
            with trio.CancelScope(shield=True), trio.move_on_after(CALL_TIMEOUT) as sending:
                try:
                    await self.stream.send_all(b"".join(chunks))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    failure = ProtocolError(f"the channel to the secret server broke: {exc}")
                    self.fail(failure)
                    raise failure from exc
            if sending.cancelled_caught:
                failure = ProtocolError(
                    f"the secret server took no request bytes for {CALL_TIMEOUT} s"
                )
                self.fail(failure)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.stream)
                raise failure
        finally:
            lock.release()
        try:
            await slot.done.wait()
        finally:
            self.waiting.pop(seq, None)
        if slot.failure is not None:
            raise ProtocolError(str(slot.failure)) from slot.failure
        assert slot.response is not None
        return slot.response


class SecretStore:
    """A client of one secret server (make it with :func:`connect`)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        address: tuple[str, int],
        identity: ChannelIdentity,
        *,
        revocations: CRLSource | None = None,
        server: auth.Prin | None = None,
    ) -> None:
        self._nursery = nursery
        self.address: Final = address
        self._identity = identity
        self._revocations = revocations
        self._server = server
        self._channel: _Channel | None = None
        self._opening = trio.Lock()

    async def _open(self) -> _Channel:
        channel = self._channel
        if channel is not None and channel.failure is None:
            return channel  # the usual case: no lock, no trip through the scheduler
        async with self._opening:
            channel = self._channel
            if channel is not None and channel.failure is None:
                return channel
            host, port = self.address
            what = f"cannot reach the secret server at {host}:{port}"
            with map_os_errors(to=ProtocolError, what=what):
                stream = await open_channel(
                    host, port, self._identity, revocations=self._revocations
                )
                try:
                    await stream.wait_accepted()  # the server's verdict on us
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
            peer = stream.peer.principal
            if self._server is not None and peer != self._server:
                await stream.aclose()
                raise AuthenticationError(
                    f"the server at {host}:{port} is {peer}, not {self._server}"
                )
            channel = _Channel(stream)
            self._nursery.start_soon(channel.read)
            self._channel = channel
            return channel

    async def call(self, request: Request) -> Response:
        """Send ``request`` and return its answer; a refusal is raised as its typed
        exception (never returned as a Failure). An envelope error from the server
        is raised with its kind (CodecError, ProtocolError, ...)."""
        method, body = encode_request(request)
        # A bare CancelScope: what trio.fail_after does, without its generator's cost.
        with trio.CancelScope(deadline=trio.current_time() + CALL_TIMEOUT) as scope:
            channel = await self._open()
            answer = await channel.call(method, body)
        if scope.cancelled_caught:
            raise trio.TooSlowError(f"no answer from the secret server in {CALL_TIMEOUT} s")
        if answer.error is not None:
            raise answer.error
        try:
            response = decode_response(method, answer.body)
        except CodecError as exc:
            raise ProtocolError(f"bad answer from the secret server: {exc}") from exc
        if isinstance(response, Failure):
            raise error_for(response.code, response.reason)
        return response

    async def _expect(self, request: Request, kind: type[Response]) -> Response:
        response = await self.call(request)
        if not isinstance(response, kind):
            raise ProtocolError(
                f"the secret server answered {type(request).__name__} with"
                f" {type(response).__name__}"
            )
        return response

    async def read(
        self, name: str, epoch: int | None = None, *, directive: bytes | None = None
    ) -> SecretObject:
        """The object ``name`` at ``epoch``, or at its latest ACTIVE epoch.

        ``directive``: a disclosure directive (:mod:`taonet.disclosure`) granting this
        program Read on ``(name, epoch)``, for a server whose guard does not give it
        Read (the server refuses a directive without ``epoch``).

        ProtocolError when the answer is another object than the one asked (another
        name, or another epoch than ``epoch`` when given)."""
        request = ReadRequest(name, epoch, directive=directive)
        response = await self._expect(request, SecretObject)
        assert isinstance(response, SecretObject)
        if response.id.name != name or (epoch is not None and response.id.epoch != epoch):
            asked = name if epoch is None else f"{name}#{epoch}"
            raise ProtocolError(
                f"the secret server answered a read of {asked[:300]} with {str(response.id)[:300]}"
            )
        return response

    async def write(self, name: str, value: bytes, *, epoch: int | None = None) -> ObjectId:
        """Replace the value of ``name`` (its latest ACTIVE epoch, or ``epoch``)."""
        response = await self._expect(WriteRequest(name, value, epoch), Changed)
        assert isinstance(response, Changed)
        return response.id

    async def create(
        self,
        name: str,
        value: bytes | None = None,
        *,
        type: str | None = None,
        protector: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> ObjectId:
        """Create ``name`` (epoch 1, or after every epoch a deleted name had: epochs
        never come back). Without ``value`` the server makes a random key
        (type :data:`~taonet.protected.KEY_TYPE`); ``type`` defaults to ``"bytes"``
        with a value. ``protector``: the key that protects it (default: the server's
        master key)."""
        kind = type if type is not None else ("bytes" if value is not None else KEY_TYPE)
        request = CreateRequest(name, value, kind, protector, not_before, not_after)
        response = await self._expect(request, Changed)
        assert isinstance(response, Changed)
        return response.id

    async def delete(self, name: str, epoch: int | None = None) -> tuple[int, ...]:
        """Delete ``name`` at ``epoch`` (or every epoch); the epochs removed."""
        response = await self._expect(DeleteRequest(name, epoch), Deleted)
        assert isinstance(response, Deleted)
        return response.epochs

    async def list_page(
        self, prefix: str = "/", *, after: str | None = None, limit: int = 100
    ) -> Listing:
        """One page of the names under ``prefix`` the caller may read."""
        response = await self._expect(ListRequest(prefix, after, limit), Listing)
        assert isinstance(response, Listing)
        return response

    async def list(self, prefix: str = "/") -> list[str]:
        """Every name under ``prefix`` (segment-wise) the caller may read, in order."""
        names: list[str] = []
        after: str | None = None
        while True:
            page = await self.list_page(prefix, after=after, limit=1000)
            names.extend(page.names)
            if page.next_after is None:
                return names
            after = page.next_after

    async def rotate(self, name: str, value: bytes | None = None) -> ObjectId:
        """A new epoch of ``name`` (a random key for a key, else ``value``); what the
        old epoch protected is rewrapped under it; the old epoch is RETIRED."""
        response = await self._expect(RotateRequest(name, value), Changed)
        assert isinstance(response, Changed)
        return response.id

    def watch(self, prefix: str = "/", *, cursor: int = 0) -> _watch.Watch:
        """``async for event in store.watch(prefix)``: change events under ``prefix`` on
        names the caller may Read, after ``cursor`` (0: from now); see ``_watch``."""
        return _watch.watch(self, prefix, cursor=cursor)

    async def aclose(self) -> None:
        """Close the channel (calls in flight raise ProtocolError)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.fail(ProtocolError("the store was closed"))
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await channel.stream.aclose()


def _address(address: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {address[:100]!r}")
        return host.strip("[]") or "127.0.0.1", int(port)
    return str(address[0]), int(address[1])


@contextlib.asynccontextmanager
async def connect(
    address: tuple[str, int] | str,
    identity: ChannelIdentity,
    *,
    revocations: CRLSource | None = None,
    server: auth.Prin | None = None,
) -> AsyncIterator[SecretStore]:
    """A :class:`SecretStore` for the secret server at ``address`` (``(host, port)`` or
    ``"HOST:PORT"``), over Tao channels made with ``identity``.

    The first channel is opened now (so a server that cannot be reached, or refuses
    us, fails here); ``revocations`` checks the server's certificate (and ours) as
    :func:`~taonet.channel.open_channel` does; ``server``, when given, is the
    principal the server must have.
    """
    try:
        async with trio.open_nursery() as nursery:
            store = SecretStore(
                nursery, _address(address), identity, revocations=revocations, server=server
            )
            try:
                await store._open()
                yield store
            finally:
                await store.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The readers never raise: a group holds what the block (or opening) raised.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
