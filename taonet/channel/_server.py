"""serve_channels: accept Tao channels on TCP, within limits an attacker cannot lift.

Every connection holds a file descriptor and a task until it ends, so the server
bounds how many it holds and for how long:

* ``handshake_timeout`` (default 10 s): the TLS handshake, the name check and the
  verdict must be done within it, or the connection is closed;
* ``idle_timeout`` (default 300 s): a handler's peer that sends no application
  bytes for that long (up to a second more) has its handler cancelled and its
  connection closed (see
  :class:`TaoStream`); ``None`` turns this off. Five minutes lets a client keep a
  channel open between requests minutes apart, while a silent peer cannot hold a
  slot for longer; under pressure, eviction (below) frees slots much sooner.
* ``max_connections`` (default 1024, or three quarters of the process's soft
  ``RLIMIT_NOFILE`` if that is less, so that the server's own connections never
  exhaust the descriptors): connections held at once, handshakes and handlers
  alike. At the cap the server stops accepting, so new connections wait in the
  kernel's listen queue and are taken in order; and it makes room by closing a
  connection it has waited on: first the handshake it has waited on longest, once
  that wait reaches 2 s (anyone can open a handshake, and none has proved who it
  is); only when no handshake can go, the authenticated peer whose handler has waited
  on it longest (blocked reading from it, or blocked sending to it while it reads
  nothing), once it has neither sent anything nor taken anything for 30 s. A
  handler at work (computing, or sending to a peer that reads) is never evicted.
  Closing new connections at once instead would turn a burst of legitimate clients
  into failures, and waiting alone would let silent peers keep a real client out
  until their idle timeout.
* ``max_per_address`` (default 128): connections held at once from one address
  (an IPv6 address counts by its /64, the block one host usually gets). One over
  it is closed at once, before any TLS, so one address cannot take the whole cap.

When the process runs out of file descriptors (or the kernel of memory), accept
fails; the server then logs one line (``accept_failing``), retries after a short
back-off that doubles from 10 ms up to 1 s (sooner when one of its own connections
closes), and resumes accepting as soon as it can. Reaching the cap
(``connection_limit_reached``), evicting (``connection_evicted``) and refusing an
address over its share (``address_limit_reached``) are logged the same way: one
line when a burst starts (after 10 s without one), then at most one a minute while
it lasts, each with ``events``, the count since the previous line.

Each connection's task binds a random ``conn_id`` and the ``remote`` address to its
log context (:func:`taonet._log.bind_context`), and the verified ``peer`` once the
handshake is done, so every line logged for that connection, by the server or by the
handler and the tasks it starts, carries them. ``on_handshake`` (for a service's
metrics) hears how each handshake ended, as a :class:`HandshakeOutcome`.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import math
import os
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import trio

from taonet._bursts import Bursts
from taonet._errors import TaoError
from taonet._log import bind_context, bounded, get_logger, new_conn_id
from taonet.channel._identity import ChannelIdentity
from taonet.channel._revocation import ChannelRevokedError, CRLSource
from taonet.channel._stream import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    TaoStream,
    _Activity,
    _tls_reason,
    accept_channel,
)
from taonet.channel._tls import TLSStream
from taonet.domain import Guard

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_ADDRESS",
    "HandshakeOutcome",
    "default_max_connections",
    "serve_channels",
]

log = get_logger(__name__)

#: Seconds without application bytes from a peer before its connection is closed.
DEFAULT_IDLE_TIMEOUT: Final = 300.0
#: Connections a server holds at once, unless the file-descriptor limit is lower.
DEFAULT_MAX_CONNECTIONS: Final = 1024
#: Connections a server holds at once from one address (IPv6: one /64).
DEFAULT_MAX_PER_ADDRESS: Final = 128

# accept(2) errors that say the process or the system is out of a resource.
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_FIRST_BACKOFF: Final = 0.01
_MAX_BACKOFF: Final = 1.0
# At the cap, a connection whose handshake has waited this long on its peer may be
# closed to make room. Handshakes go first: anyone can open them, and none has proved
# who it is.
_EVICT_AFTER: Final = 2.0
# An established (authenticated) peer is closed to make room only when no handshake can
# be, and only once its handler has waited this long on it without a byte either way:
# otherwise raw connections that never start TLS would push real clients out of the
# channels they hold between requests.
_EVICT_ESTABLISHED_AFTER: Final = 30.0
# A handler whose channel was closed for a revocation has this long to notice (its
# reads and writes fail at once) before it is cancelled.
_REVOKED_GRACE: Final = 5.0

Handler = Callable[[TaoStream], Awaitable[Any]]


class HandshakeOutcome(enum.Enum):
    """How one handshake that ``serve_channels`` accepted ended (a fixed set: what a
    metric may be labelled with)."""

    #: The channel was established and handed to the handler.
    OK = "ok"
    #: The peer's certificate, name, guard or revocation status was refused.
    REFUSED = "refused"
    #: TLS failed or the connection broke before the channel was established.
    FAILED = "failed"
    #: Not done within ``handshake_timeout``.
    TIMEOUT = "timeout"
    #: Closed to make room at the connection cap while it waited on its peer.
    EVICTED = "evicted"


#: ``on_handshake(outcome)``: called once per handshake that ended (not for one cut
#: short by the server stopping). It must not block or raise.
HandshakeHook = Callable[[HandshakeOutcome], None]


def default_max_connections() -> int:
    """The default ``max_connections``: 1024, or 3/4 of the soft ``RLIMIT_NOFILE`` if less.

    The quarter left over is for everything else the process opens (listeners, log
    and database files, the handlers' own connections).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return DEFAULT_MAX_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft * 3 // 4))


async def serve_channels(
    handler: Handler,
    port: int,
    identity: ChannelIdentity,
    *,
    host: str = "127.0.0.1",
    guard: Guard | None = None,
    revoked: Collection[int] = frozenset(),
    revocations: CRLSource | None = None,
    allow_anonymous: bool = False,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    max_connections: int | None = None,
    max_per_address: int | None = DEFAULT_MAX_PER_ADDRESS,
    on_handshake: HandshakeHook | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept Tao channels on ``host:port`` and run ``handler(stream)`` for each.

    Follows Trio's nursery start protocol: ``task_status.started`` gets the listeners
    (use port 0 and read the bound port from them). A connection that fails the
    handshake, the name check or the guard is logged and closed; a handler that
    raises is logged; the server keeps serving everyone else.

    ``revocations`` (a :class:`~taonet.channel.CRLSource`, e.g. a running
    :class:`taonet.provision.RevocationWatcher`) refuses handshakes from serials
    its current CRL lists, and every certificate while it has no current CRL; an
    open channel whose peer's serial (or this server's) it comes to list, or that
    it can no longer check, is closed and logged (``channel_revoked``), and the
    handler's reads and writes on it raise
    :class:`~taonet.channel.ChannelRevokedError` (it is cancelled if it has not
    returned 5 s later). ``revoked`` (kept for compatibility) is a fixed collection
    of serial numbers checked at handshakes only.

    The limits (see the module docstring): ``handshake_timeout`` seconds for the
    whole handshake; ``idle_timeout`` seconds without bytes from the peer before
    its handler is cancelled (None: no limit); ``max_connections`` held at once
    (None: :func:`default_max_connections`), beyond which connections wait to be
    accepted while the quietest peer is evicted; ``max_per_address`` from one
    address (None: no limit), beyond which they are closed at once. ValueError for
    a limit that is not positive.

    Logging: each connection's task binds ``conn_id`` (random, 8 hex digits) and
    ``remote`` to its log context, and ``peer`` (the verified principal, or
    ``anonymous``) once the handshake is done; the handler runs in that task, so its
    lines (and those of the tasks it starts) carry them too. ``on_handshake``, if
    given, is called with the :class:`HandshakeOutcome` of each handshake.
    """
    if not handshake_timeout > 0:
        raise ValueError(f"handshake_timeout must be positive, not {handshake_timeout}")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be positive or None, not {idle_timeout}")
    for name, value in (("max_connections", max_connections), ("max_per_address", max_per_address)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 or None, not {value}")
    context = identity.server_context(allow_anonymous=allow_anonymous)
    limits = _Limits(
        max_connections if max_connections is not None else default_max_connections(),
        max_per_address,
    )

    async def serve_one(conn: _Conn, tcp: trio.SocketStream) -> None:
        # One cancel scope per connection: its deadline is first the handshake's,
        # then the idle timeout's; eviction cancels it.
        # This task's log context: every line of this connection carries it.
        bind_context(conn_id=new_conn_id(), remote=conn.remote)
        ssl_stream = TLSStream(tcp, context, server_side=True)
        stream: TaoStream | None = None
        try:
            conn.scope.deadline = trio.current_time() + handshake_timeout
            with conn.scope:
                try:
                    stream = await accept_channel(
                        ssl_stream,
                        identity,
                        guard=guard,
                        revoked=revoked,
                        revocations=revocations,
                        remote=conn.remote,
                    )
                except (TaoError, trio.BrokenResourceError, OSError) as exc:
                    broken = isinstance(exc, trio.BrokenResourceError)
                    reason = _tls_reason(exc) if broken else str(exc)
                    log.info("channel_rejected", remote=conn.remote, reason=bounded(reason, 1024))
                    if on_handshake is not None:
                        refused = isinstance(exc, TaoError)
                        on_handshake(
                            HandshakeOutcome.REFUSED if refused else HandshakeOutcome.FAILED
                        )
                    return
                bind_context(peer=bounded(str(stream.peer)))
                if on_handshake is not None:
                    on_handshake(HandshakeOutcome.OK)
                conn.stream = stream
                conn.activity = stream._track_activity(conn.scope, idle_timeout)
                if revocations is not None:
                    await revocations._track(stream, conn.revoked)
                await _run_handler(handler, stream, conn.remote)
                await stream._settle_accept()
            evicted_handshake = conn.evicted and stream is None
            if conn.scope.cancelled_caught and evicted_handshake and on_handshake is not None:
                on_handshake(HandshakeOutcome.EVICTED)
            if conn.scope.cancelled_caught and not conn.evicted and not conn.was_revoked:
                if stream is None:
                    reason = f"no handshake within {handshake_timeout} s"
                    log.info("channel_rejected", remote=conn.remote, reason=bounded(reason, 1024))
                    if on_handshake is not None:
                        on_handshake(HandshakeOutcome.TIMEOUT)
                else:
                    log.info("channel_idle", peer=bounded(str(stream.peer)), remote=conn.remote)
        finally:
            if revocations is not None and stream is not None:
                revocations._untrack(stream)
            await trio.aclose_forcefully(stream if stream is not None else ssl_stream)
            # Only now is the descriptor closed: the slot can go to someone else.
            limits.release(conn)

    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, limits, nursery, serve_one)
            task_status.started(listeners)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def _run_handler(handler: Handler, stream: TaoStream, remote: str) -> None:
    try:
        await handler(stream)
    except ChannelRevokedError:
        pass  # logged as channel_revoked when it was closed
    except trio.BrokenResourceError as exc:
        log.info(
            "channel_broken",
            peer=bounded(str(stream.peer)),
            remote=remote,
            reason=bounded(str(exc), 1024),
        )
    except Exception:  # one bad connection must not stop the server
        log.exception("channel_handler_failed", peer=bounded(str(stream.peer)), remote=remote)


class _Conn:
    """One connection the server holds: where from, and whether it waits on its peer."""

    __slots__ = (
        "activity",
        "address",
        "evicted",
        "remote",
        "scope",
        "since",
        "stream",
        "was_revoked",
    )

    def __init__(self, address: str, remote: str) -> None:
        self.address: Final = address
        self.remote: Final = remote
        self.scope: Final = trio.CancelScope()
        self.since: Final = trio.current_time()
        self.stream: TaoStream | None = None
        self.activity: _Activity | None = None
        self.evicted = False
        self.was_revoked = False

    def revoked(self, error: ChannelRevokedError) -> None:
        """The CRL source closed this connection's channel: log it, bound the handler."""
        self.was_revoked = True
        peer = self.stream.peer if self.stream is not None else "?"
        log.warning(
            "channel_revoked",
            peer=bounded(str(peer)),
            serial=error.serial,
            own=error.own,
            remote=self.remote,
            reason=bounded(str(error), 1024),
        )
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + _REVOKED_GRACE)

    def quiet_for(self, now: float) -> float | None:
        """How long the server has been waiting on this peer (None: it is busy itself).

        A handler reading or sending waits on its peer since the latest progress
        either way: bytes heard, or bytes the kernel took from a send.
        """
        if self.stream is None or self.activity is None:
            return now - self.since  # the handshake waits on the peer
        if not self.stream._waiting_for_peer:
            return None
        return now - max(self.activity.heard, self.activity.sent)


