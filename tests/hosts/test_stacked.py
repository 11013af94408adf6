"""A two-level stack: a Linux host run as a hosted program of a root Linux host; and a
real stacked host process whose parent refuses what it needs."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from taonet import HostError, NotSupportedError, auth
from taonet.attestation import validate
from taonet.domain import program_subprin
from taonet.hosts import SoftHost, Tao, serve_tao_rpc
from taonet.hosts._tao import NOT_SUPPORTED
from taonet.hosts.linux import AdminClient, LinuxHost, LinuxHostConfig, ProgramInfo
from tests.conftest import MakeHost
from tests.hosts.linux_helpers import (
    TIMEOUT,
    digest,
    init_root,
    open_root,
    run_probe,
    write_probe,
)
from tests.tao_doubles import ForwardingTao


def _taonet() -> Path:
    beside = Path(sys.executable).parent / "taonet"
    found = beside if beside.exists() else shutil.which("taonet")
    assert found is not None, "the taonet command is not installed"
    return Path(found).resolve()


class Stacked:
    """Starts and stops the stacked host as a hosted program of ``root``."""

    def __init__(self, root: LinuxHost, directory: Path) -> None:
        self.root = root
        self.directory = directory
        self.output = b""

    async def start(self) -> ProgramInfo:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TAONET_LOG": "warning"}
        async with AdminClient.connect(self.root.socket_path) as admin:
            try:
                info = await admin.start(
                    str(_taonet()),
                    ["host", "start", "--foreground", "--host", str(self.directory)],
                    cwd=str(self.directory),
                    env=env,
                    stdout=write_fd,
                    stderr=write_fd,
                )
            finally:
                os.close(write_fd)
        self.output = b""
        stream = trio.lowlevel.FdStream(read_fd)
        self._stream = stream
        while b"serving" not in self.output:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            self.output += chunk
        return info

    async def finish(self, pid: int) -> ProgramInfo:
        async with self._stream:
            while chunk := await self._stream.receive_some(65536):
                self.output += chunk
        async with AdminClient.connect(self.root.socket_path) as admin:
            return await admin.wait(str(pid))

    async def shutdown(self, pid: int) -> ProgramInfo:
        async with AdminClient.connect(self.directory / "admin.sock") as admin:
            await admin.shutdown()
        return await self.finish(pid)


async def test_two_level_stack(tmp_path: Path, make_domain, nursery: trio.Nursery) -> None:  # type: ignore[no-untyped-def]
    probe = write_probe(tmp_path)
    domain = make_domain(programs=(probe, _taonet()))
    init_root(tmp_path / "root", domain=domain)
    LinuxHost.init(tmp_path / "stacked", LinuxHostConfig(kind="stacked", domain=str(domain.path)))
    blob, rp_old, rp_new = tmp_path / "blob", tmp_path / "rp-old", tmp_path / "rp-new"
    stacked_socket = tmp_path / "stacked" / "admin.sock"
    with trio.fail_after(TIMEOUT):
        root = await open_root(nursery, tmp_path / "root")
        stacked = Stacked(root, tmp_path / "stacked")
        info = await stacked.start()
        assert b"serving" in stacked.output, stacked.output
        stacked_name = root.name.extend(program_subprin(digest(_taonet())))
        assert info.name == stacked_name
        async with AdminClient.connect(stacked_socket) as admin:
            assert await admin.host_name() == stacked_name
        status, lines = await run_probe(
            stacked_socket, probe, ["name", "attest", "seal", str(blob), "rpseal", "c", str(rp_old)]
        )
        assert status == 0, lines
        expected = stacked_name.extend(program_subprin(digest(probe)))
        assert lines[0]["name"] == str(expected)
        # The child's attestation chains: stacked host key -> delegation from the
        # root host -> the root host's certificate from the policy key.
        proven = validate(
            bytes.fromhex(lines[1]["attestation"]),
            now_ns=time.time_ns(),
            policy_cert=domain.policy_cert,
        )
        assert proven.speaker == expected
        assert proven.root_signer == root.name
        assert lines[3]["counter"] == 1

        # Restart: keys unsealed from the parent (same name), sealed data and counters
        # survive.
        done = await stacked.shutdown(info.pid)
        assert done.exit_status == 0, stacked.output
        info = await stacked.start()
        assert info.name == stacked_name
        status, lines = await run_probe(
            stacked_socket,
            probe,
            [
                "unseal",
                str(blob),
                "counter",
                "c",
                "rpunseal",
                str(rp_old),
                "rpseal",
                "c",
                str(rp_new),
            ],
        )
        assert lines[0] == {"data": "probe secret", "policy": "self"}
        assert lines[1] == {"counter": 1}
        assert lines[2] == {"data": "rp secret", "policy": "self"}
        assert lines[3]["counter"] == 2
        counters = tmp_path / "stacked" / "counters.sealed"
        done = await stacked.shutdown(info.pid)
        assert done.exit_status == 0

        # Rolling the stacked host's counter table back is detected by the root's counters.
        newer = counters.read_bytes()
        older = tmp_path / "stacked-counters-before"
        shutil.copy(counters, older)
        info = await stacked.start()
        status, lines = await run_probe(stacked_socket, probe, ["rpseal", "c", str(rp_new)])
        assert lines[0]["counter"] == 3
        done = await stacked.shutdown(info.pid)
        assert counters.read_bytes() != newer
        shutil.copy(older, counters)
        info = await stacked.start()
        done = await stacked.finish(info.pid)
        assert done.exit_status != 0
        assert b"rollback" in stacked.output.lower() or b"rolled back" in stacked.output.lower(), (
            stacked.output
        )
    await root.stop()


# -- a stacked host whose parent will not do what it needs ------------------------------


class Parent(ForwardingTao):
    """A parent Tao for one stacked host, able to refuse what a real one might; what it
    does not refuse goes to ``inner``."""

    def __init__(
        self,
        inner: Tao,
        *,
        counters: bool = True,
        refusal: str = NOT_SUPPORTED,
        unseal: bool = True,
        seal: bool = True,
    ) -> None:
        super().__init__(inner)
        self.counters = counters
        self.refusal = refusal  # what a parent without counters says
        self.unseal_allowed = unseal
        self.seal_allowed = seal

    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        if not self.seal_allowed:
            raise HostError("this parent seals nothing")
        return await self.inner.seal(data, policy)

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        if not self.unseal_allowed:
            raise HostError("bound to another principal")
        return await self.inner.unseal(sealed)

    async def init_counter(self, label: str, counter: int) -> None:
        if not self.counters:
            raise NotSupportedError(self.refusal)
        await self.inner.init_counter(label, counter)

    async def get_counter(self, label: str) -> int:
        if not self.counters:
            raise NotSupportedError(self.refusal)
        return await self.inner.get_counter(label)

    async def rollback_protected_seal(self, label: str, data: bytes, policy: str = "self") -> bytes:
        if not self.counters:
            raise NotSupportedError(self.refusal)
        return await self.inner.rollback_protected_seal(label, data, policy)

    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        if not self.counters:
            raise NotSupportedError(self.refusal)
        return await self.inner.rollback_protected_unseal(sealed)


async def _run_stacked(directory: Path, parent: Tao, *, shutdown: bool = False) -> tuple[int, str]:
    """Run ``taonet host start --foreground`` as a stacked host whose parent channel is
    a unix socket served with ``parent``; (exit status, its output)."""
    socket_path = directory.parent / f"{directory.name}-parent.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(socket_path))
    listener.listen()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TAONET_LOG": "warning",
        "CLOUDPROXY_TAO_HOST_TYPE": "stacked",
        "CLOUDPROXY_TAO_HOST_CHANNEL_TYPE": "unix",
        "CLOUDPROXY_TAO_HOST_SPEC": str(socket_path),
    }
    output = b""
    try:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [str(_taonet()), "host", "start", "--foreground", "--host", str(directory)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            )
            conn, _ = await listener.accept()
            nursery.start_soon(serve_tao_rpc, trio.SocketStream(conn), parent)
            assert process.stdout is not None
            while chunk := await process.stdout.receive_some(65536):
                output += chunk
                if shutdown and b"serving" in output:
                    shutdown = False
                    async with AdminClient.connect(directory / "admin.sock") as admin:
                        await admin.shutdown()
            await process.wait()
    finally:
        listener.close()
        socket_path.unlink()
    return process.returncode, output.decode()


def _files(directory: Path) -> dict[str, bytes]:
    """The host's files: a host that fails to open writes none, not even host.lock."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _one_clear_line(output: str, expected: str) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert expected in lines[0], output


