"""Reaching a host fails as HostError with the OSError as its cause, never a raw OSError."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from taonet import HostError
from taonet.hosts import open_host_channel, parent
from taonet.hosts.linux import AdminClient

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def _env(channel: str, spec: str) -> dict[str, str]:
    return {
        "CLOUDPROXY_TAO_HOST_TYPE": "root",
        "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": channel,
        "CLOUDPROXY_TAO_HOST_SPEC": spec,
    }


def _closed_fd() -> int:
    """A descriptor number that was open a moment ago and is closed now.

    Taken high, so that no descriptor opened meanwhile (by the code under test too)
    gets the number back.
    """
    read_fd, write_fd = os.pipe()
    high = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 500)
    for fd in (read_fd, write_fd, high):
        os.close(fd)
    return high


async def test_parent_on_a_closed_pipe_fd() -> None:
    closed = _closed_fd()
    spec = f"tao::RPC+tao::FDMessageChannel({closed}, {closed})"
    with trio.fail_after(10), pytest.raises(HostError) as caught:
        async with parent(_env("pipe", spec)):
            pass
    assert str(caught.value) == f"the Tao host pipe ({spec}) is not open: Bad file descriptor"
    assert isinstance(caught.value.__cause__, OSError)


async def test_parent_on_a_half_closed_pipe_leaks_no_descriptor() -> None:
    read_fd, write_fd = os.pipe()
    closed = _closed_fd()
    try:
        spec = f"tao::RPC+tao::FDMessageChannel({read_fd}, {closed})"
        before = len(os.listdir("/proc/self/fd"))
        with trio.fail_after(10), pytest.raises(HostError) as caught:
            await open_host_channel(_env("pipe", spec))
        assert isinstance(caught.value.__cause__, OSError)
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_parent_on_a_missing_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "missing.sock"
    with trio.fail_after(10), pytest.raises(HostError) as caught:
        async with parent(_env("unix", str(path))):
            pass
    assert str(caught.value) == f"cannot reach the Tao host at {path}: No such file or directory"
    assert isinstance(caught.value.__cause__, FileNotFoundError)


async def test_parent_on_a_unix_socket_nobody_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))
    with trio.fail_after(10), pytest.raises(HostError) as caught:
        await open_host_channel(_env("unix", str(path)))
    assert str(caught.value) == f"cannot reach the Tao host at {path}: Connection refused"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_parent_on_a_missing_file_channel(tmp_path: Path) -> None:
    path = tmp_path / "no-such-port"
    spec = f"tao::RPC+tao::FileMessageChannel({path})"
    with trio.fail_after(10), pytest.raises(HostError) as caught:
        await open_host_channel(_env("file", spec))
    assert str(caught.value) == (
        f"cannot open the Tao host channel {path}: No such file or directory"
    )
    assert isinstance(caught.value.__cause__, FileNotFoundError)


async def test_admin_client_without_a_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with trio.fail_after(10), pytest.raises(HostError) as caught:
        async with AdminClient.connect(path):
            pass
    assert str(caught.value) == (f"no Tao host is running at {path}: No such file or directory")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


_CONNECT = """
import sys, trio
from taonet import HostError
from taonet.hosts.linux import AdminClient

async def main():
    try:
        async with AdminClient.connect(sys.argv[1]):
            pass
    except HostError as exc:
        print(type(exc.__cause__).__name__, exc, sep="|")

trio.run(main)
"""


def _drop_file_override() -> None:
    """In a root child before exec: lose the capabilities that ignore file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


async def test_admin_client_without_permission() -> None:
    # The socket has mode 0000. Root ignores file modes, so as root the client runs
    # in a child without the capabilities that let it (root in CI containers).
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "admin.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(path))
            listener.listen()
            os.chmod(path, 0o000)
            if os.geteuid() == 0:
                with trio.fail_after(60):
                    child = await trio.run_process(
                        [sys.executable, "-c", _CONNECT, str(path)],
                        capture_stdout=True,
                        preexec_fn=_drop_file_override,
                    )
                answer = child.stdout.decode().strip()
            else:
                with trio.fail_after(10), pytest.raises(HostError) as caught:
                    async with AdminClient.connect(path):
                        pass
                answer = f"{type(caught.value.__cause__).__name__}|{caught.value}"
    assert answer == f"PermissionError|cannot reach the Tao host at {path}: Permission denied"
