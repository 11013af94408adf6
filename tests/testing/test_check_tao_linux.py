"""The Linux child Tao passes the Tao conformance suite, through real hosted programs.

A real Linux host (in this process, with its admin socket) starts a real program for
each Tao the suite asks for. The program is a relay: it opens its host channel the
way every hosted program does (``open_host_channel``, from the environment the host
gave it) and copies bytes between that channel and its stdin/stdout, which are
pipes to this test. The suite's RPCTao speaks through the relay, so every call is
answered by the host's Tao for that program: its name is the host's name extended
with the program's hash, and it is measured, launched, served and bound like any
other hosted program. Two relays that differ by one comment are two programs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from taonet.domain import Domain
from taonet.hosts import RPCTao, Tao
from taonet.hosts.linux import AdminClient, LinuxHost
from taonet.testing import TaoFactory, check_tao
from tests.hosts.linux_helpers import child_name, init_root, open_root

TIMEOUT = 240

RELAY_SOURCE = '''
"""Relay a hosted program's Tao channel to its stdin and stdout."""

import os

import trio

from taonet.hosts import open_host_channel


async def pump(source, sink, done):
    try:
        while data := await source.receive_some(1 << 16):
            await sink.send_all(data)
    finally:
        done.cancel()


async def main():
    host = await open_host_channel()
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, stdin, host, nursery.cancel_scope)
        nursery.start_soon(pump, host, stdout, nursery.cancel_scope)


trio.run(main)
'''


def write_relay(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{RELAY_SOURCE}\n# {name}\n")
    path.chmod(0o755)
    return path


def relay_factory(host: LinuxHost, program: Path, started: list[int]) -> TaoFactory:
    """Each Tao: a new run of ``program`` on ``host``, reached through its stdin/stdout."""

    @asynccontextmanager
    async def make() -> AsyncIterator[Tao]:
        to_program, to_us = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
        ours = [to_program[1], to_us[0]]
        try:
            async with AdminClient.connect(host.socket_path) as admin:
                info = await admin.start(
                    str(program),
                    cwd=str(program.parent),
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    stdin=to_program[0],
                    stdout=to_us[1],
                    stderr=sys.stderr.fileno(),
                )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            os.close(to_program[0])
            os.close(to_us[1])
        started.append(info.pid)
        assert info.name == child_name(host, program)
        stream = trio.StapledStream(
            trio.lowlevel.FdStream(to_program[1]), trio.lowlevel.FdStream(to_us[0])
        )
        async with RPCTao.connect(stream) as tao:
            yield tao
        # Closing the client closed the relay's stdin: it exits, and cleanly.
        async with AdminClient.connect(host.socket_path) as admin:
            done = await admin.wait(str(info.pid))
        assert done.exit_status == 0

    return make


async def test_the_linux_child_tao_of_real_hosted_programs(
    tmp_path: Path, make_domain: Callable[..., Domain], nursery: trio.Nursery
) -> None:
    first = write_relay(tmp_path, "relay")
    second = write_relay(tmp_path, "other-relay")
    domain = make_domain(programs=(first, second))
    init_root(tmp_path / "host", domain=domain)
    started: list[int] = []
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        await check_tao(
            relay_factory(host, first, started),
            relay_factory(host, second, started),
            policy_cert=domain.policy_cert,
            counters=True,
        )
        await host.stop()
    # Three runs of the first program (fresh, again, extended) and one of the other.
    assert len(started) == 4