# A parent without counters is known by the error's class, whatever its text says
# (a TPM core words it its own way): the stacked host once matched the text.
@pytest.mark.parametrize("refusal", [NOT_SUPPORTED, "no NV counters on this TPM"])
async def test_a_parent_without_counters_is_refused_and_nothing_is_written(
    tmp_path: Path, make_host: Callable[[], SoftHost], refusal: str
) -> None:
    soft = make_host()
    program = soft.name.extend(auth.PrinExt("Program", (auth.Bytes(b"\x01" * 32),)))
    directory = tmp_path / "stacked"
    LinuxHost.init(directory, LinuxHostConfig(kind="stacked", guard="Liberal"))
    before = _files(directory)
    with trio.fail_after(TIMEOUT):
        status, output = await _run_stacked(
            directory, Parent(soft.tao_for(program), counters=False, refusal=refusal)
        )
    assert status != 0
    _one_clear_line(output, "the parent Tao has no counters")
    assert _files(directory) == before  # no keys.sealed, no counters.sealed


@pytest.mark.parametrize("refuse", ["unseal", "seal"])
async def test_a_parent_that_will_not_open_or_seal_the_keys_is_a_clear_error(
    tmp_path: Path, make_host: MakeHost, refuse: str
) -> None:
    soft = make_host()
    program = soft.name.extend(auth.PrinExt("Program", (auth.Bytes(b"\x02" * 32),)))
    tao = soft.tao_for(program)
    directory = tmp_path / "stacked"
    LinuxHost.init(directory, LinuxHostConfig(kind="stacked", guard="Liberal"))
    with trio.fail_after(TIMEOUT * 2):
        if refuse == "unseal":
            # A first start has the parent seal the keys...
            status, output = await _run_stacked(directory, Parent(tao), shutdown=True)
            assert status == 0, output
            assert "keys.sealed" in _files(directory)
        before = _files(directory)
        # ...then the parent will not open (or, at a first start, seal) them.
        refusing = Parent(tao, unseal=refuse != "unseal", seal=refuse != "seal")
        status, output = await _run_stacked(directory, refusing)
    assert status != 0
    expected = (
        "the parent Tao would not unseal this host's keys"
        if refuse == "unseal"
        else "this parent seals nothing"
    )
    _one_clear_line(output, expected)
    assert _files(directory) == before
