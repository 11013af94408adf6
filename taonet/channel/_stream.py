"""TaoStream: a TLS 1.3 stream whose peer has proven its principal name.

Connecting (:func:`open_channel`) or accepting (:func:`serve_channels`) runs, under a
handshake timeout:

1. the TLS 1.3 handshake, both sides presenting program certificates that chain to
   the domain's policy certificate, the only trust root (a server may accept
   anonymous clients: :class:`ChannelIdentity.anonymous`);
2. the name check: the peer's certificate is read back through
   :func:`taonet.certs.verify_program_certificate` (remembered per certificate, so
   a returning peer costs a dictionary look-up), its serial is checked against the
   revoked serials, and the optional guard is asked whether the peer may
   ``"Connect"``;
3. the server's verdict: one byte, ``0x00`` to accept, or ``0x01``, a 2-byte length
   and a UTF-8 reason to refuse. The client does not wait for it: it reads it
   before the first application byte, and a refusal raises
   :class:`~taonet.AuthorizationError` with the server's reason.

A refusal is logged on both sides (``peer_denied`` where the decision was made,
``refused_by_peer`` where it arrived). After that, a TaoStream is a plain
``trio.abc.Stream``: bytes in, bytes out, with ``.peer`` telling who is on the
other side.
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import attrs
import structlog
import trio

from taonet import auth, certs
from taonet._errors import AuthenticationError, AuthorizationError, ProtocolError, TaoError
from taonet.channel._identity import ChannelIdentity
from taonet.channel._tls import TLSStream
from taonet.domain import Guard

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "Peer", "TaoStream", "open_channel", "serve_channels"]

log = structlog.get_logger(__name__)

_SSL = TLSStream

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
_ACCEPT: Final = b"\x00"
_REFUSE: Final = 0x01
_MAX_REASON: Final = 1024


@attrs.frozen
class Peer:
    """Who is on the other side of a channel."""

    #: The verified principal name; None for an anonymous client.
    principal: auth.Prin | None
    #: The verified program certificate; None for an anonymous client.
    certificate: certs.ProgramCertificate | None = attrs.field(repr=False)

    def __str__(self) -> str:
        return str(self.principal) if self.principal is not None else "anonymous"


class TaoStream(trio.abc.Stream):
    """A ``trio.abc.Stream`` over TLS 1.3 with a verified peer (see the module docstring)."""

    def __init__(self, ssl_stream: _SSL, peer: Peer, *, server_side: bool) -> None:
        self._ssl = ssl_stream
        self.peer: Final = peer
        self.server_side: Final = server_side
        self._verdict_pending = not server_side
        self._buffer = b""
        self._receiving = False
        self._closed = False

    @property
    def tls_stream(self) -> TLSStream:
        """The TLS stream underneath."""
        return self._ssl

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._ssl.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._ssl.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TaoStream")
        if self._closed:
            raise trio.ClosedResourceError("this TaoStream is closed")
        self._receiving = True
        try:
            if self._verdict_pending:
                await self._read_verdict()
            if self._buffer:
                await trio.lowlevel.checkpoint()
                n = len(self._buffer) if max_bytes is None else max_bytes
                data, self._buffer = self._buffer[:n], self._buffer[n:]
                return data
            return await self._ssl.receive_some(max_bytes)
        finally:
            self._receiving = False

    async def wait_accepted(self) -> None:
        """Wait for the server's verdict (clients only); AuthorizationError if refused."""
        if self._verdict_pending:
            await self._read_verdict()

    async def _read_verdict(self) -> None:
        # Bytes accumulate in self._buffer, so a cancelled read loses nothing.
        try:
            await self._fill(1)
            if self._buffer[:1] == _ACCEPT:
                self._verdict_pending = False
                self._buffer = self._buffer[1:]
                return
            if self._buffer[0] != _REFUSE:
                raise ProtocolError(f"the server sent an unknown verdict {self._buffer[0]:#x}")
            await self._fill(3)
            (length,) = struct.unpack(">H", self._buffer[1:3])
            await self._fill(3 + min(length, _MAX_REASON))
            reason = self._buffer[3 : 3 + length].decode("utf-8", errors="replace")
            log.warning("refused_by_peer", peer=str(self.peer), reason=reason)
            raise AuthorizationError(f"the server refused this channel: {reason}")
        except Exception:
            self._closed = True
            self._buffer = b""
            await trio.aclose_forcefully(self._ssl)
            raise

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            try:
                chunk = await self._ssl.receive_some()
            except trio.BrokenResourceError as exc:
                raise AuthenticationError(
                    f"the server refused the TLS handshake: {_tls_reason(exc)}"
                ) from exc
            if not chunk:
                raise trio.BrokenResourceError("the server closed the channel before accepting it")
            self._buffer += chunk

    async def aclose(self) -> None:
        self._closed = True
        self._buffer = b""
        await self._ssl.aclose()