class _Limits:
    """The server's connection slots, in total and per address."""

    def __init__(self, max_connections: int, max_per_address: int | None) -> None:
        self.max_connections: Final = max_connections
        self.max_per_address: Final = max_per_address
        self.slots: Final = trio.Semaphore(max_connections)
        self.per_address: dict[str, int] = {}
        self.conns: set[_Conn] = set()
        self.evicting = 0
        #: Set (and replaced) whenever a connection ends.
        self.freed = trio.Event()
        self.full: Final = Bursts("connection_limit_reached", log)
        self.evicted: Final = Bursts("connection_evicted", log)
        self.over_address: Final = Bursts("address_limit_reached", log)
        self.accept_failing: Final = Bursts("accept_failing", log)

    @property
    def open(self) -> int:
        return self.max_connections - self.slots.value

    async def take_slot(self) -> None:
        """Wait for a free slot, making one from the quietest peer if it is quiet enough.

        Meanwhile new connections queue in the kernel.
        """
        try:
            self.slots.acquire_nowait()
        except trio.WouldBlock:
            self.full.note(limit=self.max_connections)
        else:
            return
        while True:
            # One eviction at a time: look again once it has had time to finish.
            recheck = self._evict() if not self.evicting else _EVICT_AFTER
            with trio.move_on_after(recheck):
                await self.slots.acquire()
                return

    def _evict(self) -> float:
        """Close the quietest handshake (quiet _EVICT_AFTER) or, failing that, the quietest
        established peer (quiet _EVICT_ESTABLISHED_AFTER); else say when to look again."""
        now = trio.current_time()
        quietest: _Conn | None = None
        wait = _EVICT_ESTABLISHED_AFTER
        # Any handshake quiet enough comes before every established peer; within each,
        # the quietest first.
        best = (False, 0.0)
        for conn in self.conns:
            quiet = conn.quiet_for(now)
            if quiet is None:
                continue
            handshake = conn.stream is None
            over = quiet - (_EVICT_AFTER if handshake else _EVICT_ESTABLISHED_AFTER)
            if over < 0:
                wait = min(wait, -over)
            elif quietest is None or (handshake, quiet) > best:
                quietest, best = conn, (handshake, quiet)
        if quietest is None:
            return wait
        longest = quietest.quiet_for(now) or 0.0
        self.evicted.note(
            remote=quietest.remote,
            quiet_seconds=round(longest, 3),
            handshake=quietest.stream is None,
        )
        self.evicting += 1
        quietest.evicted = True
        quietest.scope.cancel()
        return math.inf

    def admit(self, address: str, remote: str) -> _Conn | None:
        """A record for a connection from ``address``, or None if it is one too many."""
        held = self.per_address.get(address, 0)
        if self.max_per_address is not None and held >= self.max_per_address:
            return None
        self.per_address[address] = held + 1
        conn = _Conn(address, remote)
        self.conns.add(conn)
        return conn

    def release(self, conn: _Conn | None) -> None:
        """A connection ended (``conn`` None: it was never admitted)."""
        if conn is not None:
            self.conns.discard(conn)
            held = self.per_address[conn.address] - 1
            if held:
                self.per_address[conn.address] = held
            else:
                del self.per_address[conn.address]
            if conn.evicted:
                self.evicting -= 1
        self.slots.release()
        if self.freed.statistics().tasks_waiting:
            self.freed.set()
            self.freed = trio.Event()


