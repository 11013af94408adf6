"""A client process that throws malformed requests and odd descriptors at a host's
admin socket: ``hostile_admin_client SOCKET PROGRAM WORKDIR``.

Each case prints one JSON line ``{"case", "outcome", ...}``: ``dropped`` when the host
closed the connection without answering, ``answered`` (with the error, if any) or
``exited`` (a started program's exit status). It runs as its own process so that the
host's descriptor count (the test's) holds only what the host itself keeps.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from array import array
from typing import Any

import trio

from taonet import TaoError
from taonet.hosts.linux import AdminClient
from taonet.wire import encode_frame, message_class, serialize

START = "LinuxHost.StartHostedProgram"
LIST = "LinuxHost.ListHostedPrograms"


def emit(case: str, outcome: str, **fields: Any) -> None:
    print(json.dumps({"case": case, "outcome": outcome, **fields}), flush=True)


def request(op: str, **fields: Any) -> bytes:
    header = serialize(message_class("RPCHeader")(op=op, seq=1))
    return encode_frame(header) + encode_frame(
        serialize(message_class("LinuxAdminRequest")(**fields))
    )


def raw_case(path: str, case: str, data: bytes, fds: list[int], *, half_close: bool) -> None:
    """Send ``data`` with ``fds``; report whether the host answered or dropped us."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        try:
            ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
            sock.sendmsg([data], ancdata)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
        emit(case, "dropped" if not answer else "answered", fds=len(fds))


def malformed(path: str, program: str) -> None:
    start = request(START, path=program, fd_count=3, stdio_mask=7)
    pipes = [os.pipe() for _ in range(200)]
    spare = [fd for pair in pipes for fd in pair]
    try:
        raw_case(path, "garbage", b"GET / HTTP/1.1\r\n\r\n" * 10, [], half_close=False)
        raw_case(path, "truncated", struct.pack(">I", 50) + b"x" * 10, [], half_close=True)
        raw_case(path, "truncated_header", b"\x00\x00", [], half_close=True)
        raw_case(path, "oversized", b"\xff\xff\xff\xff" + b"x" * 100, [], half_close=False)
        big = encode_frame(serialize(message_class("RPCHeader")(op=LIST, seq=1)) + bytes(5000))
        raw_case(path, "big_header", big + encode_frame(b""), [], half_close=False)
        raw_case(
            path,
            "body_over_1MiB",
            encode_frame(b"") + struct.pack(">I", (1 << 20) + 1),
            [],
            half_close=False,
        )
        raw_case(path, "four_fds", start, spare[:4], half_close=False)
        raw_case(path, "two_hundred_fds", start, spare[:200], half_close=False)
        raw_case(path, "fds_with_garbage", b"\x00\x00\x00\x03abc", spare[:3], half_close=True)
        raw_case(path, "no_fds_where_announced", start, [], half_close=False)
        raw_case(path, "fewer_fds_than_announced", start, spare[:2], half_close=False)
        raw_case(path, "fds_on_list", request(LIST), spare[:1], half_close=False)
        raw_case(path, "fds_then_nothing", b"", spare[:3], half_close=True)
    finally:
        for fd in spare:
            os.close(fd)


async def odd_fds(path: str, program: str, workdir: str) -> None:
    """Valid start requests whose descriptors are not what a program expects."""
    directory = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    sock_a, sock_b = socket.socketpair()
    dead_r, dead_w = os.pipe()
    os.close(dead_r)  # a pipe nobody reads: writes fail with EPIPE
    zero = os.open("/dev/zero", os.O_RDWR)
    opath = os.open(workdir, os.O_PATH)
    cases = {
        "directory_as_stdout": {"stdout": directory},
        "directory_as_all": {"stdin": directory, "stdout": directory, "stderr": directory},
        "socket_as_stdin": {"stdin": sock_a.fileno(), "stdout": sock_a.fileno()},
        "closed_pipe_as_stdout": {"stdout": dead_w, "stderr": dead_w},
        "dev_zero_as_stdio": {"stdin": zero, "stdout": zero, "stderr": zero},
        "o_path_as_stdin": {"stdin": opath},
    }
    try:
        async with AdminClient.connect(path) as admin:
            for case, stdio in cases.items():
                try:
                    info = await admin.start(program, ["name"], cwd=workdir, **stdio)  # type: ignore[arg-type]
                except TaoError as exc:
                    emit(case, "answered", error=f"{type(exc).__name__}: {exc}")
                    continue
                done = await admin.wait(str(info.pid))
                emit(case, "exited", status=done.exit_status)
            # The same connection still works.
            emit("after", "answered", programs=len(await admin.list()))
    finally:
        for fd in (directory, dead_w, zero, opath):
            os.close(fd)
        sock_a.close()
        sock_b.close()


def main() -> None:
    path, program, workdir = sys.argv[1:4]
    malformed(path, program)
    trio.run(odd_fds, path, program, workdir)


if __name__ == "__main__":
    main()
