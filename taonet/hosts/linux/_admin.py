"""The Linux host's admin socket, server side: :func:`serve_admin`.

The wire format is in :mod:`taonet.hosts.linux._admin_wire`. :func:`serve_admin` binds the
unix socket, serves each connection in its own task (requests on one connection in
order) and removes the socket file when cancelled. The caller of each connection is
the kernel's ``SO_PEERCRED`` and ``SO_PEERGROUPS`` (its supplementary groups when it
connected, all of them: a connection whose groups the kernel cannot tell is refused,
since a group may deny what others are allowed). Every file descriptor received is
either handed to the backend inside a :class:`~taonet.hosts.linux._hosted.StartRequest` or closed.

Given a ``stop`` event, :func:`serve_admin` closes gracefully once it is set: it stops
accepting and removes the socket file at once, closes the connections that wait for
a request, lets each connection that is working on a request send its answer (the
answer to the shutdown request that set ``stop``, say), and returns when they are
done or after ``request_timeout`` seconds, whichever comes first.

Limits, so that no local user can take the host down through its admin socket (each
is a keyword argument of :func:`serve_admin`, defaulting to the constant):

* At most :data:`MAX_CONNECTIONS` (256) connections at once, and at most
  :data:`MAX_CONNECTIONS_PER_UID` (32) from one peer uid; root has the same per-uid
  cap as any other uid, counted for itself. Users other than root and the host's
  owner (the uid this server runs as) may hold at most ``MAX_CONNECTIONS -
  MAX_CONNECTIONS_PER_UID`` (224) between them, so that however many local users
  fill their shares, root and the owner can still reach the host (to stop it, say).
  A connection over a limit is closed as soon as it is accepted, before anything is
  read from it, and is not counted. ``admin_connection_refused`` is logged once when
  a burst of refusals starts (after 10 s without one), then at most once a minute
  while it lasts, each line with ``events`` (the refusals since the previous line)
  and the latest refusal's caller and reason: a flood of connections cannot flood
  the log.
* A request's header frame is at most
  :data:`~taonet.hosts.linux._admin_wire.ADMIN_MAX_HEADER` bytes and its body at most
  :data:`~taonet.hosts.linux._admin_wire.ADMIN_MAX_FRAME`; a frame over its limit is refused
  as soon as its length is in, before anything is allocated for it. Once the first
  byte of a request has arrived, the rest of it (both frames) must arrive within
  :data:`REQUEST_TIMEOUT` (10 s), or the connection is dropped. A connection that
  sends no request for :data:`IDLE_TIMEOUT` (300 s) is closed
  (``admin_connection_idle``); one waiting for an answer (``wait``) is not idle.
* A response's frames are at most
  :data:`~taonet.hosts.linux._admin_wire.ADMIN_MAX_RESPONSE` bytes each; a bigger answer
  becomes a HostError answer.
* A backend failure that is not a :class:`~taonet.TaoError` (a bug) is logged as
  ``admin_request_failed`` (its type and message) and answered as
  ``HostError: internal error in the host (<ExceptionType>)``; the connection and the
  server carry on. A BaseException (``trio.Cancelled``, KeyboardInterrupt) is not
  caught.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import functools
import itertools
import os
import socket
import stat
import struct
from array import array
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final

import trio

from taonet import auth
from taonet._bursts import Bursts
from taonet._errors import (
    CodecError,
    HostError,
    ProtocolError,
    TaoError,
)
from taonet._log import get_logger
from taonet.hosts.linux._admin_wire import (
    _T,
    ADMIN_MAX_RESPONSE,
    ADMIN_OPS,
    HOST_NAME,
    KILL,
    LIST,
    MAX_STDIO_FDS,
    SHUTDOWN,
    START,
    STOP,
    WAIT,
    _check_args,
    _check_env,
    _check_string,
    _close_fds,
    _program_message,
    admin_envelope,
)
from taonet.hosts.linux._hosted import (
    AdminBackend,
    Caller,
    StartRequest,
)
from taonet.wire import (
    END_OF_STREAM,
    NEED_DATA,
    Envelope,
    Request,
    Role,
    message_class,
    parse,
    serialize,
)

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_UID",
    "REQUEST_TIMEOUT",
    "serve_admin",
]

log = get_logger(__name__)

#: Admin connections served at once; more are closed as soon as they are accepted.
MAX_CONNECTIONS: Final = 256
#: Admin connections served at once for one peer uid (root included).
MAX_CONNECTIONS_PER_UID: Final = 32
#: Seconds a request may take to arrive once its first byte is in.
REQUEST_TIMEOUT: Final = 10.0
#: Seconds a connection may wait between requests (sending nothing) before it is closed.
IDLE_TIMEOUT: Final = 300.0

_RECV_SIZE: Final = 64 * 1024
_ANC_SIZE: Final = socket.CMSG_SPACE(MAX_STDIO_FDS * 4)
_UCRED: Final = struct.Struct("=iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
#: Supplementary groups asked for first (a caller in more is asked again, for all).
MAX_PEER_GROUPS: Final = 256
#: The kernel's bound on supplementary groups (NGROUPS_MAX).
NGROUPS_MAX: Final = 65536
_LIBC: Final = ctypes.CDLL(None, use_errno=True)
#: SO_PEERGROUPS (Linux 4.13) is 59 where the kernel uses asm-generic/socket.h, as on
#: x86, arm, arm64, powerpc, riscv and s390; Python does not name it.
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", None) or (
    None if os.uname().machine.startswith(("alpha", "mips", "parisc", "sparc")) else 59
)
_ACCEPT_RETRY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_IGNORE_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_ACCEPT_RETRY_DELAY: Final = 0.1
#: Longest exception message logged for a backend failure.
_MAX_LOGGED_ERROR: Final = 1000

# --------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------


class _PeerGoneError(Exception):
    """The client closed its connection while its request was being served."""


class _Request:
    """A decoded request and the descriptors that came with it (owned until taken)."""

    __slots__ = ("body", "fds", "op", "seq")

    def __init__(self, op: str, seq: int, body: Any, fds: builtins.list[int]) -> None:
        self.op = op
        self.seq = seq
        self.body = body
        self.fds = fds

    def take_fds(self) -> builtins.list[int]:
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        _close_fds(self.take_fds())


def _expected_fds(op: str, body: Any) -> tuple[int, int]:
    """(fd_count, stdio_mask) of a request; ProtocolError if they disagree."""
    count = int(body.fd_count) if body.HasField("fd_count") else 0
    mask = int(body.stdio_mask) if body.HasField("stdio_mask") else 0
    if op != START and (count or mask):
        raise ProtocolError(f"{op} takes no file descriptors, the request announces some")
    if not 0 <= count <= MAX_STDIO_FDS or not 0 <= mask <= 0b111:
        raise ProtocolError(f"bad fd_count {count} or stdio_mask {mask}")
    if mask.bit_count() != count:
        raise ProtocolError(f"stdio_mask {mask:#05b} does not match fd_count {count}")
    return count, mask


def _check_strings(op: str, body: Any) -> None:
    # proto2 strings with invalid UTF-8 come out of the parser as bytes.
    values = [body.path, body.dir, body.selector, *body.args, *body.env]
    if not all(isinstance(value, str) for value in values):
        raise CodecError(f"{op} request: a string is not valid UTF-8")


class _IdleError(Exception):
    """A connection sent no request for the idle timeout: it is closed, not an error."""


class _Receiver:
    """Frames and ``SCM_RIGHTS`` descriptors from one connection, via ``recvmsg``.

    Descriptors that arrive wait in a queue until a complete request takes them; the
    queue never holds more than :data:`MAX_STDIO_FDS`. :meth:`close` closes
    whatever is still queued (call it when the connection ends). Once a request's
    first byte is in, the rest must come within ``request_timeout`` seconds.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        request_timeout: float,
        idle_timeout: float | None = None,
    ) -> None:
        self._sock = sock
        self.envelope = admin_envelope(Role.SERVER)
        self._fds: builtins.list[int] = []
        self._timeout = request_timeout
        self._idle_timeout = idle_timeout
        self._deadline = trio.CancelScope()  # of the request being received
        self._started = False  # the request being received has begun

    def close(self) -> None:
        """The connection is done: close the descriptors still queued, free the bytes."""
        fds, self._fds = self._fds, []
        _close_fds(fds)
        self.envelope.clear()

    async def _receive_event(self) -> Request | None:
        """The next request's frames; None when the peer closed between requests.

        The envelope refuses a frame over its limit and a request cut short.
        """
        envelope = self.envelope
        while (event := envelope.next_event()) is NEED_DATA:
            data, ancdata, flags, _ = await self._sock.recvmsg(
                _RECV_SIZE, _ANC_SIZE, socket.MSG_CMSG_CLOEXEC
            )
            self._collect(ancdata)  # before any check, so that they are closed
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError("more file descriptors than a request may carry")
            if len(self._fds) > MAX_STDIO_FDS:
                raise ProtocolError(
                    f"{len(self._fds)} file descriptors, more than a request may carry"
                )
            if data:
                self._start_clock()
            envelope.receive_data(data)
        if event is END_OF_STREAM:
            return None
        assert isinstance(event, Request)
        return event

    def _collect(self, ancdata: builtins.list[tuple[int, int, bytes]]) -> None:
        unexpected = False
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)
            else:
                unexpected = True
        if unexpected:
            raise ProtocolError("unexpected ancillary data")

    def _start_clock(self) -> None:
        """The request being received has begun: it must be complete in time."""
        if not self._started:
            self._started = True
            self._deadline.deadline = trio.current_time() + self._timeout

    async def receive_request(self) -> _Request | None:
        """The next request with its descriptors; None when the client is done.

        CodecError or ProtocolError when the connection must be dropped (including a
        request that does not arrive in time).
        """
        event = None
        self._started = False
        with trio.CancelScope() as self._deadline:
            if self._idle_timeout is not None:
                self._deadline.deadline = trio.current_time() + self._idle_timeout
            if self.envelope.in_message:  # part of it came with the previous request
                self._start_clock()
            event = await self._receive_event()
        if self._deadline.cancelled_caught:
            if not self._started:
                raise _IdleError(f"no request for {self._idle_timeout} s")
            raise ProtocolError(f"the request did not arrive within {self._timeout} s")
        if event is None:
            return None
        op = event.op
        if op not in ADMIN_OPS:
            raise ProtocolError(f"unknown admin operation {op!r}")
        body = parse("LinuxAdminRequest", event.body, what=f"{op} request")
        _check_strings(op, body)
        count, _ = _expected_fds(op, body)
        if len(self._fds) != count:
            raise ProtocolError(
                f"{op}: the request announces {count} file descriptors, {len(self._fds)} came"
            )
        fds, self._fds = self._fds, []
        return _Request(op, event.seq, body, fds)


