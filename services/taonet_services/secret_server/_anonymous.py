"""Anonymous channels of the secret server: a small pool, one request at a time, few rows.

A server that verifies operator credentials lets clients without a program
certificate finish the TLS handshake (an operator's tool has none). Anyone can, so
those channels are kept apart from the programs' (:class:`AnonymousChannels`):

* at most ``max_channels`` are held at once (``per_address`` from one address, an
  IPv4 address or IPv6 /64); a new one past the total evicts the oldest anonymous
  channel that is waiting for a request (anonymous channels are evicted first,
  programs' channels never for them), or is closed at once if all are busy; past
  ``per_address`` it is closed at once;
* each must send a request within ``request_timeout`` seconds of the previous
  answer (or of the handshake), or it is closed;
* requests are read and answered one at a time (one body in memory per channel, so
  ``max_channels`` bodies in all);
* a request that is refused (no operator credential, a credential refused, or the
  guard's no for the operator) is answered, then the channel is closed;
* refusals of anonymous callers are audited through a
  :class:`~taonet_services.domain_service._limits.RefusalLimiter`: per client a few
  in full (name cut to 200 characters, a fixed reason), the rest counted and
  written as one ``secret_refused_summary`` row per client per interval; the same
  limiter counts, per principal (:func:`program_key`), the refusals a program can
  repeat for free (List and Watch under a prefix it has no right to).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog
import trio

from taonet import CodecError, ProtocolError, TaoError, auth
from taonet.audit import bounded
from taonet.channel import TaoStream
from taonet.secrets import (
    ErrorCode,
    Failure,
    Op,
    Response,
    SecretServiceError,
    decode_request,
    encode_response,
    request_body_limit,
)
from taonet.wire import END_OF_STREAM, MAX_REQUEST_HEADER, NEED_DATA, Envelope, Role
from taonet.wire import Request as EnvelopeRequest
from taonet_services.domain_service._limits import (
    RefusalLimiter,
    RefusalLimits,
    RefusalSummary,
    client_key,
)

if TYPE_CHECKING:
    from taonet_services.secret_server._service import SecretServer

__all__ = ["AnonymousChannels", "AnonymousLimits", "Bursts", "anonymous_client", "program_key"]

log = structlog.get_logger(__name__)

#: Bytes read from an anonymous channel at a time.
_CHUNK: Final = 64 * 1024
#: How long writing the pending summaries may hold up shutting down.
_FLUSH_TIMEOUT: Final = 5.0

#: The client (address key) of the anonymous request being answered in this task.
_client: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "secret_server_anonymous_client", default=None
)


def program_key(principal: auth.Prin) -> str:
    """A program's key in the refusal limiter (and its summaries): a digest of its name."""
    return "program " + hashlib.sha256(str(principal).encode()).hexdigest()[:32]


def anonymous_client() -> str:
    """The address key of the anonymous caller being answered (``"?"`` outside one)."""
    return _client.get() or "?"


class Bursts:
    """One warning when events start (after 10 s without one), then at most one a
    minute while they go on, each with ``events``, the count since the last line."""

    def __init__(self, event: str, logger: Any) -> None:
        self.event = event
        self.log = logger
        self.last = -1e18
        self.logged = -1e18
        self.since = 0

    def note(self, **fields: Any) -> None:
        now = trio.current_time()
        self.since += 1
        if now - self.last >= 10 or now - self.logged >= 60:
            self.log.warning(self.event, events=self.since, **fields)
            self.logged, self.since = now, 0
        self.last = now


@attrs.frozen(kw_only=True)
class AnonymousLimits:
    """The knobs of :class:`AnonymousChannels` (see the module docstring)."""

    max_channels: int = 32
    per_address: int = 8
    request_timeout: float = 10.0
    refusals: RefusalLimits = attrs.Factory(RefusalLimits)


@attrs.define(eq=False)
class _Held:
    client: str
    scope: trio.CancelScope
    busy: bool = False


def _remote(stream: TaoStream) -> str:
    transport = stream.tls_stream.transport
    if isinstance(transport, trio.SocketStream):
        with contextlib.suppress(OSError):
            name = transport.socket.getpeername()
            if isinstance(name, tuple) and len(name) >= 2:
                return str(name[0])
    return "?"


