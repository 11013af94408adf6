"""The Linux host's admin socket, client side: ``async with AdminClient.connect(path)``.

The wire format is in :mod:`taonet.hosts.linux._admin_wire`. The client sends requests of
at most :data:`~taonet.hosts.linux._admin_wire.ADMIN_MAX_FRAME` bytes a frame (a bigger one
is refused before anything is sent) and accepts responses of up to
:data:`~taonet.hosts.linux._admin_wire.ADMIN_MAX_RESPONSE` bytes a frame. The host closes a
connection over its limits (see :func:`~taonet.hosts.linux._admin.serve_admin`) at once:
the first call on it raises HostError and closes the client.
"""

from __future__ import annotations

import builtins
import errno
import itertools
import os
import socket
from array import array
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from taonet import auth
from taonet._edges import map_os_errors
from taonet._errors import (
    CodecError,
    HostError,
    ProtocolError,
    TaoError,
)
from taonet._log import get_logger
from taonet._messages import CHUNK_SIZE
from taonet.hosts.linux._admin_wire import (
    _UINT64_MAX,
    ADMIN_MAX_FRAME,
    HOST_NAME,
    KILL,
    LIST,
    SHUTDOWN,
    START,
    STOP,
    WAIT,
    _check_args,
    _check_env,
    _check_string,
    _program_info,
    admin_envelope,
)
from taonet.hosts.linux._hosted import (
    ProgramInfo,
)
from taonet.wire import END_OF_STREAM, NEED_DATA, Response, Role, message_class, parse, serialize

__all__ = ["AdminClient"]

log = get_logger(__name__)

#: Connecting to a host whose listen queue is full: attempts, and the first pause
#: between them (doubling: about 1.3 s in all).
_BUSY_ATTEMPTS: Final = 8
_BUSY_RETRY_DELAY: Final = 0.01

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


async def _connect_once(where: str) -> trio.socket.SocketType | None:
    """A socket connected to ``where``; None if the host's listen queue is full.

    A unix socket whose listener's queue is full fails a non-blocking connect with
    EAGAIN, which trio takes for a connection under way: it then finds the socket
    writable and no error pending, and returns a socket that is not connected. Hence
    the check that the socket has a peer.
    """
    with map_os_errors(to=HostError, what=f"cannot reach the Tao host at {where}"):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(where)
            sock.getpeername()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise HostError(f"no Tao host is running at {where}: {exc.strerror}") from exc
        except OSError as exc:
            sock.close()
            if isinstance(exc, BlockingIOError) or exc.errno == errno.ENOTCONN:
                return None
            raise
        except BaseException:
            sock.close()
            raise
    return sock


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
        self._envelope = admin_envelope(Role.CLIENT)
        self._path = path
        self._seq = itertools.count(1)
        self._lock = trio.Lock()
        self._failure: TaoError | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, path: str | os.PathLike[str]) -> AsyncIterator[AdminClient]:
        """A client connected to the admin socket at ``path`` for the block.

        HostError if no host is listening there, or if its listen queue stays full
        (it takes no new connection) for about a second: retried meanwhile.
        """
        where = os.fspath(path)
        delay = _BUSY_RETRY_DELAY
        attempt = 1
        while (sock := await _connect_once(where)) is None:
            if attempt >= _BUSY_ATTEMPTS:
                raise HostError(
                    f"the Tao host at {where} is too busy to take a connection (its listen "
                    "queue is full): try again later"
                )
            await trio.sleep(delay)
            delay *= 2
            attempt += 1
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
        self._envelope.clear()

    def _broken(self, failure: TaoError) -> TaoError:
        log.warning("admin_client_failed", path=self._path, error=str(failure))
        self._close(failure)
        return failure

    async def _exchange(self, op: str, data: bytes, fds: Sequence[int]) -> Any:
        await _sendmsg_all(self._sock, data, fds)
        envelope = self._envelope
        while (event := envelope.next_event()) is NEED_DATA:
            envelope.receive_data(await self._sock.recv(CHUNK_SIZE))
        if event is END_OF_STREAM:
            raise trio.EndOfChannel
        # The envelope checked that it answers this call (its seq and op).
        assert isinstance(event, Response)
        if event.error is not None:
            return event.error
        return parse("LinuxAdminResponse", event.body, what=f"{op} response")

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
            data = b"".join(self._envelope.request(op, seq, body))
            try:
                result = await self._exchange(op, data, fds)
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
        entry: str | None = None,
    ) -> ProgramInfo:
        """Start ``path`` with ``args`` (not including argv[0]).

        ``path`` may be a program directory; ``entry`` is then the file in it that
        runs (None: its ``__main__.py``).

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
        if entry is not None:
            fields["entry"] = _check_string(entry, "the entry")
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
