"""The Linux host's admin socket: a unix socket in the host directory (server and client).

Wire format, in the style of the original's protorpc: a request is two frames (the
4-byte big-endian length framing of :mod:`taonet.wire`), an ``RPCHeader{op, seq}``
and then a ``LinuxAdminRequest`` body; a response is an ``RPCHeader{op, seq, error?}``
and then a ``LinuxAdminResponse`` body, empty when ``error`` is set. Frames are at most
:data:`ADMIN_MAX_FRAME` bytes. An error string is ``"<Kind>: message"`` where Kind is
the name of a :class:`~taonet.TaoError` class; the client raises that class again.

A start request may carry the caller's stdin, stdout and stderr: the descriptors ride
as ``SCM_RIGHTS`` ancillary data on the one ``sendmsg`` that carries the request's
frames. ``fd_count`` says how many came (0 to 3) and ``stdio_mask`` which ones (bit 0
stdin, bit 1 stdout, bit 2 stderr). A request must arrive with exactly the
descriptors it announces; anything else (too few, too many, truncated ancillary data,
descriptors on another request) is a protocol error: the server closes every
descriptor it received and drops that connection. Every descriptor received is
either handed to the backend inside a :class:`~taonet.hosts._hosted.StartRequest`
or closed.

* :func:`serve_admin` binds the socket, serves each connection in its own task
  (requests on one connection in order) and removes the socket file when cancelled.
  The caller of each connection is the kernel's ``SO_PEERCRED``.
* :class:`AdminClient` is the client: ``async with AdminClient.connect(path) as admin``.
"""

from __future__ import annotations

import builtins
import errno
import itertools
import os
import socket
import stat
import struct
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, TypeVar

import structlog
import trio

from taonet import auth
from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    ProtocolError,
    TaoError,
)
from taonet.hosts._hosted import (
    MAX_ARGS,
    MAX_ENV,
    MAX_STRING,
    AdminBackend,
    Caller,
    ProgramInfo,
    StartRequest,
)
from taonet.hosts._messages import MessageStream
from taonet.wire import FrameDecoder, encode_frame, message_class, parse, serialize

__all__ = [
    "ADMIN_MAX_FRAME",
    "ADMIN_OPS",
    "MAX_STDIO_FDS",
    "AdminClient",
    "serve_admin",
]

log = structlog.get_logger(__name__)