class AnonymousChannels:
    """The pool of anonymous channels of one server, and its refusal limiter."""

    def __init__(
        self,
        limits: AnonymousLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits: Final = limits if limits is not None else AnonymousLimits()
        self.limiter: Final = RefusalLimiter(self.limits.refusals, clock=clock)
        self._held: list[_Held] = []  # oldest first
        self._over = Bursts("anonymous_channel_refused", log)

    @property
    def held(self) -> int:
        """Anonymous channels held now."""
        return len(self._held)

    def _admit(self, client: str) -> _Held | None:
        limits = self.limits
        if sum(1 for h in self._held if h.client == client) >= limits.per_address:
            self._over.note(client=client, reason="per_address", limit=limits.per_address)
            return None
        if len(self._held) >= limits.max_channels:
            idle = next((h for h in self._held if not h.busy), None)
            if idle is None:
                self._over.note(client=client, reason="all_busy", limit=limits.max_channels)
                return None
            self._held.remove(idle)
            idle.scope.cancel()
            log.info("anonymous_channel_evicted", client=idle.client)
        held = _Held(client, trio.CancelScope())
        self._held.append(held)
        return held

    async def serve(self, server: SecretServer, stream: TaoStream) -> None:
        """Answer an anonymous channel's requests, one at a time (module docstring)."""
        client = client_key(_remote(stream))
        held = self._admit(client)
        if held is None:
            return
        token = _client.set(client)
        peer = bounded(f"anonymous from {client}", 200)
        envelope = Envelope(
            Role.SERVER, body_limit=request_body_limit, header_limit=MAX_REQUEST_HEADER
        )
        try:
            with held.scope:
                while True:
                    event: Any = None
                    with trio.move_on_after(self.limits.request_timeout):
                        event = await _next_request(envelope, stream)
                    if event is None or event is END_OF_STREAM:
                        return
                    if isinstance(event, list):  # a bad frame: its failure, then close
                        await _send(stream, event)
                        return
                    assert isinstance(event, EnvelopeRequest)
                    try:
                        Op.from_method(event.op)
                    except ProtocolError as exc:
                        await _send(stream, envelope.response(event.op, event.seq, error=exc))
                        return
                    held.busy = True
                    started = time.perf_counter()
                    response = await _answer(server, peer, event)
                    held.busy = False
                    body = encode_response(response)
                    server.observe(event.op, response, started)
                    await _send(stream, envelope.response(event.op, event.seq, body))
                    if isinstance(response, Failure) and response.code in (
                        ErrorCode.UNAUTHORIZED,
                        ErrorCode.INVALID,
                    ):
                        return  # refused: no second try on this channel
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            _client.reset(token)
            envelope.clear()
            with contextlib.suppress(ValueError):
                self._held.remove(held)

    # -- refusals -------------------------------------------------------------------

    def record_in_full(self, code: str = "unauthorized") -> bool:
        """Count an anonymous refusal; True if it is to be audited in full."""
        return self.limiter.refused(anonymous_client(), code)

    def record_program_in_full(self, principal: auth.Prin, code: str = "unauthorized") -> bool:
        """Count a program's refusal of a kind it can repeat at no cost (List, Watch with
        no right under the prefix), per principal; True if it is to be audited in full."""
        return self.limiter.refused(program_key(principal), code)

    async def run(self, server: SecretServer) -> None:
        """Write refusal summaries every interval (and what is pending when cancelled)."""
        try:
            while True:
                await trio.sleep(self.limits.refusals.summary_interval)
                await self.write_summaries(server)
        finally:
            # The batcher is being cancelled too: the last summaries go in a transaction
            # of their own.
            with trio.CancelScope(shield=True), trio.move_on_after(_FLUSH_TIMEOUT):
                for summary in self.limiter.summaries(all_now=True):
                    await _write_summary(server.audit.append, summary)

    async def write_summaries(self, server: SecretServer, *, all_now: bool = False) -> None:
        """Append the summaries that are due (all pending ones with ``all_now``)."""
        for summary in self.limiter.summaries(all_now=all_now):
            await _write_summary(server.record_audit, summary)


async def _write_summary(record: Callable[..., Awaitable[Any]], summary: RefusalSummary) -> None:
    codes = {bounded(str(k), 40): n for k, n in list(summary.codes.items())[:8]}
    try:
        await record(
            kind="secret_refused_summary",
            actor=bounded(
                summary.client
                if summary.client.startswith("program ")
                else f"anonymous from {summary.client}",
                200,
            ),
            subject="",
            outcome="summary",
            details={
                "count": str(summary.count),
                "codes": ",".join(f"{k}={n}" for k, n in codes.items()),
                "seconds": f"{max(0.0, summary.last - summary.first):.3f}",
            },
        )
    except TaoError as exc:
        log.error("audit_failed", client=summary.client, error=bounded(str(exc), 500))  # noqa: TRY400
    log.warning("refusals_summarized", client=summary.client, count=summary.count)


async def _next_request(envelope: Envelope, stream: TaoStream) -> Any:
    """The next envelope event; a list of bytes to send on a bad frame."""
    while True:
        try:
            event = envelope.next_event()
            if event is not NEED_DATA:
                return event
            envelope.body_length()  # checked before the body is read
            wanted = min(_CHUNK, envelope.wanted())
            envelope.receive_data(await stream.receive_some(wanted))
        except (CodecError, ProtocolError) as exc:
            log.info("bad_request", peer="anonymous", error=bounded(str(exc), 200))
            return envelope.answer_failure()


async def _send(stream: TaoStream, chunks: list[bytes]) -> None:
    if chunks:
        with trio.move_on_after(10):
            await stream.send_all(b"".join(chunks))


async def _answer(server: SecretServer, peer: str, event: EnvelopeRequest) -> Response:
    from taonet_services.secret_server._service import _failure_of

    try:
        request = decode_request(event.op, event.body)
    except CodecError as exc:
        return Failure(ErrorCode.INVALID, bounded(str(exc), 200))
    try:
        return await server.answer(None, peer, request)
    except SecretServiceError as exc:
        return Failure(exc.code, exc.reason)
    except TaoError as exc:
        return _failure_of(exc)
    except Exception:  # a bug (ours or a hook's): this request fails, nothing more
        log.exception("secret_request_crashed", peer=peer)
        return Failure(ErrorCode.INTERNAL, "the server failed; nothing was changed")
