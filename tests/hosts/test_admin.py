"""The Linux host's admin socket: AdminClient against serve_admin over real unix sockets."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import signal
import site
import socket
import struct
import subprocess
import sys
import tempfile
from array import array
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import taonet
from taonet import (
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    ProtocolError,
    auth,
)
from taonet._messages import MessageStream
from taonet.hosts.linux._admin import (
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_UID,
    REQUEST_TIMEOUT,
    serve_admin,
)
from taonet.hosts.linux._admin_client import AdminClient
from taonet.hosts.linux._admin_wire import (
    ADMIN_MAX_FRAME,
    ADMIN_MAX_RESPONSE,
    HOST_NAME,
    KILL,
    LIST,
    START,
    STOP,
    WAIT,
)
from taonet.hosts.linux._hosted import MAX_ARGS, Caller, ProgramInfo, StartRequest
from taonet.wire import encode_frame, message_class, parse, serialize

TIMEOUT = 10
NOBODY = 65534
HOST = auth.Prin("key", auth.Bytes(bytes(range(32))))


# --------------------------------------------------------------------------------------
# An in-test host backend
# --------------------------------------------------------------------------------------


class Backend:
    """A small AdminBackend: an in-memory program table with the owner rules."""

    def __init__(self, owner_uid: int = 0) -> None:
        self.owner_uid = owner_uid
        self.calls: list[tuple[str, Caller | None]] = []
        self.programs: dict[int, ProgramInfo] = {}
        self.exited: dict[int, trio.Event] = {}
        self.stdio_seen: list[tuple[bool, bool, bool]] = []
        self.inheritable: list[bool] = []
        self.waiting = trio.Event()
        self.wait_cancelled = trio.Event()
        self.shut_down = trio.Event()
        self._pids = itertools.count(1000)

    def _may_manage(self, caller: Caller, info: ProgramInfo) -> bool:
        return caller.uid in (0, self.owner_uid, info.uid)

    def _select(self, selector: str) -> list[ProgramInfo]:
        if selector.isdigit():
            found = [p for p in self.programs.values() if str(p.pid) == selector]
        else:
            name = auth.parse_prin(selector)  # CodecError for a bad selector
            found = [p for p in self.programs.values() if p.name == name]
        if not found:
            raise HostError(f"no program matches {selector}")
        return found

    async def start_program(self, request: StartRequest, caller: Caller) -> ProgramInfo:
        try:
            self.calls.append(("start", caller))
            self.stdio_seen.append(
                (request.stdin is not None, request.stdout is not None, request.stderr is not None)
            )
            self.inheritable.extend(os.get_inheritable(fd) for fd in request.fds())
            if request.stdout is not None:
                os.write(request.stdout, b"hello\n")
            digest = hashlib.sha256(request.path.encode()).digest()
            pid = next(self._pids)
            info = ProgramInfo(
                name=HOST.extend(auth.PrinExt("Program", (auth.Bytes(digest),))),
                pid=pid,
                uid=caller.uid,
                gid=caller.gid,
                path=request.path,
                program_hash=digest,
                program_id=pid - 999,
            )
            self.programs[pid] = info
            self.exited[pid] = trio.Event()
        finally:
            for fd in request.fds():
                os.close(fd)
        await trio.lowlevel.checkpoint()
        return info

    async def stop_programs(
        self, selector: str, caller: Caller, *, kill: bool = False
    ) -> Sequence[ProgramInfo]:
        self.calls.append(("kill" if kill else "stop", caller))
        await trio.lowlevel.checkpoint()
        chosen = [p for p in self._select(selector) if p.running]
        for info in chosen:
            if not self._may_manage(caller, info):
                raise AuthorizationError(f"uid {caller.uid} may not stop program {info.pid}")
        status = -(signal.SIGKILL if kill else signal.SIGTERM)
        stopped = []
        for info in chosen:
            self.programs[info.pid] = attrs.evolve(info, exit_status=status)
            self.exited[info.pid].set()
            stopped.append(self.programs[info.pid])
        return stopped

    def list_programs(self) -> Sequence[ProgramInfo]:
        self.calls.append(("list", None))
        return [p for p in self.programs.values() if p.running]

    async def wait_program(self, selector: str, caller: Caller) -> ProgramInfo:
        self.calls.append(("wait", caller))
        (info,) = self._select(selector)
        if not self._may_manage(caller, info):
            raise AuthorizationError(f"uid {caller.uid} may not wait for program {info.pid}")
        self.waiting.set()
        try:
            await self.exited[info.pid].wait()
        except trio.Cancelled:
            self.wait_cancelled.set()
            raise
        return self.programs[info.pid]

    def host_name(self) -> auth.Prin:
        self.calls.append(("host_name", None))
        return HOST

    async def shutdown(self, caller: Caller) -> None:
        self.calls.append(("shutdown", caller))
        await trio.lowlevel.checkpoint()
        if caller.uid not in (0, self.owner_uid):
            raise AuthorizationError(f"uid {caller.uid} may not shut the host down")
        self.shut_down.set()


class Faulty(Backend):
    """A backend with a bug: the operation named ``fail`` raises ``error``."""

    def __init__(self, fail: str, error: BaseException) -> None:
        super().__init__()
        self.fail = fail
        self.error = error

    async def start_program(self, request: StartRequest, caller: Caller) -> ProgramInfo:
        if self.fail != "start":
            return await super().start_program(request, caller)
        self.calls.append(("start", caller))
        for fd in request.fds():  # the backend owns them, failing or not
            os.close(fd)
        await trio.lowlevel.checkpoint()
        raise self.error

    async def stop_programs(
        self, selector: str, caller: Caller, *, kill: bool = False
    ) -> Sequence[ProgramInfo]:
        if self.fail != "stop":
            return await super().stop_programs(selector, caller, kill=kill)
        self.calls.append(("kill" if kill else "stop", caller))
        await trio.lowlevel.checkpoint()
        raise self.error

    def list_programs(self) -> Sequence[ProgramInfo]:
        if self.fail != "list":
            return super().list_programs()
        self.calls.append(("list", None))
        raise self.error

    async def wait_program(self, selector: str, caller: Caller) -> ProgramInfo:
        if self.fail != "wait":
            return await super().wait_program(selector, caller)
        self.calls.append(("wait", caller))
        await trio.lowlevel.checkpoint()
        raise self.error


class Crowded(Backend):
    """A backend running ``count`` programs whose names are ``name_bytes`` long or so."""

    def __init__(self, count: int, name_bytes: int) -> None:
        super().__init__()
        for i in range(count):
            digest = hashlib.sha256(b"%d" % i).digest()
            label = auth.Bytes(digest * (name_bytes // len(digest)))
            info = ProgramInfo(
                name=HOST.extend(auth.PrinExt("Program", (label,))),
                pid=2000 + i,
                uid=0,
                gid=0,
                path=f"/bin/p{i}",
                program_hash=digest,
                program_id=i + 1,
            )
            self.programs[info.pid] = info


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


@asynccontextmanager
async def serving(backend: Backend, path: Path, **options: Any) -> AsyncIterator[Path]:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_admin, backend, path, **options))
        yield path
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving_on_a_mock_clock(
    backend: Backend, path: Path, clock: trio.testing.MockClock, **options: Any
) -> AsyncIterator[Path]:
    """serving(), with ``clock`` autojumping once the socket is bound.

    Not before: binding a unix socket waits for a thread, and meanwhile an autojumping
    clock would jump to the test's deadline.
    """
    async with serving(backend, path, **options) as served:
        clock.autojump_threshold = 0
        yield served


async def let_pass(clock: trio.testing.MockClock, seconds: float) -> None:
    """Once the server has taken all it was sent (nothing left to run), let
    ``seconds`` pass on the mock clock."""
    await trio.testing.wait_all_tasks_blocked()
    clock.jump(seconds)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pipes(n: int) -> tuple[list[int], list[int]]:
    ends = [os.pipe() for _ in range(n)]
    return [r for r, _ in ends], [w for _, w in ends]


def assert_all_closed_elsewhere(read_ends: list[int]) -> None:
    """Every write end of these pipes is closed (here and in the server): EOF, not EAGAIN."""
    for fd in read_ends:
        os.set_blocking(fd, False)
        try:
            assert os.read(fd, 1) == b""
        finally:
            os.close(fd)


def request_bytes(op: str, seq: int = 1, **fields: Any) -> bytes:
    header = serialize(message_class("RPCHeader")(op=op, seq=seq))
    body = serialize(message_class("LinuxAdminRequest")(**fields))
    return encode_frame(header) + encode_frame(body)


async def raw_connect(path: Path) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(path))
    return sock


async def send_raw(sock: trio.socket.SocketType, data: bytes, fds: Sequence[int] = ()) -> None:
    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
    sent = await sock.sendmsg([data], ancdata)
    assert sent == len(data)


async def assert_dropped(sock: trio.socket.SocketType) -> None:
    """The server closed the connection without answering."""
    try:
        data = await sock.recv(65536)
    except ConnectionResetError:
        return
    assert data == b"", f"the server answered {data!r}"


async def read_response(messages: MessageStream) -> tuple[Any, bytes]:
    header = parse("RPCHeader", await messages.receive_message())
    return header, await messages.receive_message()


async def assert_refused(path: Path) -> None:
    """A new connection is closed by the server at once, before it reads anything."""
    sock = await raw_connect(path)
    try:
        await assert_dropped(sock)  # though nothing was sent
    finally:
        sock.close()
    async with AdminClient.connect(path) as admin:
        with pytest.raises(HostError, match=r"closed the connection|connection broke"):
            await admin.host_name()
        assert admin.closed


def logged(logs: Sequence[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------


async def test_every_op_round_trips(tmp_path: Path) -> None:
    backend = Backend()
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            assert await admin.host_name() == HOST
            assert await admin.list() == []
            first = await admin.start("/bin/first", ["-v", ""], cwd="/tmp", env={"A": "1=2"})
            second = await admin.start("/bin/second")
            assert first == backend.programs[first.pid]
            assert first.path == "/bin/first"
            assert first.running
            assert await admin.list() == [first, second]

            (stopped,) = await admin.stop(str(first.pid))
            assert stopped.pid == first.pid
            assert stopped.exit_status == -signal.SIGTERM
            assert await admin.list() == [second]
            waited = await admin.wait(str(first.pid))
            assert waited == stopped

            (killed,) = await admin.kill(str(second.name))
            assert killed.exit_status == -signal.SIGKILL
            assert await admin.list() == []

            assert not backend.shut_down.is_set()
            await admin.shutdown()
            assert backend.shut_down.is_set()
    ops = [op for op, _ in backend.calls]
    assert ops == [
        "host_name",
        "list",
        "start",
        "start",
        "list",
        "stop",
        "list",
        "wait",
        "kill",
        "list",
        "shutdown",
    ]


async def test_start_request_fields_reach_the_backend(tmp_path: Path) -> None:
    seen: list[StartRequest] = []

    class Recording(Backend):
        async def start_program(self, request: StartRequest, caller: Caller) -> ProgramInfo:
            seen.append(request)
            return await super().start_program(request, caller)

    with trio.fail_after(TIMEOUT):
        async with (
            serving(Recording(), tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            await admin.start("/bin/x", ("a", "b c", ""), cwd="/srv", env={"K": "v=w", "E": ""})
            await admin.start("/bin/y")
    assert seen[0].path == "/bin/x"
    assert seen[0].args == ("a", "b c", "")
    assert seen[0].cwd == "/srv"
    assert seen[0].env == (("K", "v=w"), ("E", ""))
    assert (seen[1].args, seen[1].cwd, seen[1].env, seen[1].fds()) == ((), None, (), ())


async def test_stdio_fds_arrive_and_the_caller_keeps_its_own(tmp_path: Path) -> None:
    backend = Backend()
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                serving(backend, tmp_path / "a.sock") as path,
                AdminClient.connect(path) as admin,
            ):
                await admin.start("/bin/hi", stdout=out_w)
                await admin.start("/bin/all", stdin=in_r, stdout=out_w, stderr=err_w)
                await admin.start("/bin/err", stderr=err_w)
        assert os.read(out_r, 100) == b"hello\nhello\n"
        for fd in (out_w, in_r, err_w):
            os.fstat(fd)  # still ours, still open
        assert backend.stdio_seen == [
            (False, True, False),
            (True, True, True),
            (False, False, True),
        ]
        assert backend.inheritable == [False] * 5  # received close-on-exec
    finally:
        for fd in (out_r, out_w, in_r, in_w, err_r, err_w):
            os.close(fd)


async def test_peer_credentials_identify_the_caller(tmp_path: Path) -> None:
    backend = Backend()
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            info = await admin.start("/bin/me")
            await admin.stop(str(info.pid))
    me = Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
    assert backend.calls == [("start", me), ("stop", me)]
    assert (info.uid, info.gid) == (me.uid, me.gid)


async def test_backend_errors_keep_their_kind_and_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            serving(Backend(), tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            with pytest.raises(HostError, match="no program matches 4242"):
                await admin.stop("4242")
            with pytest.raises(CodecError):
                await admin.kill("not a principal")
            with pytest.raises(HostError, match="no program matches"):
                await admin.wait("999")
            assert not admin.closed
            assert await admin.list() == []


async def test_a_backend_bug_is_an_internal_error_and_the_server_carries_on(
    tmp_path: Path,
) -> None:
    backend = Faulty("stop", ValueError("not a pid: 'x'"))
    internal = r"^internal error in the host \(ValueError\)$"  # and not the message
    with trio.fail_after(TIMEOUT), capture_logs() as logs:
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            with pytest.raises(HostError, match=internal):
                await admin.stop("1")
            assert not admin.closed
            assert await admin.host_name() == HOST  # the same connection
            with pytest.raises(HostError, match=internal):
                await admin.stop("2")
            assert await admin.list() == []
            async with AdminClient.connect(path) as other:  # another connection
                assert await other.host_name() == HOST
                info = await other.start("/bin/x")
                assert await other.list() == [info]
    failures = logged(logs, "admin_request_failed")
    assert [(e["op"], e["error_type"], e["error"], e["log_level"]) for e in failures] == [
        (STOP, "ValueError", "not a pid: 'x'", "error")
    ] * 2
    assert all("exc_info" not in entry for entry in failures)
    ops = [op for op, _ in backend.calls]
    assert ops == ["stop", "host_name", "stop", "list", "host_name", "start", "list"]


FAULTS: dict[str, tuple[Callable[[AdminClient, int], Awaitable[object]], Exception]] = {
    "start": (
        lambda a, fd: a.start("/bin/x", stdout=fd),
        FileNotFoundError(2, "No such file or directory"),
    ),
    "list": (lambda a, fd: a.list(), RuntimeError("the table is corrupt")),
    "wait": (lambda a, fd: a.wait("1"), KeyError(1)),
    "group": (lambda a, fd: a.stop("1"), ExceptionGroup("two", [HostError("a"), OSError()])),
}


@pytest.mark.parametrize("fail", sorted(FAULTS))
async def test_every_op_answers_a_backend_bug(tmp_path: Path, fail: str) -> None:
    call, error = FAULTS[fail]
    backend = Faulty("stop" if fail == "group" else fail, error)
    read_ends, write_ends = pipes(1)
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                serving(backend, tmp_path / "a.sock") as path,
                AdminClient.connect(path) as admin,
            ):
                assert await admin.host_name() == HOST  # the server has its end
                before = open_fds()
                kind = type(error).__name__
                with pytest.raises(HostError, match=rf"^internal error in the host \({kind}\)$"):
                    await call(admin, write_ends[0])
                assert not admin.closed
                assert await admin.host_name() == HOST
                assert open_fds() == before
    finally:
        for fd in write_ends:
            os.close(fd)
    assert_all_closed_elsewhere(read_ends)  # the server's copy was closed too


class Fatal(BaseException):
    """Not an Exception: the admin server must let it through."""


async def test_a_base_exception_from_the_backend_is_not_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    with trio.fail_after(TIMEOUT), pytest.RaisesGroup(Fatal, flatten_subgroups=True):
        async with serving(Faulty("stop", Fatal()), path), AdminClient.connect(path) as admin:
            with suppress(HostError):  # the host may hang up before this is cancelled
                await admin.stop("1")
            await trio.sleep_forever()  # until the host's failure cancels this
    assert not path.exists()


async def test_wait_blocks_until_the_program_exits(tmp_path: Path) -> None:
    backend = Backend()
    results: list[ProgramInfo] = []
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
            AdminClient.connect(path) as waiter,
        ):
            info = await admin.start("/bin/sleeper")

            async def wait() -> None:
                results.append(await waiter.wait(str(info.pid)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await backend.waiting.wait()
                assert results == []
                assert await admin.list() == [info]  # other connections are served
                await admin.stop(str(info.name))
    assert results == [attrs.evolve(info, exit_status=-signal.SIGTERM)]


async def test_a_client_giving_up_a_wait_cancels_it(tmp_path: Path) -> None:
    backend = Backend()
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
            AdminClient.connect(path) as waiter,
        ):
            info = await admin.start("/bin/sleeper")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter.wait, str(info.pid))
                await backend.waiting.wait()
                nursery.cancel_scope.cancel()
            assert waiter.closed
            await backend.wait_cancelled.wait()
            assert await admin.list() == [info]
            with pytest.raises(HostError, match="cancelled"):
                await waiter.list()


async def test_concurrent_clients(tmp_path: Path) -> None:
    backend = Backend()
    started: dict[int, ProgramInfo] = {}

    async def one_client(path: Path, i: int) -> None:
        async with AdminClient.connect(path) as admin:
            info = await admin.start(f"/bin/p{i}")
            assert info in await admin.list()
            assert await admin.host_name() == HOST
            started[i] = info

    with trio.fail_after(TIMEOUT):
        async with serving(backend, tmp_path / "a.sock") as path, trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one_client, path, i)
    assert len(started) == 20
    assert len({info.pid for info in started.values()}) == 20
    assert all(info.path == f"/bin/p{i}" for i, info in started.items())


async def test_a_response_may_be_bigger_than_a_request(tmp_path: Path) -> None:
    backend = Crowded(64, 32 * 1024)
    running = list(backend.programs.values())
    assert sum(len(auth.encode(info.name)) for info in running) > 2 * ADMIN_MAX_FRAME
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            assert await admin.list() == running
            assert await admin.host_name() == HOST


async def test_a_response_over_its_limit_is_an_error_answer(tmp_path: Path) -> None:
    backend = Crowded(17, 1024 * 1024)
    limit = (
        re.escape(f"{LIST}: a ")
        + r"\d+"
        + re.escape(f"-byte response is over the {ADMIN_MAX_RESPONSE}-byte limit")
    )
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            with pytest.raises(HostError, match=f"^{limit}$"):
                await admin.list()
            assert not admin.closed
            assert await admin.host_name() == HOST


# --------------------------------------------------------------------------------------
# Client-side checks
# --------------------------------------------------------------------------------------


async def test_connect_without_a_host(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(HostError, match=r"no Tao host is running at .*missing\.sock"):
            async with AdminClient.connect(tmp_path / "missing.sock"):
                pass
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(tmp_path / "stale.sock"))
        stale.close()
        with pytest.raises(HostError, match="no Tao host is running at"):
            async with AdminClient.connect(tmp_path / "stale.sock"):
                pass


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: a.start("/bin/x", "abc"), "not one string"),
        (lambda a: a.start(""), "empty"),
        (lambda a: a.start("/bin/x\0"), "NUL"),
        (lambda a: a.start("/bin/x", ["a"] * (MAX_ARGS + 1)), "arguments is over"),
        (lambda a: a.start("/bin/x", ["y" * 60_000] * 20), "request is over"),
        (lambda a: a.start("/bin/x", ["y" * 70_000]), "over the 65536-byte limit"),
        (lambda a: a.start("/bin/x", env={"A=B": "c"}), "contains '='"),
        (lambda a: a.start("/bin/x", env={"": "c"}), "empty"),
        (lambda a: a.start("/bin/x", stdout=-1), "file descriptor"),
        (lambda a: a.start("/bin/x", stdin=True), "file descriptor"),
        (lambda a: a.stop(""), "empty"),
        (lambda a: a.wait(12), "must be a string"),
    ],
    ids=[
        "args_string",
        "empty_path",
        "nul_path",
        "too_many_args",
        "request_too_big",
        "arg_too_long",
        "env_key_equals",
        "env_key_empty",
        "negative_fd",
        "bool_fd",
        "empty_selector",
        "int_selector",
    ],
)
async def test_client_refuses_bad_requests_before_sending(
    tmp_path: Path, call: Callable[[AdminClient], Awaitable[object]], match: str
) -> None:
    backend = Backend()
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as admin,
        ):
            with pytest.raises(HostError, match=match):
                await call(admin)
            assert backend.calls == []
            assert await admin.list() == []  # still usable


Script = Callable[[Any, Any], bytes | None]


@asynccontextmanager
async def fake_host(tmp_path: Path, script: Sequence[Script]) -> AsyncIterator[AdminClient]:
    """An AdminClient whose host answers request i with ``script[i](header, body)``.

    A script step returns the raw response bytes, or None to close the connection.
    """
    path = tmp_path / "fake.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen()

    async def host() -> None:
        conn, _ = await listener.accept()
        messages = MessageStream(trio.SocketStream(conn))
        try:
            for step in script:
                header = parse("RPCHeader", await messages.receive_message())
                body = parse("LinuxAdminRequest", await messages.receive_message())
                answer = step(header, body)
                if answer is None:
                    return
                await messages.stream.send_all(answer)
            await trio.sleep_forever()
        finally:
            await messages.aclose()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host)
            async with AdminClient.connect(path) as admin:
                yield admin
            nursery.cancel_scope.cancel()
    finally:
        listener.close()


def answer(
    op: str | None = None, seq: int | None = None, error: str | None = None, **fields: Any
) -> Script:
    def step(header: Any, body: Any) -> bytes:
        response = message_class("RPCHeader")(
            op=header.op if op is None else op, seq=header.seq if seq is None else seq
        )
        if error is not None:
            response.error = error
        payload = serialize(message_class("LinuxAdminResponse")(**fields))
        return encode_frame(serialize(response)) + encode_frame(b"" if error else payload)

    return step


async def test_client_raises_the_error_kind_the_host_names(tmp_path: Path) -> None:
    script = [
        answer(error="AuthorizationError: uid 7 may not stop it"),
        answer(error="ConfigError: bad: config"),
        answer(error="Mystery: what"),
        answer(),
    ]
    with trio.fail_after(TIMEOUT):
        async with fake_host(tmp_path, script) as admin:
            with pytest.raises(AuthorizationError, match=r"^uid 7 may not stop it$"):
                await admin.kill("1")
            with pytest.raises(ConfigError, match=r"^bad: config$"):
                await admin.stop("1")
            with pytest.raises(HostError, match=r"^Mystery: what$"):
                await admin.list()
            assert await admin.list() == []
            assert not admin.closed


def _fields() -> dict[str, Any]:
    return {
        "name": auth.encode(HOST),
        "pid": 1,
        "uid": 0,
        "gid": 0,
        "path": "/x",
        "program_hash": b"h",
        "program_id": 1,
    }


def _program(**changes: Any) -> Any:
    return message_class("LinuxAdminProgram")(**{**_fields(), **changes})


@pytest.mark.parametrize(
    ("call", "step", "match"),
    [
        (lambda a: a.list(), answer(seq=7), "answered call 1"),
        (lambda a: a.list(), answer(op=KILL), "answered call 1"),
        (lambda a: a.list(), lambda h, b: b"\xff\xff\xff\xff", "over the"),
        (
            # A body over the response limit (a header frame has a far lower one).
            lambda a: a.list(),
            lambda h, b: (
                encode_frame(serialize(message_class("RPCHeader")(op=h.op, seq=h.seq)))
                + struct.pack(">I", ADMIN_MAX_RESPONSE + 1)
            ),
            f"over the {ADMIN_MAX_RESPONSE}-byte limit",
        ),
        (
            lambda a: a.list(),
            lambda h, b: struct.pack(">I", 64 * 1024 + 1),
            "over the 65536-byte limit",
        ),
        (
            lambda a: a.list(),
            lambda h, b: encode_frame(b"\x01\x02") + encode_frame(b""),
            "malformed|missing",
        ),
        (lambda a: a.start("/x"), answer(), "1 program"),
        (lambda a: a.wait("1"), answer(programs=[_program()]), "no exit status"),
        (lambda a: a.host_name(), answer(), "should hold a name"),
        (lambda a: a.host_name(), answer(name=b"\x00junk"), "bad principal"),
        (lambda a: a.shutdown(), answer(name=auth.encode(HOST)), "should be empty"),
        (
            lambda a: a.list(),
            answer(programs=[_program(name=b"x")]),
            "bad program name",
        ),
        (
            # A program id the CLI would send back as a selector: "id:" + this.
            lambda a: a.list(),
            answer(programs=[_program(instance_id="x" * 32 + " or pid:1")]),
            "program id is not 32 lowercase hex digits",
        ),
    ],
    ids=[
        "wrong_seq",
        "wrong_op",
        "oversized_frame",
        "frame_over_the_response_limit",
        "header_over_its_limit",
        "garbage_header",
        "start_without_program",
        "wait_without_status",
        "no_host_name",
        "bad_host_name",
        "shutdown_not_empty",
        "bad_program_name",
        "bad_program_id",
    ],
)
async def test_client_closes_on_a_broken_answer(
    tmp_path: Path,
    call: Callable[[AdminClient], Awaitable[object]],
    step: Script,
    match: str,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with fake_host(tmp_path, [step]) as admin:
            with pytest.raises(ProtocolError, match=match):
                await call(admin)
            assert admin.closed
            with pytest.raises(HostError):
                await admin.list()


async def test_client_reports_a_host_that_hangs_up(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with fake_host(tmp_path, [lambda h, b: None]) as admin:
            with pytest.raises(HostError, match="closed the connection"):
                await admin.list()
            assert admin.closed


# --------------------------------------------------------------------------------------
# Broken clients: each drops only its own connection and leaks nothing
# --------------------------------------------------------------------------------------


def _start(**fields: Any) -> bytes:
    return request_bytes(START, path="/bin/x", **fields)


_BAD_UTF8_PATH = encode_frame(
    serialize(message_class("RPCHeader")(op=START, seq=1))
) + encode_frame(bytes([0x0A, 2, 0xFF, 0xFE]))

BAD_REQUESTS = {
    # name: (bytes, number of fds sent with them, half-close afterwards)
    "garbage": (b"GET / HTTP/1.1\r\n\r\n", 1, False),
    "garbage_header": (encode_frame(b"\xff\xff\xff") + encode_frame(b""), 0, False),
    "garbage_body": (
        encode_frame(serialize(message_class("RPCHeader")(op=LIST, seq=1)))
        + encode_frame(b"\xff\xff"),
        1,
        False,
    ),
    "oversized": (struct.pack(">I", ADMIN_MAX_FRAME + 1) + b"x" * 100, 2, False),
    # A header frame over 4 KiB: a header names an operation, nothing more.
    "big_header": (
        encode_frame(serialize(message_class("RPCHeader")(op=LIST, seq=1)) + b"\0" * 5000)
        + encode_frame(b""),
        0,
        False,
    ),
    "announced_fd_none_came": (_start(fd_count=1, stdio_mask=2), 0, False),
    "no_body": (encode_frame(serialize(message_class("RPCHeader")(op=LIST, seq=1))), 0, True),
    "mid_frame": (struct.pack(">I", 50) + b"x" * 10, 1, True),
    "unknown_op": (request_bytes("LinuxHost.Frobnicate"), 0, False),
    "fds_on_list": (request_bytes(LIST), 1, False),
    "fds_on_kill": (request_bytes(KILL, selector="1", fd_count=1, stdio_mask=2), 1, False),
    "four_fds": (_start(fd_count=3, stdio_mask=7), 4, False),
    "six_fds": (_start(fd_count=3, stdio_mask=7), 6, False),
    "fewer_fds": (_start(fd_count=2, stdio_mask=6), 1, False),
    "more_fds": (_start(fd_count=1, stdio_mask=2), 2, False),
    "unannounced_fds": (_start(), 1, False),
    "mask_mismatch": (_start(fd_count=1, stdio_mask=3), 1, False),
    "bad_count": (_start(fd_count=4, stdio_mask=15), 3, False),
    "bad_utf8": (_BAD_UTF8_PATH, 0, False),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_request_drops_only_that_connection(tmp_path: Path, case: str) -> None:
    data, fd_count, half_close = BAD_REQUESTS[case]
    backend = Backend()
    with trio.fail_after(TIMEOUT):
        async with (
            serving(backend, tmp_path / "a.sock") as path,
            AdminClient.connect(path) as other,
        ):
            await other.list()
            before = open_fds()
            read_ends, write_ends = pipes(fd_count)
            sock = await raw_connect(path)
            try:
                await send_raw(sock, data, write_ends)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            finally:
                for fd in write_ends:
                    os.close(fd)
            await assert_dropped(sock)
            sock.close()
            assert_all_closed_elsewhere(read_ends)
            assert open_fds() == before
            info = await other.start("/bin/still-here")
            assert await other.list() == [info]
    assert all(op in ("list", "start") for op, _ in backend.calls)


async def test_fds_arriving_in_separate_messages_are_refused(tmp_path: Path) -> None:
    """Four fds spread over two messages, before any request is complete, are too many."""
    with trio.fail_after(TIMEOUT):
        async with serving(Backend(), tmp_path / "a.sock") as path:
            before = open_fds()
            read_ends, write_ends = pipes(4)
            sock = await raw_connect(path)
            data = _start(fd_count=3, stdio_mask=7)
            await send_raw(sock, data[:3], write_ends[:2])
            await trio.testing.wait_all_tasks_blocked()
            await send_raw(sock, data[3:10], write_ends[2:])  # still no whole request
            for fd in write_ends:
                os.close(fd)
            await assert_dropped(sock)
            sock.close()
            assert_all_closed_elsewhere(read_ends)
            assert open_fds() == before


@pytest.mark.parametrize(
    ("op", "fields", "match"),
    [
        (START, {}, "needs a path"),
        (START, {"path": ""}, "empty"),
        (START, {"path": "/bin/x", "env": ["NOEQUALS"]}, "not KEY=VALUE"),
        (START, {"path": "/bin/x", "env": ["=v"]}, "empty"),
        (START, {"path": "/bin/x", "env": ["A=1", "A=2"]}, "twice"),
        (START, {"path": "/bin/x", "args": ["a"] * (MAX_ARGS + 1)}, "arguments is over"),
        (START, {"path": "/bin/x", "dir": ""}, "empty"),
        (START, {"path": "/bin/x", "dir": "/a\0b"}, "NUL"),
        (STOP, {}, "needs a selector"),
        (WAIT, {"selector": ""}, "empty"),
    ],
    ids=[
        "no_path",
        "empty_path",
        "env_no_equals",
        "env_empty_key",
        "env_twice",
        "too_many_args",
        "empty_dir",
        "nul_dir",
        "no_selector",
        "empty_selector",
    ],
)
async def test_invalid_requests_are_answered_with_an_error(
    tmp_path: Path, op: str, fields: dict[str, Any], match: str
) -> None:
    backend = Backend()
    if op == START:  # every start carries a stdout: it must be closed on the error path too
        fields = {**fields, "fd_count": 1, "stdio_mask": 2}
    with trio.fail_after(TIMEOUT):
        async with serving(backend, tmp_path / "a.sock") as path:
            before = open_fds()
            read_ends, write_ends = pipes(1 if op == START else 0)
            sock = await raw_connect(path)
            messages = MessageStream(trio.SocketStream(sock))
            try:
                await send_raw(sock, request_bytes(op, **fields), write_ends)
                header, body = await read_response(messages)
                assert (header.op, header.seq) == (op, 1)
                assert header.error.startswith("HostError: ")
                assert match in header.error
                assert body == b""
                await messages.stream.send_all(request_bytes(HOST_NAME, seq=2))
                header, body = await read_response(messages)
                assert not header.HasField("error")
                assert (header.op, header.seq) == (HOST_NAME, 2)
                assert parse("LinuxAdminResponse", body).name == auth.encode(HOST)
                sock.shutdown(socket.SHUT_WR)
                with pytest.raises(trio.EndOfChannel):  # the server is done with it
                    await messages.receive_message()
            finally:
                await messages.aclose()
                for fd in write_ends:
                    os.close(fd)
            assert_all_closed_elsewhere(read_ends)
            assert open_fds() == before
    assert [op for op, _ in backend.calls] == ["host_name"]


# --------------------------------------------------------------------------------------
# Limits: connections at once, and time to send a request
# --------------------------------------------------------------------------------------


def test_the_limits_default_to_the_constants() -> None:
    assert (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_UID, REQUEST_TIMEOUT) == (256, 32, 10)
    defaults = serve_admin.__kwdefaults__
    assert defaults is not None
    assert defaults["max_connections"] == MAX_CONNECTIONS
    assert defaults["max_per_uid"] == MAX_CONNECTIONS_PER_UID
    assert defaults["request_timeout"] == REQUEST_TIMEOUT


@pytest.mark.parametrize(
    "options",
    [
        {"max_connections": 0},
        {"max_connections": 2.0},
        {"max_per_uid": -1},
        {"max_per_uid": True},
        {"request_timeout": 0},
        {"request_timeout": -1.0},
        {"request_timeout": float("nan")},
        {"request_timeout": True},
        {"request_timeout": "10"},
    ],
)
async def test_limits_must_be_positive(tmp_path: Path, options: dict[str, Any]) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(ValueError, match="must be a positive"):
        await serve_admin(Backend(), tmp_path / "a.sock", **options)
    assert not (tmp_path / "a.sock").exists()


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_per_uid": 3}, f"uid {os.getuid()} holds 3 admin connections, its limit"),
        ({"max_connections": 3, "max_per_uid": 5}, "the host serves 3 admin connections"),
    ],
    ids=["per_uid", "total"],
)
async def test_connections_over_a_limit_are_closed_at_once(
    tmp_path: Path, limits: dict[str, int], reason: str
) -> None:
    backend = Backend()
    before = open_fds()
    with trio.fail_after(TIMEOUT), capture_logs() as logs:
        async with (
            serving(backend, tmp_path / "a.sock", **limits) as path,
            AdminClient.connect(path) as first,
            AdminClient.connect(path) as second,
        ):
            third = await raw_connect(path)
            messages = MessageStream(trio.SocketStream(third))
            try:
                assert await first.list() == []
                assert await second.host_name() == HOST
                await messages.stream.send_all(request_bytes(HOST_NAME))
                header, _ = await read_response(messages)
                assert not header.HasField("error")
                held = open_fds()
                await assert_refused(path)
                assert open_fds() == held  # the server kept nothing of it
                third.shutdown(socket.SHUT_WR)  # hang up, and wait for the server to close
                with pytest.raises(trio.EndOfChannel):
                    await messages.receive_message()
            finally:
                await messages.aclose()
            async with AdminClient.connect(path) as fourth:  # there is room for one
                assert await fourth.host_name() == HOST
                await assert_refused(path)  # and only one: refused ones did not count
                assert await first.list() == []
                assert await second.host_name() == HOST
    assert open_fds() == before
    refused = logged(logs, "admin_connection_refused")
    # Four refusals (two in each assert_refused), one burst: one line, for the first.
    assert len(refused) == 1, refused
    assert refused[0]["events"] == 1
    assert refused[0]["peer_uid"] == os.getuid()
    assert refused[0]["reason"].startswith(reason)


async def test_a_host_whose_listen_queue_is_full_is_too_busy_not_connected(
    tmp_path: Path,
) -> None:
    """A unix socket's connect fails with EAGAIN when its listener's queue is full;
    trio took that for a connection under way and AdminClient.connect returned a
    client that was not connected. Now it retries briefly, then says the host is
    too busy."""
    path = tmp_path / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued: list[socket.socket] = []
    try:
        listener.bind(str(path))
        listener.listen(0)  # and never accepts
        while True:  # fill its queue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(path))
            except BlockingIOError:
                sock.close()
                break
            queued.append(sock)
            assert len(queued) < 100
        with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="is too busy"):
            async with AdminClient.connect(path):
                pass
        # Once the host takes a connection from its queue, there is room again.
        taken, _ = listener.accept()
        try:
            with trio.fail_after(TIMEOUT):
                async with AdminClient.connect(path) as client:
                    assert not client.closed
        finally:
            taken.close()
    finally:
        for sock in queued:
            sock.close()
        listener.close()


async def test_a_flood_of_refused_connections_logs_one_line(tmp_path: Path) -> None:
    """Each refused connection used to log a line: a local user could write the
    host's log as fast as it could connect (150,000 lines, 24 MB in one attack).
    Now a burst of refusals is one line (and one a minute while it lasts)."""
    backend = Backend()
    with trio.fail_after(TIMEOUT), capture_logs() as logs:
        async with (
            serving(backend, tmp_path / "a.sock", max_connections=1, max_per_uid=1) as path,
            AdminClient.connect(path) as holder,
        ):
            assert await holder.host_name() == HOST
            for _ in range(300):
                sock = await raw_connect(path)
                try:
                    await assert_dropped(sock)
                finally:
                    sock.close()
            assert await holder.host_name() == HOST
    refused = logged(logs, "admin_connection_refused")
    assert len(refused) == 1, len(refused)
    assert refused[0]["events"] == 1
    assert refused[0]["reason"] == "the host serves 1 admin connections, its limit"


STALLED = _start(fd_count=1, stdio_mask=2)
HEADER_END = 4 + len(serialize(message_class("RPCHeader")(op=START, seq=1)))


@pytest.mark.parametrize(
    "cut",
    [2, HEADER_END, HEADER_END + 3, len(STALLED) - 1],
    ids=["half_a_header", "the_header", "half_a_body_length", "all_but_a_byte"],
)
async def test_a_request_that_stalls_is_dropped(
    tmp_path: Path, mock_clock: trio.testing.MockClock, cut: int
) -> None:
    backend = Backend()
    with trio.fail_after(TIMEOUT), capture_logs() as logs:
        async with (
            serving_on_a_mock_clock(
                backend, tmp_path / "a.sock", mock_clock, request_timeout=0.5
            ) as path,
            AdminClient.connect(path) as used,
            AdminClient.connect(path) as fresh,
        ):
            assert await used.list() == []
            before = open_fds()
            read_ends, write_ends = pipes(1)
            sock = await raw_connect(path)
            try:
                await send_raw(sock, STALLED[:cut], write_ends)
            finally:
                for fd in write_ends:
                    os.close(fd)
            sent = trio.current_time()
            await assert_dropped(sock)
            assert trio.current_time() - sent >= 0.5  # on the mock clock
            sock.close()
            assert_all_closed_elsewhere(read_ends)
            assert open_fds() == before
            # Idle all that time, since connecting or since a request: still served.
            assert await fresh.host_name() == HOST
            assert await used.list() == []
    assert [op for op, _ in backend.calls] == ["list", "host_name", "list"]
    (drop,) = logged(logs, "admin_bad_request")
    assert drop["error"] == "the request did not arrive within 0.5 s"


async def test_the_time_limit_is_per_request(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_on_a_mock_clock(
            Backend(), tmp_path / "a.sock", mock_clock, request_timeout=1
        ) as path:
            sock = await raw_connect(path)
            messages = MessageStream(trio.SocketStream(sock))
            try:
                for seq in (1, 2):  # each in 0.8 s, 1.6 s in all
                    data = request_bytes(HOST_NAME, seq=seq)
                    for start, end in ((0, 2), (2, 7), (7, len(data))):
                        if start:
                            await let_pass(mock_clock, 0.4)
                        await messages.stream.send_all(data[start:end])
                    header, _ = await read_response(messages)
                    assert (header.op, header.seq, header.HasField("error")) == (
                        HOST_NAME,
                        seq,
                        False,
                    )
                    await let_pass(mock_clock, 2)  # idle between requests
                data = request_bytes(HOST_NAME, seq=3)
                await messages.stream.send_all(data[:2])
                first = trio.current_time()
                await let_pass(mock_clock, 0.6)
                await messages.stream.send_all(data[2:7])  # more bytes do not reset the clock
                with pytest.raises(trio.EndOfChannel):
                    await messages.receive_message()
                assert 1 <= trio.current_time() - first < 1.6  # on the mock clock
            finally:
                await messages.aclose()


async def test_a_request_begun_with_the_one_before_must_arrive_in_time(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving_on_a_mock_clock(
            Backend(), tmp_path / "a.sock", mock_clock, request_timeout=1
        ) as path:
            sock = await raw_connect(path)
            messages = MessageStream(trio.SocketStream(sock))
            try:
                await messages.stream.send_all(request_bytes(HOST_NAME) + request_bytes(LIST)[:3])
                header, _ = await read_response(messages)
                assert (header.op, header.HasField("error")) == (HOST_NAME, False)
                with pytest.raises(trio.EndOfChannel):
                    await messages.receive_message()
            finally:
                await messages.aclose()


# --------------------------------------------------------------------------------------
# The socket file
# --------------------------------------------------------------------------------------


async def test_socket_mode_and_removal_on_exit(tmp_path: Path) -> None:
    default = tmp_path / "default.sock"
    shared = tmp_path / "shared.sock"
    with trio.fail_after(TIMEOUT):
        async with serving(Backend(), default), serving(Backend(), shared, mode=0o666):
            assert default.is_socket()
            assert default.stat().st_mode & 0o777 == 0o600
            assert shared.stat().st_mode & 0o777 == 0o666
    assert not default.exists()
    assert not shared.exists()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.is_socket()
    with trio.fail_after(TIMEOUT):
        async with serving(Backend(), path), AdminClient.connect(path) as admin:
            assert await admin.host_name() == HOST
    assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    path.write_bytes(b"precious")
    with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="not a socket"):
        await serve_admin(Backend(), path)
    assert path.read_bytes() == b"precious"


async def test_a_second_server_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    first = Backend()
    with trio.fail_after(TIMEOUT):
        async with serving(first, tmp_path / "a.sock") as path:
            with pytest.raises(HostError, match="another Tao host is running at"):
                await serve_admin(Backend(), path)
            assert path.is_socket()
            async with AdminClient.connect(path) as admin:
                await admin.host_name()
            assert first.calls == [("host_name", None)]


async def test_a_missing_directory_is_a_host_error(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="cannot serve"):
        await serve_admin(Backend(), tmp_path / "nowhere" / "a.sock")


async def test_a_socket_file_replaced_meanwhile_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(TIMEOUT):
            async with serving(Backend(), path):
                path.unlink()
                other.bind(str(path))
        assert path.is_socket()
    finally:
        other.close()


# --------------------------------------------------------------------------------------
# Another user
# --------------------------------------------------------------------------------------

_NOBODY_CLIENT = """
import sys, trio
from taonet.hosts.linux._admin_client import AdminClient

