"""A hosted program finds its host from CLOUDPROXY_TAO_HOST_*: real child processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import HostError
from taonet.hosts import SoftHost, open_host_channel, serve_tao_rpc
from tests.tao_doubles import program

CHILD = """
import trio
from taonet.hosts import parent

async def main():
    async with parent() as tao:
        name = await tao.get_tao_name()
        data, policy = await tao.unseal(await tao.seal(b"hosted secret"))
        print(name)
        print(data.decode(), policy)

trio.run(main)
"""


async def run_child(env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> list[str]:
    result = await trio.run_process(
        [sys.executable, "-c", CHILD],
        env={**os.environ, **env},
        pass_fds=pass_fds,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode().splitlines()


def pipe_channel() -> tuple[trio.StapledStream[Any, Any], int, int]:
    """A Tao channel over two pipes: the host's end, and the child's read and write fds
    (for the caller to pass to the child, then close)."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    FdStream = trio.lowlevel.FdStream
    return trio.StapledStream(FdStream(to_child_w), FdStream(to_parent_r)), to_child_r, to_parent_w


async def test_pipe_channel(host: SoftHost) -> None:
    child_name = program(host.name, 1)
    stream, to_child_r, to_parent_w = pipe_channel()
    env = {
        "CLOUDPROXY_TAO_HOST_TYPE": "root",
        "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe",
        "CLOUDPROXY_TAO_HOST_SPEC": f"tao::RPC+tao::FDMessageChannel({to_child_r}, {to_parent_w})",
    }
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, stream, host.tao_for(child_name))
            try:
                lines = await run_child(env, pass_fds=(to_child_r, to_parent_w))
            finally:
                os.close(to_child_r)
                os.close(to_parent_w)
    assert lines == [str(child_name), "hosted secret self"]


# Started as the original CloudProxy host starts a program: descriptors 3 and 4, and
# exactly two variables (no CLOUDPROXY_TAO_HOST_TYPE). The launcher moves the pipe
# ends to 3 and 4 and executes the program with nothing else in its environment.
LAUNCHER = """
import fcntl, os, sys
read_fd, write_fd, child = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (read_fd, write_fd)]
for fd in (read_fd, write_fd):
    os.close(fd)
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in high:
    os.close(fd)
os.execve(sys.executable, [sys.executable, "-c", child], {
    "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe",
    "CLOUDPROXY_TAO_HOST_SPEC": "tao::RPC+tao::FDMessageChannel(3, 4)",
})
"""

ORIGINAL_HOST_CHILD = """
import trio
from taonet.hosts import parent

# What exec received (Python adds LC_CTYPE to os.environ by itself).
with open("/proc/self/environ", "rb") as f:
    names = sorted(item.split(b"=", 1)[0].decode() for item in f.read().split(b"\\0") if item)

async def main():
    async with parent() as tao:
        name = await tao.get_tao_name()
        data, policy = await tao.unseal(await tao.seal(b"hosted secret"))
        random = await tao.get_random_bytes(16)
        print(",".join(names))
        print(name)
        print(data.decode(), policy, len(random))

trio.run(main)
"""


async def test_a_program_the_original_host_started_finds_its_host(host: SoftHost) -> None:
    child_name = program(host.name, 2)
    stream, to_child_r, to_parent_w = pipe_channel()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, stream, host.tao_for(child_name))
            try:
                result = await trio.run_process(
                    [
                        sys.executable,
                        "-c",
                        LAUNCHER,
                        str(to_child_r),
                        str(to_parent_w),
                        ORIGINAL_HOST_CHILD,
                    ],
                    env={},
                    pass_fds=(to_child_r, to_parent_w),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            finally:
                os.close(to_child_r)
                os.close(to_parent_w)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().splitlines() == [
        "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE,CLOUDPROXY_TAO_HOST_SPEC",
        str(child_name),
        "hosted secret self 16",
    ]


async def test_unix_channel(host: SoftHost, tmp_path: Path) -> None:
    path = tmp_path / "tao.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen()
    listener = trio.SocketListener(sock)
    env = {
        "CLOUDPROXY_TAO_HOST_TYPE": "stacked",
        "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "unix",
        "CLOUDPROXY_TAO_HOST_SPEC": str(path),
    }

    async def serve_one() -> None:
        stream = await listener.accept()
        await serve_tao_rpc(stream, host.tao_for())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            lines = await run_child(env)
    await listener.aclose()
    assert lines == [str(host.name), "hosted secret self"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no Tao host"),
        (
            {"CLOUDPROXY_TAO_HOST_TYPE": "none", "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe"},
            "no Tao host",
        ),
        (
            {
                "CLOUDPROXY_TAO_HOST_TYPE": "none",
                "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe",
                "CLOUDPROXY_TAO_HOST_SPEC": "tao::RPC+tao::FDMessageChannel(3, 4)",
            },
            "HOST_TYPE is 'none'",
        ),
        ({"CLOUDPROXY_TAO_HOST_TYPE": "root"}, "CHANNEL_TYPE is not set"),
        (
            {"CLOUDPROXY_TAO_HOST_TYPE": "root", "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe"},
            "SPEC is not set",
        ),
        ({"CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe"}, "SPEC is not set"),
        (
            {
                "CLOUDPROXY_TAO_HOST_TYPE": "root",
                "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe",
                "CLOUDPROXY_TAO_HOST_SPEC": "tao::RPC+tao::FDMessageChannel(3)",
            },
            "is not tao::RPC",
        ),
        (
            {
                "CLOUDPROXY_TAO_HOST_TYPE": "root",
                "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "pipe",
                "CLOUDPROXY_TAO_HOST_SPEC": "tao::RPC+tao::FDMessageChannel(900, 901)",
            },
            "not open",
        ),
        (
            {
                "CLOUDPROXY_TAO_HOST_TYPE": "root",
                "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "unix",
                "CLOUDPROXY_TAO_HOST_SPEC": "/nonexistent/tao.sock",
            },
            "cannot reach",
        ),
        (
            {
                "CLOUDPROXY_TAO_HOST_TYPE": "root",
                "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "file",
                "CLOUDPROXY_TAO_HOST_SPEC": "tao::RPC+tao::FileMessageChannel(/nonexistent)",
            },
            "cannot open",
        ),
        (
            {
                "CLOUDPROXY_TAO_HOST_TYPE": "root",
                "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "tpm2",
                "CLOUDPROXY_TAO_HOST_SPEC": "x",
            },
            "not a channel",
        ),
    ],
)
async def test_bad_environments_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(HostError, match=message):
        await open_host_channel(env)


def test_child_without_a_host_fails_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPROXY_TAO_HOST")}
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "no Tao host" in result.stderr