def _getsockopt(fd: int, option: int, size: int) -> tuple[int, bytes]:
    """libc's getsockopt at SOL_SOCKET with a ``size``-byte buffer: (errno, value).

    CPython's ``socket.getsockopt`` takes at most 1024 bytes and hides the length the
    kernel asks for on ERANGE; this returns that length's worth of zero bytes then.
    """
    buffer = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if _LIBC.getsockopt(fd, socket.SOL_SOCKET, option, buffer, ctypes.byref(length)) == 0:
        return 0, buffer.raw[: length.value]
    err = ctypes.get_errno()
    return err, bytes(length.value) if err == errno.ERANGE else b""


def _peer_groups(sock: trio.socket.SocketType) -> tuple[int, ...]:
    """The peer's supplementary groups when it connected, all of them (up to the
    kernel's NGROUPS_MAX); OSError if the kernel cannot tell.

    Fewer groups are not fewer rights: a group can deny (mode 0604 ``root:banned``, an
    ACL entry ``g:banned:---``), so a caller whose groups cannot all be read is refused.
    """
    if _SO_PEERGROUPS is None:
        raise OSError(errno.ENOPROTOOPT, "SO_PEERGROUPS is unknown on this machine")
    size = MAX_PEER_GROUPS * 4
    while True:
        err, data = _getsockopt(sock.fileno(), _SO_PEERGROUPS, size)
        if err == errno.ERANGE and size < len(data) <= NGROUPS_MAX * 4:
            size = len(data)  # the kernel said how much it needs: ask again
            continue
        if err:
            raise OSError(err, f"cannot read the peer's groups: {os.strerror(err)}")
        break
    groups = array("I")
    groups.frombytes(data[: len(data) - len(data) % groups.itemsize])
    return tuple(groups)