async def main():
    try:
        async with AdminClient.connect(sys.argv[1]) as admin:
            running = await admin.list()
            print("listed", len(running))
            await admin.kill(sys.argv[2])
    except Exception as exc:
        print("raised", type(exc).__name__, exc)
    else:
        print("killed")

trio.run(main)
"""


def _nobody_env() -> dict[str, str]:
    root = Path(taonet.__file__).resolve().parents[1]
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join([str(root), *site.getsitepackages()]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@pytest.fixture(scope="module")
def nobody_python() -> str:
    """An interpreter that uid 65534 can run and that imports taonet."""
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import taonet.hosts.linux._admin"],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                env=_nobody_env(),
                cwd="/",
                capture_output=True,
                timeout=60,
                check=False,
            )
        except PermissionError:
            continue  # e.g. an interpreter under /root
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no {version} that uid {NOBODY} can run and import taonet with")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="taonet-admin-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _run_as_nobody(python: str, *args: str) -> str:
    result = await trio.run_process(
        [python, "-c", _NOBODY_CLIENT, *args],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env=_nobody_env(),
        cwd="/",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_another_user_is_seen_and_refused(nobody_python: str, shared_dir: Path) -> None:
    backend = Backend(owner_uid=0)
    with trio.fail_after(60):
        async with serving(backend, shared_dir / "a.sock", mode=0o666) as path:
            async with AdminClient.connect(path) as admin:
                info = await admin.start("/bin/roots")
            assert info.uid == 0
            output = await _run_as_nobody(nobody_python, str(path), str(info.pid))
            async with AdminClient.connect(path) as admin:
                assert await admin.list() == [info]  # still running
    lines = output.splitlines()
    assert lines[0] == "listed 0"  # root's programs are not listed to others (A1 F7)
    assert lines[1].startswith("raised AuthorizationError uid 65534 may not stop"), output
    kill_callers = [caller for op, caller in backend.calls if op == "kill"]
    assert len(kill_callers) == 1
    assert kill_callers[0] is not None
    assert (kill_callers[0].uid, kill_callers[0].gid) == (NOBODY, NOBODY)
    assert kill_callers[0].pid not in (0, os.getpid())


async def test_each_uid_has_its_own_connection_cap(nobody_python: str, shared_dir: Path) -> None:
    backend = Backend()
    with trio.fail_after(60):
        async with (
            serving(backend, shared_dir / "a.sock", mode=0o666, max_per_uid=1) as path,
            AdminClient.connect(path) as admin,
        ):
            assert await admin.list() == []  # root's one connection
            await assert_refused(path)  # root's second
            output = await _run_as_nobody(nobody_python, str(path), "1")
            assert await admin.host_name() == HOST
    assert output.splitlines() == ["listed 0", "raised HostError no program matches 1"]
    assert [(op, caller and caller.uid) for op, caller in backend.calls] == [
        ("list", None),
        ("list", None),
        ("kill", NOBODY),
        ("host_name", None),
    ]


async def test_the_default_mode_keeps_other_users_out(nobody_python: str, shared_dir: Path) -> None:
    backend = Backend()
    with trio.fail_after(60):
        async with serving(backend, shared_dir / "a.sock") as path:
            output = await _run_as_nobody(nobody_python, str(path), "1")
    assert output.startswith("raised HostError cannot reach the Tao host"), output
    assert backend.calls == []


async def test_a_graceful_close_sends_the_answers_under_way_and_closes_the_rest(
    tmp_path: Path,
) -> None:
    backend = Backend()
    stop = trio.Event()
    path = tmp_path / "a.sock"
    returned = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_admin(backend, path, stop=stop, task_status=task_status)
        returned.set()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            async with (
                AdminClient.connect(path) as idle,
                AdminClient.connect(path) as waiter,
            ):
                info = await idle.start("/bin/program")
                answers: list[ProgramInfo] = []

                async def wait() -> None:
                    answers.append(await waiter.wait(str(info.pid)))

                nursery.start_soon(wait)
                await backend.waiting.wait()
                stop.set()
                await trio.testing.wait_all_tasks_blocked()
                # Nobody new; the idle connection is closed; the wait is still served.
                assert not path.exists()
                with pytest.raises(HostError):
                    async with AdminClient.connect(path):
                        pass
                with pytest.raises(HostError):
                    await idle.host_name()
                assert not returned.is_set()
                await backend.stop_programs(str(info.pid), Caller(uid=0, gid=0, pid=1))
                await returned.wait()
    assert [(a.pid, a.exit_status) for a in answers] == [(info.pid, -signal.SIGTERM)]
    assert not backend.wait_cancelled.is_set()


async def test_a_connection_that_sends_no_request_is_closed_when_idle(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    backend = Backend()
    with trio.fail_after(600), capture_logs() as logs:  # on the mock clock
        async with (
            serving_on_a_mock_clock(
                backend, tmp_path / "a.sock", mock_clock, idle_timeout=30
            ) as path,
            AdminClient.connect(path) as busy,
        ):
            silent = await raw_connect(path)
            opened = trio.current_time()
            for _ in range(5):  # requests keep a connection: busy asks every 20 s
                await trio.sleep(20)
                assert await busy.host_name() == HOST
                if trio.current_time() - opened < 30:
                    continue
                if silent.fileno() != -1:
                    await assert_dropped(silent)  # closed at 30 s, already
                    silent.close()
            assert silent.fileno() == -1
    (idle,) = logged(logs, "admin_connection_idle")
    assert idle["reason"] == "no request for 30 s"


_HOLDER = """
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    held.append(sock)
print("holding", flush=True)
sys.stdin.read()
"""


async def test_other_users_cannot_lock_root_and_the_owner_out(
    nobody_python: str, shared_dir: Path
) -> None:
    """Two other uids each fill their per-uid share, enough to fill the whole cap;
    root (the host's owner here) still reaches the host, to stop it."""
    backend = Backend()
    holders: list[trio.Process] = []
    with trio.fail_after(60), capture_logs() as logs:
        async with serving(
            backend, shared_dir / "a.sock", mode=0o666, max_connections=4, max_per_uid=2
        ) as path:
            try:
                for uid in (NOBODY, NOBODY - 1):
                    holder = await trio.lowlevel.open_process(
                        [nobody_python, "-c", _HOLDER, str(path), "2"],
                        user=uid,
                        group=uid,
                        extra_groups=[],
                        env=_nobody_env(),
                        cwd="/",
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                    holders.append(holder)
                    assert holder.stdout is not None
                    assert await holder.stdout.receive_some() == b"holding\n"
                async with AdminClient.connect(path) as admin:
                    assert await admin.host_name() == HOST
            finally:
                for holder in holders:
                    assert holder.stdin is not None
                    await holder.stdin.aclose()
                    await holder.wait()
    refused = logged(logs, "admin_connection_refused")
    # Two refusals, one burst: one line.
    assert [entry["peer_uid"] for entry in refused] == [NOBODY - 1]
    assert all("other than root and its owner" in entry["reason"] for entry in refused)