def _peer_of(
    ssl_stream: _SSL,
    identity: ChannelIdentity,
    *,
    usage: str,
    revoked: Collection[int],
) -> Peer:
    der = ssl_stream.getpeercert()
    if der is None:
        return Peer(None, None)
    program = certs.verify_program_certificate(
        identity.anchor, der, now_ns=time.time_ns(), usage=usage
    )
    if program.serial in revoked:
        raise AuthenticationError(f"the peer's certificate (serial {program.serial}) is revoked")
    return Peer(program.principal, program)


def _check_guard(guard: Guard | None, peer: Peer) -> None:
    if guard is None:
        return
    if peer.principal is None:
        raise AuthorizationError("this channel does not admit anonymous peers")
    guard.check(peer.principal, "Connect")


async def _handshake(ssl_stream: _SSL, seconds: float) -> None:
    with trio.move_on_after(seconds) as scope:
        await ssl_stream.do_handshake()
    if scope.cancelled_caught:
        raise trio.TooSlowError(f"TLS handshake did not finish within {seconds} s")


async def open_channel(
    host: str,
    port: int,
    identity: ChannelIdentity,
    *,
    guard: Guard | None = None,
    revoked: Collection[int] = frozenset(),
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> TaoStream:
    """Connect to a Tao channel server and return the stream once its name is checked.

    Raises AuthenticationError (bad or revoked server certificate, TLS refusal),
    AuthorizationError (our guard refuses the server), trio.TooSlowError (handshake
    timeout) or OSError (no connection). The server's verdict on us arrives with
    the first read (see :meth:`TaoStream.wait_accepted`).
    """
    tcp = await trio.open_tcp_stream(host, port)
    ssl_stream = TLSStream(
        tcp,
        identity.client_context(),
        server_side=False,
        server_hostname=certs.CHANNEL_HOSTNAME,
    )
    try:
        try:
            await _handshake(ssl_stream, handshake_timeout)
        except trio.BrokenResourceError as exc:
            raise AuthenticationError(f"TLS handshake failed: {_tls_reason(exc)}") from exc
        peer = _peer_of(ssl_stream, identity, usage="server", revoked=revoked)
        if peer.principal is None:
            raise AuthenticationError("the server presented no certificate")
        try:
            _check_guard(guard, peer)
        except AuthorizationError as exc:
            log.warning("peer_denied", peer=str(peer), reason=str(exc))
            raise
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    log.debug("channel_established", peer=peer, side="client")
    return TaoStream(ssl_stream, peer, server_side=False)


def _tls_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or exc)


Handler = Callable[[TaoStream], Awaitable[Any]]


async def serve_channels(
    handler: Handler,
    port: int,
    identity: ChannelIdentity,
    *,
    host: str = "127.0.0.1",
    guard: Guard | None = None,
    revoked: Collection[int] = frozenset(),
    allow_anonymous: bool = False,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept Tao channels on ``host:port`` and run ``handler(stream)`` for each.

    Follows Trio's nursery start protocol: ``task_status.started`` gets the listeners
    (use port 0 and read the bound port from them). A connection that fails the
    handshake, the name check or the guard is logged and closed; a handler that
    raises is logged; the server keeps serving everyone else. ``revoked`` may be
    any collection of serial numbers, e.g. a set the caller updates from the CRL.
    """
    context = identity.server_context(allow_anonymous=allow_anonymous)
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def serve_one(tcp: trio.SocketStream) -> None:
        remote = _remote(tcp)
        ssl_stream = TLSStream(tcp, context, server_side=True)
        try:
            stream = await _accept(ssl_stream, identity, guard, revoked, handshake_timeout, remote)
        except (TaoError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.info(
                "channel_rejected",
                remote=remote,
                reason=_tls_reason(exc) if isinstance(exc, trio.BrokenResourceError) else str(exc),
            )
            await trio.aclose_forcefully(ssl_stream)
            return
        try:
            await handler(stream)
        except trio.BrokenResourceError as exc:
            log.info("channel_broken", peer=str(stream.peer), remote=remote, reason=str(exc))
        except Exception:  # one bad connection must not stop the server
            log.exception("channel_handler_failed", peer=str(stream.peer), remote=remote)
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(serve_one, listeners, task_status=task_status)


async def _accept(
    ssl_stream: _SSL,
    identity: ChannelIdentity,
    guard: Guard | None,
    revoked: Collection[int],
    seconds: float,
    remote: str,
) -> TaoStream:
    await _handshake(ssl_stream, seconds)
    peer: Peer | None = None
    try:
        peer = _peer_of(ssl_stream, identity, usage="client", revoked=revoked)
        _check_guard(guard, peer)
    except (AuthenticationError, AuthorizationError) as exc:
        log.warning("peer_denied", peer=str(peer or "?"), remote=remote, reason=str(exc))
        reason = str(exc).encode()[:_MAX_REASON]
        with trio.move_on_after(seconds):
            await ssl_stream.send_all(bytes([_REFUSE]) + struct.pack(">H", len(reason)) + reason)
        raise
    await ssl_stream.send_all(_ACCEPT)
    log.debug("channel_established", peer=peer, side="server", remote=remote)
    return TaoStream(ssl_stream, peer, server_side=True)


def _remote(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