def _peer(sock: trio.socket.SocketType) -> Caller:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Caller(uid=uid, gid=gid, pid=pid, groups=_peer_groups(sock))


def _selector(request: _Request) -> str:
    if not request.body.HasField("selector"):
        raise HostError(f"{request.op}: the request needs a selector")
    return _check_string(request.body.selector, "the selector")


def _start_request(request: _Request, fds: builtins.list[int]) -> StartRequest:
    body = request.body
    if not body.HasField("path"):
        raise HostError(f"{START}: the request needs a path")
    env: builtins.list[tuple[str, str]] = []
    for entry in body.env:
        key, sep, value = entry.partition("=")
        if not sep:
            raise HostError(f"environment entry {entry[:64]!r} is not KEY=VALUE")
        env.append((key, value))
    cwd = _check_string(body.dir, "the working directory") if body.HasField("dir") else None
    entry = _check_string(body.entry, "the entry") if body.HasField("entry") else None
    stdio: builtins.list[int | None] = [None, None, None]
    queued = iter(fds)
    for bit in range(MAX_STDIO_FDS):
        if body.stdio_mask & (1 << bit):
            stdio[bit] = next(queued)
    # StartRequest's tuple converters take any iterable (Any: mypy cannot type them).
    args: Any = _check_args(body.args)
    checked_env: Any = _check_env(env)
    return StartRequest(
        path=_check_string(body.path, "the program path"),
        args=args,
        cwd=cwd,
        env=checked_env,
        entry=entry,
        stdin=stdio[0],
        stdout=stdio[1],
        stderr=stdio[2],
    )


