"""TaoStream: a TLS 1.3 stream whose peer has proven its principal name.

Connecting (:func:`open_channel`) or accepting (:func:`accept_channel`, run by
:func:`~taonet.channel.serve_channels`) runs, under a handshake timeout:

1. the TLS 1.3 handshake, both sides presenting program certificates that chain to
   the domain's policy certificate, the only trust root (a server may accept
   anonymous clients: :class:`ChannelIdentity.anonymous`);
2. the name check: the peer's certificate is read back through
   :func:`taonet.certs.verify_program_certificate` (remembered per certificate, so
   a returning peer costs a dictionary look-up), its serial is checked against the
   revoked serials (a fixed ``revoked`` collection, and the current CRL of a
   :class:`~taonet.channel.CRLSource` given as ``revocations``, which refuses every
   certificate while it holds no current CRL), and the optional guard is asked
   whether the peer may ``"Connect"``;
3. the server's verdict: one byte, ``0x00`` to accept, or ``0x01``, a 2-byte length
   and a UTF-8 reason to refuse. The client does not wait for it: it reads it
   before the first application byte, and a refusal raises
   :class:`~taonet.AuthorizationError` with the server's reason. A refusal is sent
   at once; an acceptance when the client's first request has already arrived
   with its last handshake flight (:func:`open_channel` with ``hold_finished``)
   goes out with the server's answer, in the same record and write, and otherwise
   at once too (in any case before the server waits for bytes from the client, and
   before :func:`~taonet.channel.serve_channels` closes the stream).

A refusal is logged on both sides (``peer_denied`` where the decision was made,
``refused_by_peer`` where it arrived). After that, a TaoStream is a plain
``trio.abc.Stream``: bytes in, bytes out, with ``.peer`` telling who is on the
other side. On the server, :func:`~taonet.channel.serve_channels` also closes a
stream whose peer sends no application bytes for its idle timeout. A stream opened
or served with ``revocations`` is closed when its CRL comes to list either end's
serial (see ``taonet.channel._revocation``): its reads and writes then raise
:class:`~taonet.channel.ChannelRevokedError`.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import struct
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Final

import attrs
import trio

from taonet import auth, certs
from taonet._edges import map_os_errors
from taonet._errors import AuthenticationError, AuthorizationError, ProtocolError
from taonet._log import bounded, get_logger
from taonet.channel._identity import ChannelIdentity
from taonet.channel._tls import READ_SIZE, TLSStream
from taonet.domain import Guard

if TYPE_CHECKING:
    from taonet.channel._revocation import ChannelRevokedError, CRLSource

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "Peer", "TaoStream", "accept_channel", "open_channel"]

log = get_logger(__name__)

_SSL = TLSStream

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
_ACCEPT: Final = b"\x00"
_REFUSE: Final = 0x01
_MAX_REASON: Final = 1024
#: A connection that ended before the server's verdict (no accept byte, no refusal):
#: it stopped, timed out or was cut, possibly after its name checks passed (an early
#: request held the accept byte for its answer, e.g. a long poll).
_NO_VERDICT: Final = (
    "the connection ended before the server's verdict on the channel"
    " (it stopped, timed out or was cut off)"
)
# A server's stream sends at most this much at a time, so that a long send to a peer
# that reads shows progress (and one to a peer that reads nothing shows none).
_SEND_CHUNK: Final = 64 * 1024


@attrs.frozen
class Peer:
    """Who is on the other side of a channel."""

    #: The verified principal name; None for an anonymous client.
    principal: auth.Prin | None
    #: The verified program certificate; None for an anonymous client.
    certificate: certs.ProgramCertificate | None = attrs.field(repr=False)

    def __str__(self) -> str:
        return str(self.principal) if self.principal is not None else "anonymous"


class _Activity:
    """When a server's stream last heard from its peer and last made progress sending.

    ``sent`` moves when a send or a wait to send starts, whenever the kernel has
    taken another chunk of it (at most ``_SEND_CHUNK`` bytes), and when it ends: a
    send blocked on a peer that reads nothing stops moving it.

    ``scope``'s deadline becomes the idle timeout's: hearing from the peer keeps it
    between ``idle_timeout`` and ``idle_timeout + slack`` after the latest bytes
    (moving a deadline costs far more than reading the clock, so it moves at most
    once per ``slack``, a second or less); without an idle timeout, no deadline.
    """

    __slots__ = ("_moved", "_slack", "heard", "idle_timeout", "scope", "sent")

    def __init__(self, scope: trio.CancelScope, idle_timeout: float | None) -> None:
        self.scope: Final = scope
        self.idle_timeout: Final = idle_timeout
        self._slack: Final = min(1.0, idle_timeout / 64) if idle_timeout is not None else 0.0
        self._moved = -math.inf
        self.sent = trio.current_time()
        if idle_timeout is None:
            scope.deadline = math.inf
        self.heard_from_peer()

    def heard_from_peer(self) -> None:
        self.heard = now = trio.current_time()
        if self.idle_timeout is not None and now - self._moved >= self._slack:
            self.scope.deadline = now + self.idle_timeout + self._slack
            self._moved = now

    def sent_to_peer(self) -> None:
        self.sent = trio.current_time()


class TaoStream(trio.abc.Stream):
    """A ``trio.abc.Stream`` over TLS 1.3 with a verified peer (see the module docstring).

    A stream handed to a :func:`~taonet.channel.serve_channels` handler carries the
    server's idle timeout (:attr:`idle_timeout`): every ``receive_some`` that returns
    bytes from the peer pushes the handler's deadline that far ahead (up to a second
    more), so a peer that sends nothing for that long has its handler cancelled
    and its connection closed, whatever the handler was waiting for. (At its
    connection cap the server may also close one sooner, while the handler is
    blocked reading from a peer quiet for a while, or blocked sending to a peer
    that has taken no bytes for as long.)
    """

    def __init__(
        self,
        ssl_stream: _SSL,
        peer: Peer,
        *,
        server_side: bool,
        local: certs.ProgramCertificate | None = None,
        revocations: CRLSource | None = None,
    ) -> None:
        self._ssl = ssl_stream
        self.peer: Final = peer
        self.server_side: Final = server_side
        # This side's certificate, and the CRL source that may close this stream.
        self._local: Final = local
        self._revocations: Final = revocations
        self._revoked: ChannelRevokedError | None = None
        self._verdict_pending = not server_side
        # Server side: the accept byte, not sent yet (see the module docstring).
        self._accept_unsent = False
        self._buffer = b""
        self._receiving = False
        self._sending = False
        self._closed = False
        self._activity: _Activity | None = None

    @property
    def tls_stream(self) -> TLSStream:
        """The TLS stream underneath."""
        return self._ssl

    @property
    def idle_timeout(self) -> float | None:
        """Seconds without bytes from the peer before the server closes it (None: never)."""
        return self._activity.idle_timeout if self._activity is not None else None

    def _track_activity(self, scope: trio.CancelScope, idle_timeout: float | None) -> _Activity:
        """Record activity from now on; cancel ``scope`` after ``idle_timeout`` of silence.

        This replaces ``scope``'s deadline (None: it has none from now on).
        """
        self._activity = _Activity(scope, idle_timeout)
        return self._activity

    @property
    def _waiting_for_peer(self) -> bool:
        """Whether a task is reading from the peer or sending to it (and may be blocked)."""
        return self._receiving or self._sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._check_revoked()
        try:
            await self._send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._raise_why_broken(exc)
            raise

    async def _send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._accept_unsent:
            # The accept byte goes out with the first answer, in the same write.
            self._accept_unsent = False
            if data:
                self._ssl.queue(_ACCEPT)
            else:
                data = _ACCEPT
        activity = self._activity
        if activity is None:
            await self._ssl.send_all(data)
            return
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TaoStream")
        self._sending = True
        try:
            activity.sent_to_peer()
            if len(data) <= _SEND_CHUNK:
                await self._ssl.send_all(data)
            else:
                view = memoryview(data)
                for start in range(0, len(view), _SEND_CHUNK):
                    await self._ssl.send_all(view[start : start + _SEND_CHUNK])
                    activity.sent_to_peer()
        finally:
            self._sending = False
        activity.sent_to_peer()

    async def wait_send_all_might_not_block(self) -> None:
        await self._check_revoked()
        try:
            await self._wait_send_all_might_not_block()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._raise_why_broken(exc)
            raise

    async def _wait_send_all_might_not_block(self) -> None:
        activity = self._activity
        if activity is None:
            await self._ssl.wait_send_all_might_not_block()
            return
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TaoStream")
        self._sending = True
        try:
            activity.sent_to_peer()
            await self._ssl.wait_send_all_might_not_block()
        finally:
            self._sending = False
        activity.sent_to_peer()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TaoStream")
        await self._check_revoked()
        if self._closed:
            await trio.lowlevel.checkpoint()
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
            if self._accept_unsent:
                # A request that came with the handshake is read before the accept
                # byte is sent (it then goes out with the answer); waiting for one,
                # the client hears the accept byte first.
                try:
                    ready = self._ssl.receive_nowait(max_bytes or READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    await self._raise_why_broken(exc)
                    raise
                if ready is not None:
                    await trio.lowlevel.checkpoint()
                    if ready and self._activity is not None:
                        self._activity.heard_from_peer()
                    return ready
                self._accept_unsent = False
                self._ssl.queue(_ACCEPT)
            try:
                received = await self._ssl.receive_some(max_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._raise_why_broken(exc)
                raise
            if received and self._activity is not None:
                self._activity.heard_from_peer()
            return received
        finally:
            self._receiving = False

    async def _check_revoked(self) -> None:
        # A checkpoint before raising: a handler that retries on BrokenResourceError
        # in a loop must still let the rest of the server run (and be cancelled).
        if self._revoked is not None:
            await trio.lowlevel.checkpoint()
            raise self._revoked_error()

    def _revoked_error(self) -> ChannelRevokedError:
        assert self._revoked is not None
        return type(self._revoked)(
            str(self._revoked), serial=self._revoked.serial, own=self._revoked.own
        )

    async def _revoke(self, error: ChannelRevokedError) -> None:
        """Close this stream for ``error``: the connection is dropped without close_notify.

        Tasks blocked on it, and every later call, raise a copy of ``error``.
        """
        if self._revoked is None:
            self._revoked = error
        await trio.aclose_forcefully(self._ssl.transport)

    async def _raise_why_broken(self, exc: BaseException) -> None:
        """Raise ChannelRevokedError if a revocation is why the transport failed with ``exc``.

        A client stream whose server cut it asks its CRL source for a fresh CRL (see
        :meth:`CRLSource._explain`); a server's stream looks at the CRL held. Otherwise
        this returns and ``exc`` stands.
        """
        revocations = self._revocations
        if (
            self._revoked is None
            and not self._closed
            and revocations is not None
            and isinstance(exc, trio.BrokenResourceError)
        ):
            # A server only looks at the CRL it holds: a peer that breaks its
            # connection must not make it fetch one.
            self._revoked = await revocations._explain(self, fetch=not self.server_side)
        if self._revoked is not None:
            raise self._revoked_error() from exc

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
            log.warning(
                "refused_by_peer", peer=bounded(str(self.peer)), reason=bounded(reason, 1024)
            )
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
                if isinstance(exc.__cause__, ssl.SSLEOFError):
                    # Cut without a TLS alert (the server stopped, timed out, was
                    # killed): no refusal, and no verdict either.
                    raise trio.BrokenResourceError(_NO_VERDICT) from exc
                raise AuthenticationError(
                    f"the server refused the TLS handshake: {_tls_reason(exc)}"
                ) from exc
            if not chunk:
                raise trio.BrokenResourceError(_NO_VERDICT)
            self._buffer += chunk

    async def _settle_accept(self) -> None:
        """Send the accept byte if it is still held for an answer (server side; see
        the module docstring), for a handler that ends without answering."""
        if self._accept_unsent:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send_all(b"")

    async def aclose(self) -> None:
        if self._accept_unsent:
            # It goes out with the close_notify (when the close is not forceful).
            self._accept_unsent = False
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                self._ssl.queue(_ACCEPT)
        self._closed = True
        self._buffer = b""
        if self._revocations is not None:
            self._revocations._untrack(self)
        await self._ssl.aclose()


def _peer_of(
    ssl_stream: _SSL,
    identity: ChannelIdentity,
    *,
    usage: str,
    revoked: Collection[int],
    revocations: CRLSource | None,
) -> Peer:
    der = ssl_stream.getpeercert()
    if der is None:
        return Peer(None, None)
    program = certs.verify_program_certificate(
        identity.anchor, der, now_ns=time.time_ns(), usage=usage
    )
    if program.serial in revoked:
        raise AuthenticationError(f"the peer's certificate (serial {program.serial}) is revoked")
    if revocations is not None:
        try:
            revocations.check(program.serial)
        except AuthenticationError as exc:
            raise AuthenticationError(f"the peer's {exc}") from None
    return Peer(program.principal, program)


def _check_guard(guard: Guard | None, peer: Peer) -> None:
    if guard is None:
        return
    if peer.principal is None:
        raise AuthorizationError("this channel does not admit anonymous peers")
    guard.check(peer.principal, "Connect")


async def _handshake(ssl_stream: _SSL, seconds: float, *, hold_last_flight: bool = False) -> None:
    with trio.move_on_after(seconds) as scope:
        await ssl_stream.do_handshake(hold_last_flight=hold_last_flight)
    if scope.cancelled_caught:
        raise trio.TooSlowError(f"TLS handshake did not finish within {seconds} s")


async def open_channel(
    host: str,
    port: int,
    identity: ChannelIdentity,
    *,
    guard: Guard | None = None,
    revoked: Collection[int] = frozenset(),
    revocations: CRLSource | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    hold_finished: bool = False,
) -> TaoStream:
    """Connect to a Tao channel server and return the stream once its name is checked.

    Raises AuthenticationError (bad or revoked server certificate, TLS refusal),
    AuthorizationError (our guard refuses the server) or ProtocolError (no
    connection: refused, no route, unknown name; or no handshake within
    ``handshake_timeout``), the original OSError or trio.TooSlowError as its
    ``__cause__``. The server's verdict on us arrives with the first read (see
    :meth:`TaoStream.wait_accepted`).

    ``revocations`` (a :class:`~taonet.channel.CRLSource`) refuses a server whose
    serial it lists, or every server while it has no current CRL, and closes the
    stream later if its CRL comes to list the server's serial or ours: reads and
    writes then raise :class:`~taonet.channel.ChannelRevokedError`, as they do when
    the server cuts the channel and a fresh CRL lists either serial.
    ``revoked`` is a fixed collection of serials to refuse (checked only here).

    With ``hold_finished`` the handshake's last flight (our certificate and
    Finished) waits for the stream's first send, receive or close: a request sent
    at once (after the checks above, and any of the caller's own) then travels with
    it, in one write and one segment, and the server may answer it together with
    its verdict. The server completes the handshake only when that flight arrives,
    so send, receive or close promptly.
    """
    where = f"{host}:{port}"
    with map_os_errors(to=ProtocolError, what=f"cannot reach the channel server at {where}"):
        tcp = await trio.open_tcp_stream(host, port)
    ssl_stream = TLSStream(
        tcp,
        identity.client_context(),
        server_side=False,
        server_hostname=certs.CHANNEL_HOSTNAME,
    )
    try:
        with map_os_errors(to=ProtocolError, what=f"no channel handshake with {where}"):
            try:
                await _handshake(ssl_stream, handshake_timeout, hold_last_flight=hold_finished)
            except trio.BrokenResourceError as exc:
                raise AuthenticationError(f"TLS handshake failed: {_tls_reason(exc)}") from exc
        peer = _peer_of(
            ssl_stream, identity, usage="server", revoked=revoked, revocations=revocations
        )
        if peer.principal is None:
            raise AuthenticationError("the server presented no certificate")
        try:
            _check_guard(guard, peer)
        except AuthorizationError as exc:
            log.warning("peer_denied", peer=bounded(str(peer)), reason=bounded(str(exc), 1024))
            raise
    except BaseException:
        await trio.aclose_forcefully(ssl_stream)
        raise
    log.debug("channel_established", peer=bounded(str(peer)), side="client")
    stream = TaoStream(
        ssl_stream,
        peer,
        server_side=False,
        local=identity.certificate,
        revocations=revocations,
    )
    if revocations is not None:
        await revocations._track(stream)
    return stream


def _tls_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or exc)


async def accept_channel(
    ssl_stream: _SSL,
    identity: ChannelIdentity,
    *,
    guard: Guard | None,
    revoked: Collection[int],
    remote: str,
    revocations: CRLSource | None = None,
) -> TaoStream:
    """The server's half of the channel handshake (the caller bounds it in time).

    Runs the TLS handshake and the name check, and sends the verdict: the accept
    byte, or a refusal with its reason before raising AuthenticationError or
    AuthorizationError.
    """
    await ssl_stream.do_handshake()
    peer: Peer | None = None
    try:
        peer = _peer_of(
            ssl_stream, identity, usage="client", revoked=revoked, revocations=revocations
        )
        _check_guard(guard, peer)
    except (AuthenticationError, AuthorizationError) as exc:
        log.warning(
            "peer_denied",
            peer=bounded(str(peer or "?")),
            remote=remote,
            reason=bounded(str(exc), 1024),
        )
        reason = str(exc).encode()[:_MAX_REASON]
        await ssl_stream.send_all(bytes([_REFUSE]) + struct.pack(">H", len(reason)) + reason)
        raise
    stream = TaoStream(
        ssl_stream,
        peer,
        server_side=True,
        local=identity.certificate,
        revocations=revocations,
    )
    if ssl_stream.data_arrived():
        stream._accept_unsent = True  # it goes with the answer (module docstring)
    else:
        await ssl_stream.send_all(_ACCEPT)
    log.debug("channel_established", peer=bounded(str(peer)), side="server", remote=remote)
    return stream