async def _accept_loop(
    listener: trio.SocketListener,
    limits: _Limits,
    nursery: trio.Nursery,
    serve_one: Callable[[_Conn, trio.SocketStream], Awaitable[None]],
) -> None:
    while True:
        await limits.take_slot()
        try:
            tcp = await _accept(listener, limits)
        except BaseException:
            limits.release(None)
            raise
        address, remote = _peer_address(tcp)
        conn = limits.admit(address, remote) if address is not None else None
        if conn is None:
            if address is not None:
                limits.over_address.note(address=address, limit=limits.max_per_address)
            await trio.aclose_forcefully(tcp)
            limits.release(None)
            continue
        nursery.start_soon(serve_one, conn, tcp)


async def _accept(listener: trio.SocketListener, limits: _Limits) -> trio.SocketStream:
    """Accept one connection, waiting out a shortage of descriptors or memory."""
    failures = 0
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            limits.accept_failing.note(
                error=errno.errorcode.get(exc.errno, str(exc.errno)),
                reason=os.strerror(exc.errno),
                connections=limits.open,
            )
        # Back off, but try again as soon as one of our own connections ends.
        delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** min(failures, 16))
        failures += 1
        with trio.move_on_after(delay):
            await limits.freed.wait()


def _peer_address(tcp: trio.SocketStream) -> tuple[str | None, str]:
    """The address a connection counts against (None if the peer is gone) and host:port."""
    try:
        name = tcp.socket.getpeername()
    except OSError:
        return None, "?"
    host, port = str(name[0]), name[1]
    return address_key(host), f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_key(host: str) -> str:
    """What a peer's address counts as: IPv4 as is, IPv6 by its /64 (IPv4-mapped: as IPv4)."""
    if ":" not in host:  # IPv4 (getpeername's dotted quad) or a name: as is
        return host
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