async def _cancel_when_peer_leaves(sock: trio.socket.SocketType, scope: trio.CancelScope) -> None:
    try:
        data = await sock.recv(1, socket.MSG_PEEK)
    except OSError:
        data = b""
    if not data:
        scope.cancel()
    # Otherwise the client sent its next request early: stop watching.


async def _unless_peer_leaves(
    sock: trio.socket.SocketType, call: Callable[[], Awaitable[_T]]
) -> _T:
    """``await call()``, cancelled (_PeerGoneError) if the client hangs up meanwhile."""
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_peer_leaves, sock, scope)
                try:
                    return await call()
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    raise _PeerGoneError


async def _handle(
    backend: AdminBackend, caller: Caller, request: _Request, sock: trio.socket.SocketType
) -> dict[str, Any]:
    """The response fields for ``request`` (TaoError becomes an error response)."""
    op = request.op
    if op == START:
        fds = request.take_fds()
        try:
            start = _start_request(request, fds)
        except BaseException:
            _close_fds(fds)
            raise
        info = await backend.start_program(start, caller)  # it owns the fds now
        return {"programs": [_program_message(info)]}
    if op in (STOP, KILL):
        infos = await backend.stop_programs(_selector(request), caller, kill=op == KILL)
        return {"programs": [_program_message(info) for info in infos]}
    if op == LIST:
        # Root sees every program; anyone else only those run as its uid (all of a
        # non-root host's programs run as its owner): not other users' paths or names.
        visible = [info for info in backend.list_programs() if caller.uid in (0, info.uid)]
        return {"programs": [_program_message(info) for info in visible]}
    if op == WAIT:
        selector = _selector(request)
        info = await _unless_peer_leaves(sock, lambda: backend.wait_program(selector, caller))
        return {"programs": [_program_message(info)]}
    if op == HOST_NAME:
        return {"name": auth.encode(backend.host_name())}
    assert op == SHUTDOWN
    await backend.shutdown(caller)
    return {}


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LOGGED_ERROR else text[:_MAX_LOGGED_ERROR] + "..."


