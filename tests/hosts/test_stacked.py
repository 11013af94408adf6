"""A two-level stack: a Linux host run as a hosted program of a root Linux host."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import trio

from taonet.attestation import validate
from taonet.domain import program_subprin
from taonet.hosts import AdminClient, LinuxHost, LinuxHostConfig, ProgramInfo
from tests.hosts.linux_helpers import (
    TIMEOUT,
    digest,
    init_root,
    open_root,
    run_probe,
    write_probe,
)


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