#: Largest admin frame (header or body), in either direction.
ADMIN_MAX_FRAME: Final = 1024 * 1024
#: Descriptors a request may carry: stdin, stdout and stderr.
MAX_STDIO_FDS: Final = 3
#: Longest error message sent back (the rest is cut).
_MAX_ERROR: Final = 4096
_RECV_SIZE: Final = 64 * 1024
_ANC_SIZE: Final = socket.CMSG_SPACE(MAX_STDIO_FDS * 4)
_UCRED: Final = struct.Struct("=iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
_ACCEPT_RETRY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_IGNORE_ERRNOS: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_ACCEPT_RETRY_DELAY: Final = 0.1

START: Final = "LinuxHost.StartHostedProgram"
STOP: Final = "LinuxHost.StopHostedProgram"
KILL: Final = "LinuxHost.KillHostedProgram"
LIST: Final = "LinuxHost.ListHostedPrograms"
WAIT: Final = "LinuxHost.WaitHostedProgram"
HOST_NAME: Final = "LinuxHost.TaoHostName"
SHUTDOWN: Final = "LinuxHost.Shutdown"
#: Every admin operation.
ADMIN_OPS: Final = frozenset({START, STOP, KILL, LIST, WAIT, HOST_NAME, SHUTDOWN})

#: Error kinds a client raises again by name; anything else becomes HostError.
_ERROR_KINDS: Final[dict[str, type[TaoError]]] = {
    cls.__name__: cls
    for cls in (
        TaoError,
        CodecError,
        AuthenticationError,
        AuthorizationError,
        HostError,
        ConfigError,
        ProtocolError,
    )
}
_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_UINT64_MAX: Final = 2**64 - 1

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------
# Shared checks and conversions
# --------------------------------------------------------------------------------------


def _error_text(exc: TaoError) -> str:
    """``"<Kind>: message"`` with Kind the nearest error class a client knows."""
    kind = next(cls.__name__ for cls in type(exc).__mro__ if cls.__name__ in _ERROR_KINDS)
    message = str(exc) or type(exc).__name__
    if len(message) > _MAX_ERROR:
        message = message[:_MAX_ERROR] + "..."
    return f"{kind}: {message}"


def _error_from_text(text: str) -> TaoError:
    kind, sep, message = text.partition(": ")
    cls = _ERROR_KINDS.get(kind) if sep else None
    if cls is None:
        return HostError(text)
    return cls(message)


def _check_string(value: object, what: str, *, empty: bool = False) -> str:
    """A bounded string without NULs (what exec and the kernel can take)."""
    if not isinstance(value, str):
        raise HostError(f"{what} must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise HostError(f"{what} is not valid unicode") from None
    if size > MAX_STRING:
        raise HostError(f"{what} is {size} bytes, over the {MAX_STRING}-byte limit")
    if not value and not empty:
        raise HostError(f"{what} is empty")
    if "\0" in value:
        raise HostError(f"{what} contains a NUL character")
    return value


def _check_args(args: Sequence[object]) -> tuple[str, ...]:
    if len(args) > MAX_ARGS:
        raise HostError(f"{len(args)} arguments is over the limit of {MAX_ARGS}")
    return tuple(_check_string(arg, f"argument {i}", empty=True) for i, arg in enumerate(args))


def _check_env_entry(key: object, value: object) -> tuple[str, str]:
    key = _check_string(key, "an environment variable name")
    if "=" in key:
        raise HostError(f"environment variable name {key!r} contains '='")
    return key, _check_string(value, f"environment variable {key}", empty=True)


def _check_env(entries: Sequence[tuple[object, object]]) -> tuple[tuple[str, str], ...]:
    if len(entries) > MAX_ENV:
        raise HostError(f"{len(entries)} environment variables is over the limit of {MAX_ENV}")
    checked = tuple(_check_env_entry(key, value) for key, value in entries)
    if len({key for key, _ in checked}) != len(checked):
        raise HostError("the environment names a variable twice")
    return checked


def _check_int(value: int, what: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HostError(f"{what} {value!r} does not fit the admin protocol")
    return value


def _program_message(info: ProgramInfo) -> Any:
    msg = message_class("LinuxAdminProgram")(
        name=auth.encode(info.name),
        pid=_check_int(info.pid, "pid", _INT32),
        uid=_check_int(info.uid, "uid", _INT32),
        gid=_check_int(info.gid, "gid", _INT32),
        path=info.path,
        program_hash=bytes(info.program_hash),
        program_id=_check_int(info.program_id, "program id", _INT64),
    )
    if info.exit_status is not None:
        msg.exit_status = _check_int(info.exit_status, "exit status", _INT32)
    return msg


def _program_info(msg: Any, op: str) -> ProgramInfo:
    try:
        name = auth.decode_prin(bytes(msg.name))
    except CodecError as exc:
        raise ProtocolError(f"{op}: bad program name: {exc}") from None
    path = msg.path
    if not isinstance(path, str):
        raise ProtocolError(f"{op}: a program path is not valid UTF-8")
    return ProgramInfo(
        name=name,
        pid=int(msg.pid),
        uid=int(msg.uid),
        gid=int(msg.gid),
        path=path,
        program_hash=bytes(msg.program_hash),
        program_id=int(msg.program_id),
        exit_status=int(msg.exit_status) if msg.HasField("exit_status") else None,
    )


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)


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


class _Receiver:
    """Frames and ``SCM_RIGHTS`` descriptors from one connection, via ``recvmsg``.

    Descriptors that arrive wait in a queue until a complete request takes them; the
    queue never holds more than :data:`MAX_STDIO_FDS`. :meth:`close_fds` closes
    whatever is still queued (call it when the connection ends).
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._decoder = FrameDecoder(max_frame=ADMIN_MAX_FRAME)
        self._fds: builtins.list[int] = []
        self._received = 0  # bytes received that are not yet part of a returned frame

    def close_fds(self) -> None:
        fds, self._fds = self._fds, []
        _close_fds(fds)

    async def _receive_frame(self) -> bytes | None:
        """The next frame; None when the peer closed between frames."""
        while (frame := self._decoder.next_frame()) is None:
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
            if not data:
                if self._received:
                    raise ProtocolError("the client closed the connection inside a frame")
                return None
            self._decoder.feed(data)
            self._received += len(data)
        self._received -= 4 + len(frame)
        return frame

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

    async def receive_request(self) -> _Request | None:
        """The next request with its descriptors; None when the client is done.

        CodecError or ProtocolError when the connection must be dropped.
        """
        header_frame = await self._receive_frame()
        if header_frame is None:
            return None
        body_frame = await self._receive_frame()
        if body_frame is None:
            raise ProtocolError("the client closed the connection between header and body")
        header = parse("RPCHeader", header_frame, what="admin request header")
        op = header.op
        if op not in ADMIN_OPS:
            raise ProtocolError(f"unknown admin operation {op!r}")
        body = parse("LinuxAdminRequest", body_frame, what=f"{op} request")
        _check_strings(op, body)
        count, _ = _expected_fds(op, body)
        if len(self._fds) != count:
            raise ProtocolError(
                f"{op}: the request announces {count} file descriptors, {len(self._fds)} came"
            )
        fds, self._fds = self._fds, []
        return _Request(op, int(header.seq), body, fds)


def _peer(sock: trio.socket.SocketType) -> Caller:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Caller(uid=uid, gid=gid, pid=pid)


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
        return {"programs": [_program_message(info) for info in backend.list_programs()]}
    if op == WAIT:
        selector = _selector(request)
        info = await _unless_peer_leaves(sock, lambda: backend.wait_program(selector, caller))
        return {"programs": [_program_message(info)]}
    if op == HOST_NAME:
        return {"name": auth.encode(backend.host_name())}
    assert op == SHUTDOWN
    await backend.shutdown(caller)
    return {}


async def _answer(
    backend: AdminBackend,
    caller: Caller,
    request: _Request,
    sock: trio.socket.SocketType,
    logger: Any,
) -> bytes:
    """The response frames for ``request``."""
    op = request.op
    error: str | None = None
    body = b""
    try:
        fields = await _handle(backend, caller, request, sock)
        body = serialize(message_class("LinuxAdminResponse")(**fields))
        if len(body) > ADMIN_MAX_FRAME:
            raise HostError(
                f"{op}: a {len(body)}-byte response is over the {ADMIN_MAX_FRAME}-byte limit"
            )
    except TaoError as exc:
        error = _error_text(exc)
        body = b""
        logger.info("admin_request_refused", op=op, error=error)
    finally:
        request.close_fds()
    header = message_class("RPCHeader")(op=op, seq=request.seq)
    if error is not None:
        header.error = error
    return encode_frame(serialize(header), max_frame=ADMIN_MAX_FRAME) + encode_frame(
        body, max_frame=ADMIN_MAX_FRAME
    )


async def _serve_connection(
    backend: AdminBackend, sock: trio.socket.SocketType, conn_id: int
) -> None:
    receiver = _Receiver(sock)
    stream = trio.SocketStream(sock)
    logger = log.bind(conn_id=conn_id)
    try:
        caller = _peer(sock)
        logger = logger.bind(peer_uid=caller.uid, peer_gid=caller.gid, peer_pid=caller.pid)
        logger.debug("admin_connection_opened")
        while True:
            try:
                request = await receiver.receive_request()
            except (CodecError, ProtocolError) as exc:
                logger.warning("admin_bad_request", error=str(exc))
                return
            if request is None:
                return
            try:
                response = await _answer(backend, caller, request, sock, logger)
            except _PeerGoneError:
                logger.info("admin_client_gone", op=request.op)
                return
            await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        logger.info("admin_connection_broken", error=str(exc) or type(exc).__name__)
    finally:
        receiver.close_fds()
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


async def serve_admin(
    backend: AdminBackend,
    path: str | os.PathLike[str],
    *,
    mode: int = 0o600,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin socket at ``path`` for ``backend`` until cancelled.

    A stale socket file at ``path`` is replaced; HostError if another host answers
    there, if something else is in the way, or if the socket cannot be bound. The
    socket gets ``mode`` before anyone can connect. Each connection is served in its
    own task; a connection that breaks the protocol is dropped (and logged) without
    disturbing the others. On exit the socket file is removed.
    """
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits, got {mode!r}")
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
        async with trio.open_nursery() as nursery:
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
                nursery.start_soon(_serve_connection, backend, conn, conn_id)
    finally:
        listener.close()
        if bound is not None:
            with suppress(OSError):
                now = os.lstat(where)
                if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                    os.unlink(where)
        log.info("admin_stopped", path=where)


# --------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------


def _check_fd(fd: int | None, what: str) -> int | None:
    if fd is not None and (isinstance(fd, bool) or not isinstance(fd, int) or fd < 0):
        raise HostError(f"{what} must be a file descriptor or None, got {fd!r}")
    return fd


async def _sendmsg_all(sock: trio.socket.SocketType, data: bytes, fds: Sequence[int]) -> None:
    """Send ``data``; ``fds`` ride with its first bytes."""
    view = memoryview(data)
    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
    sent = await sock.sendmsg([view], ancdata)
    while sent < len(view):
        sent += await sock.send(view[sent:])


class AdminClient:
    """A connection to a Linux host's admin socket; use :meth:`connect`.

    Calls on one client run one at a time (a second waits for the first, so a long
    :meth:`wait` holds up the others: use another client for those). An error
    answer raises the host's error class with its message and leaves the client
    usable; a broken answer (wrong sequence number or operation, a malformed frame)
    raises ProtocolError and closes the client, as does cancelling a call part way.
    """

    def __init__(self, sock: trio.socket.SocketType, *, path: str) -> None:
        self._sock = sock
        self._messages = MessageStream(trio.SocketStream(sock), max_frame=ADMIN_MAX_FRAME)
        self._path = path
        self._seq = itertools.count(1)
        self._lock = trio.Lock()
        self._failure: TaoError | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, path: str | os.PathLike[str]) -> AsyncIterator[AdminClient]:
        """A client connected to the admin socket at ``path`` for the block.

        HostError if no host is listening there.
        """
        where = os.fspath(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(where)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise HostError(f"no Tao host is running at {where}") from None
        except OSError as exc:
            sock.close()
            raise HostError(f"cannot reach the Tao host at {where}: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        client = cls(sock, path=where)
        try:
            yield client
        finally:
            await client.aclose()

    @property
    def path(self) -> str:
        """The admin socket's path."""
        return self._path

    @property
    def closed(self) -> bool:
        """True once the client was closed or broke; calls then raise HostError."""
        return self._failure is not None

    async def aclose(self) -> None:
        """Close the connection."""
        self._close(HostError("the admin client is closed"))
        await trio.lowlevel.checkpoint()

    def _close(self, failure: TaoError) -> None:
        if self._failure is None:
            self._failure = failure
        self._sock.close()

    def _broken(self, failure: TaoError) -> TaoError:
        log.warning("admin_client_failed", path=self._path, error=str(failure))
        self._close(failure)
        return failure

    async def _exchange(self, op: str, seq: int, data: bytes, fds: Sequence[int]) -> Any:
        await _sendmsg_all(self._sock, data, fds)
        header_frame = await self._messages.receive_message()
        body_frame = await self._messages.receive_message()
        header = parse("RPCHeader", header_frame, what=f"{op} response header")
        if header.seq != seq or header.op != op:
            raise ProtocolError(
                f"the host answered call {seq} ({op}) as call {header.seq} ({header.op!r})"
            )
        if header.HasField("error"):
            return _error_from_text(str(header.error))
        return parse("LinuxAdminResponse", body_frame, what=f"{op} response")

    async def _call(self, op: str, fds: Sequence[int] = (), **fields: Any) -> Any:
        body = serialize(message_class("LinuxAdminRequest")(**fields))
        if len(body) > ADMIN_MAX_FRAME:
            raise HostError(
                f"{op}: a {len(body)}-byte request is over the {ADMIN_MAX_FRAME}-byte limit"
            )
        async with self._lock:
            if self._failure is not None:
                raise HostError(str(self._failure)) from self._failure
            seq = next(self._seq)
            if seq > _UINT64_MAX:  # pragma: no cover - not in this universe
                raise self._broken(HostError("the admin client ran out of sequence numbers"))
            header = serialize(message_class("RPCHeader")(op=op, seq=seq))
            data = encode_frame(header, max_frame=ADMIN_MAX_FRAME) + encode_frame(
                body, max_frame=ADMIN_MAX_FRAME
            )
            try:
                result = await self._exchange(op, seq, data, fds)
            except trio.EndOfChannel:
                raise self._broken(HostError(f"{op}: the Tao host closed the connection")) from None
            except (CodecError, ProtocolError) as exc:
                raise self._broken(ProtocolError(f"{op}: {exc}")) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._broken(HostError(f"{op}: the connection broke: {exc}")) from exc
            except BaseException:
                self._close(HostError(f"{op} was cancelled part way; the client is closed"))
                raise
        if isinstance(result, TaoError):
            raise result
        return result

    def _programs(
        self, op: str, response: Any, count: int | None = None
    ) -> builtins.list[ProgramInfo]:
        if response.HasField("name") or (count is not None and len(response.programs) != count):
            want = "no name" if count is None else f"{count} program(s) and no name"
            raise self._broken(ProtocolError(f"{op}: the response should hold {want}"))
        try:
            return [_program_info(msg, op) for msg in response.programs]
        except ProtocolError as exc:
            raise self._broken(exc) from None

    async def start(
        self,
        path: str,
        args: Sequence[str] = (),
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> ProgramInfo:
        """Start ``path`` with ``args`` (not including argv[0]).

        ``stdin``/``stdout``/``stderr`` are descriptors the host's program gets (None:
        /dev/null); the caller keeps its own and closes them when it likes.
        """
        if isinstance(args, str | bytes):
            raise HostError("args must be a sequence of strings, not one string")
        fields: dict[str, Any] = {
            "path": _check_string(path, "the program path"),
            "args": _check_args(args),
        }
        if cwd is not None:
            fields["dir"] = _check_string(cwd, "the working directory")
        if env is not None:
            fields["env"] = [f"{key}={value}" for key, value in _check_env(list(env.items()))]
        fds: builtins.list[int] = []
        mask = 0
        for bit, (fd, what) in enumerate(
            ((stdin, "stdin"), (stdout, "stdout"), (stderr, "stderr"))
        ):
            if _check_fd(fd, what) is not None:
                assert fd is not None
                fds.append(fd)
                mask |= 1 << bit
        if fds:
            fields["fd_count"] = len(fds)
            fields["stdio_mask"] = mask
        response = await self._call(START, fds, **fields)
        return self._programs(START, response, 1)[0]

    async def stop(self, selector: str) -> builtins.list[ProgramInfo]:
        """SIGTERM the selected programs (pid or principal name); return them."""
        response = await self._call(STOP, selector=_check_string(selector, "the selector"))
        return self._programs(STOP, response)

    async def kill(self, selector: str) -> builtins.list[ProgramInfo]:
        """SIGKILL the selected programs (pid or principal name); return them."""
        response = await self._call(KILL, selector=_check_string(selector, "the selector"))
        return self._programs(KILL, response)

    async def list(self) -> builtins.list[ProgramInfo]:
        """Every program still running."""
        return self._programs(LIST, await self._call(LIST))

    async def wait(self, selector: str) -> ProgramInfo:
        """Wait until the selected program exits; return it with its exit status."""
        response = await self._call(WAIT, selector=_check_string(selector, "the selector"))
        info = self._programs(WAIT, response, 1)[0]
        if info.exit_status is None:
            raise self._broken(ProtocolError(f"{WAIT}: the program has no exit status"))
        return info

    async def host_name(self) -> auth.Prin:
        """The host's Tao name."""
        response = await self._call(HOST_NAME)
        if not response.HasField("name") or len(response.programs):
            raise self._broken(ProtocolError(f"{HOST_NAME}: the response should hold a name"))
        try:
            return auth.decode_prin(bytes(response.name))
        except CodecError as exc:
            raise self._broken(ProtocolError(f"{HOST_NAME}: bad principal: {exc}")) from None

    async def shutdown(self) -> None:
        """Ask the host to stop its programs and exit; returns once it has stopped them."""
        response = await self._call(SHUTDOWN)
        if response.HasField("name") or len(response.programs):
            raise self._broken(ProtocolError(f"{SHUTDOWN}: the response should be empty"))