async def _answer(
    envelope: Envelope,
    backend: AdminBackend,
    caller: Caller,
    request: _Request,
    sock: trio.socket.SocketType,
    logger: Any,
) -> bytes:
    """The response frames for ``request``.

    A TaoError becomes an error answer; so does any other Exception (a bug in the
    host: logged, and answered without its message). _PeerGoneError and
    BaseExceptions (trio.Cancelled, KeyboardInterrupt) propagate.
    """
    op = request.op
    error: TaoError | None = None
    body = b""
    try:
        fields = await _handle(backend, caller, request, sock)
        body = serialize(message_class("LinuxAdminResponse")(**fields))
        if len(body) > ADMIN_MAX_RESPONSE:
            raise HostError(
                f"{op}: a {len(body)}-byte response is over the {ADMIN_MAX_RESPONSE}-byte limit"
            )
    except TaoError as exc:
        error = exc
        body = b""
        logger.info("admin_request_refused", op=op, error=_clip(str(exc)))
    except _PeerGoneError:
        raise
    except Exception as exc:
        kind = type(exc).__name__
        error = HostError(f"internal error in the host ({kind})")
        body = b""
        # No traceback (so not .exception): its rendering could show local variables.
        logger.error(  # noqa: TRY400
            "admin_request_failed", op=op, error_type=kind, error=_clip(str(exc))
        )
    finally:
        request.close_fds()
    return b"".join(envelope.response(op, request.seq, body, error=error))


class _ConnectionLimits:
    """Counts the connections being served, in all and per peer uid."""

    def __init__(self, max_connections: int, max_per_uid: int) -> None:
        self._max_connections = max_connections
        self._max_per_uid = max_per_uid
        # Root and the host's owner (this process's uid) may always use one uid's
        # share of the total that other users cannot take from them.
        self._privileged = frozenset({0, os.geteuid()})
        self._max_others = (
            max_connections - max_per_uid if max_connections > max_per_uid else max_connections
        )
        self._total = 0
        self._per_uid: dict[int, int] = {}
        self.refused: Final = Bursts("admin_connection_refused", log)

    def refusal(self, uid: int) -> str | None:
        """Why a new connection from ``uid`` may not be served now; None if it may."""
        if self._total >= self._max_connections:
            return f"the host serves {self._total} admin connections, its limit"
        if uid not in self._privileged and self._total >= self._max_others:
            return (
                f"the host serves {self._total} admin connections, its limit for users"
                " other than root and its owner"
            )
        held = self._per_uid.get(uid, 0)
        if held >= self._max_per_uid:
            return f"uid {uid} holds {held} admin connections, its limit"
        return None

    def take(self, uid: int) -> None:
        self._total += 1
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1

    def release(self, uid: int) -> None:
        self._total -= 1
        held = self._per_uid[uid] - 1
        if held:
            self._per_uid[uid] = held
        else:
            del self._per_uid[uid]


class _Connection:
    """One served connection, as a graceful close sees it."""

    __slots__ = ("answering", "closing", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        #: Working on a request (from its last byte in until its answer is sent).
        self.answering = False
        #: The server is closing: end after the answer being worked on.
        self.closing = False

    def close(self) -> None:
        """End now if waiting for a request, else once the answer is sent."""
        self.closing = True
        if not self.answering:
            self.scope.cancel()


def _admit(conn: trio.socket.SocketType, conn_id: int, limits: _ConnectionLimits) -> Caller | None:
    """The caller of a new connection, counted; None (and closed) if it is refused."""
    try:
        caller = _peer(conn)
    except OSError as exc:
        limits.refused.note(conn_id=conn_id, reason=f"no peer credentials: {exc}")
        conn.close()
        return None
    reason = limits.refusal(caller.uid)
    if reason is not None:
        limits.refused.note(
            conn_id=conn_id, peer_uid=caller.uid, peer_pid=caller.pid, reason=reason
        )
        conn.close()
        return None
    limits.take(caller.uid)
    return caller


async def _serve_connection(
    backend: AdminBackend,
    sock: trio.socket.SocketType,
    caller: Caller,
    conn_id: int,
    limits: _ConnectionLimits,
    request_timeout: float,
    connection: _Connection,
    idle_timeout: float | None = None,
) -> None:
    """Serve one admitted connection; releases its place in ``limits`` when done.

    ``connection`` is how a graceful close ends it (see :class:`_Connection`).
    """
    receiver = _Receiver(sock, request_timeout=request_timeout, idle_timeout=idle_timeout)
    stream = trio.SocketStream(sock)
    logger = log.bind(
        conn_id=conn_id, peer_uid=caller.uid, peer_gid=caller.gid, peer_pid=caller.pid
    )
    try:
        logger.debug("admin_connection_opened")
        with connection.scope:
            while not connection.closing:
                try:
                    request = await receiver.receive_request()
                except (CodecError, ProtocolError) as exc:
                    logger.warning("admin_bad_request", error=str(exc))
                    return
                except _IdleError as exc:
                    logger.info("admin_connection_idle", reason=str(exc))
                    return
                if request is None:
                    return
                # No checkpoint between the request's arrival and this: a graceful
                # close now waits for its answer.
                connection.answering = True
                try:
                    response = await _answer(
                        receiver.envelope, backend, caller, request, sock, logger
                    )
                except _PeerGoneError:
                    logger.info("admin_client_gone", op=request.op)
                    return
                await stream.send_all(response)
                connection.answering = False
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        logger.info("admin_connection_broken", error=str(exc) or type(exc).__name__)
    except Exception as exc:  # pragma: no cover - a bug here: drop this connection only
        logger.error(  # noqa: TRY400 - no traceback, as in _answer
            "admin_connection_failed", error_type=type(exc).__name__, error=_clip(str(exc))
        )
    finally:
        receiver.close()
        # Released before the close, with no checkpoint between: a client that saw
        # this connection end may connect again at once and be counted correctly.
        limits.release(caller.uid)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        logger.debug("admin_connection_closed")


async def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody answers on; HostError if a host is running there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HostError(f"{path} exists and is not a socket")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass
    except OSError as exc:
        raise HostError(f"cannot tell whether a Tao host is running at {path}: {exc}") from exc
    else:
        raise HostError(f"another Tao host is running at {path}")
    finally:
        probe.close()
    with suppress(FileNotFoundError):
        os.unlink(path)
    log.info("admin_stale_socket_removed", path=path)


def _check_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


async def serve_admin(
    backend: AdminBackend,
    path: str | os.PathLike[str],
    *,
    mode: int = 0o600,
    max_connections: int = MAX_CONNECTIONS,
    max_per_uid: int = MAX_CONNECTIONS_PER_UID,
    request_timeout: float = REQUEST_TIMEOUT,
    idle_timeout: float | None = IDLE_TIMEOUT,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin socket at ``path`` for ``backend`` until cancelled, or until
    ``stop`` is set and the answers under way are sent.

    A stale socket file at ``path`` is replaced; HostError if another host answers
    there, if something else is in the way, or if the socket cannot be bound. The
    socket gets ``mode`` before anyone can connect. Each connection is served in its
    own task; a connection that breaks the protocol is dropped (and logged) without
    disturbing the others. On exit the socket file is removed.

    Once ``stop`` is set the server closes gracefully (see the module docstring): no
    new connection, idle ones closed, and each answer being worked on sent within
    ``request_timeout`` seconds; then it returns.

    At most ``max_connections`` connections are served at once, at most
    ``max_per_uid`` of them from one peer uid, and users other than root and the
    host's owner together leave ``max_per_uid`` of the total to those two; a
    connection over a limit is closed at once. Once a request's first byte is in, the
    whole request must arrive within ``request_timeout`` seconds or its connection is
    dropped; a connection that sends no request for ``idle_timeout`` seconds (None:
    no limit) is closed (see the module docstring).
    """
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits, got {mode!r}")
    _check_count(max_connections, "max_connections")
    _check_count(max_per_uid, "max_per_uid")
    if (
        isinstance(request_timeout, bool)
        or not isinstance(request_timeout, int | float)
        or not request_timeout > 0
    ):
        raise ValueError(f"request_timeout must be a positive number, got {request_timeout!r}")
    if idle_timeout is not None and (
        isinstance(idle_timeout, bool)
        or not isinstance(idle_timeout, int | float)
        or not idle_timeout > 0
    ):
        raise ValueError(f"idle_timeout must be a positive number or None, got {idle_timeout!r}")
    where = os.fspath(path)
    await _clear_stale_socket(where)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound: os.stat_result | None = None
    try:
        try:
            await listener.bind(where)
            bound = os.stat(where)
            os.chmod(where, mode)
            listener.listen()
        except OSError as exc:
            raise HostError(f"cannot serve the admin socket at {where}: {exc}") from exc
        log.info("admin_listening", path=where, mode=oct(mode))
        task_status.started()
        limits = _ConnectionLimits(max_connections, max_per_uid)
        connections: set[_Connection] = set()
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as accepting:
                if stop is not None:
                    nursery.start_soon(_cancel_on, stop, accepting)
                await _accept(
                    backend, listener, limits, request_timeout, nursery, connections, idle_timeout
                )
            # ``stop`` was set: take no one new, and let the answers under way go out.
            listener.close()
            _unlink_if_bound(where, bound)
            log.info("admin_closing", path=where, connections=len(connections))
            nursery.cancel_scope.deadline = trio.current_time() + request_timeout
            for connection in connections:
                connection.close()
    finally:
        listener.close()
        _unlink_if_bound(where, bound)
        log.info("admin_stopped", path=where)


def _unlink_if_bound(where: str, bound: os.stat_result | None) -> None:
    """Remove the socket file at ``where`` if it is still the one this server bound."""
    if bound is not None:
        with suppress(OSError):
            now = os.lstat(where)
            if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(where)


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _accept(
    backend: AdminBackend,
    listener: trio.socket.SocketType,
    limits: _ConnectionLimits,
    request_timeout: float,
    nursery: trio.Nursery,
    connections: set[_Connection],
    idle_timeout: float | None,
) -> None:
    """Accept and admit connections, each served in ``nursery``, until cancelled."""
    for conn_id in itertools.count(1):
        try:
            conn, _ = await listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_RETRY_ERRNOS:
                log.warning("admin_accept_failed", error=str(exc))
                await trio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            if exc.errno in _ACCEPT_IGNORE_ERRNOS:
                continue
            raise
        caller = _admit(conn, conn_id, limits)
        if caller is None:
            continue
        connection = _Connection()
        connections.add(connection)  # now: a close that comes before its task starts sees it
        try:
            nursery.start_soon(
                _tracked,
                connections,
                connection,
                functools.partial(
                    _serve_connection,
                    backend,
                    conn,
                    caller,
                    conn_id,
                    limits,
                    request_timeout,
                    connection,
                    idle_timeout,
                ),
            )
        except BaseException:  # pragma: no cover - the nursery is open
            connections.discard(connection)
            limits.release(caller.uid)
            conn.close()
            raise


async def _tracked(
    connections: set[_Connection],
    connection: _Connection,
    serve: Callable[[], Awaitable[None]],
) -> None:
    try:
        await serve()
    finally:
        connections.discard(connection)
