"""Issue 8, item 6: ``taonet host start`` says "started" only for the host it started.

A second start while a host runs, with the right password or a wrong one, used to
print "started (pid N)" and exit 0, because readiness was read from the host that
was already there. Now it refuses in one line, and the first host is untouched.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from tests.cli.cli_helpers import (
    Result,
    host_pids,
    isolated,
    make_root_host,
    ok,
    one_line_error,
    run,
)

_STARTED = re.compile(r"Linux host (\S+) started \(pid (\d+)\)")


@attrs.frozen
class RunningHost:
    env: dict[str, str]
    base: Path
    host_dir: Path
    name: str
    pid: int


def started(result: Result) -> tuple[str, int]:
    assert result.returncode == 0, result
    match = _STARTED.search(result.stdout)
    assert match is not None, result
    return match.group(1), int(match.group(2))


@pytest.fixture
async def running_host(tmp_path: Path) -> AsyncIterator[RunningHost]:
    env = await make_root_host(tmp_path)
    host_dir = Path(env["TAO_DOMAIN"]) / "linux_tao_host"
    result = await run(isolated("host", "start", "--password-file", str(tmp_path / "pw")), env=env)
    name, pid = started(result)
    try:
        yield RunningHost(env, tmp_path, host_dir, name, pid)
    finally:
        await run(isolated("host", "stop"), env=env)


async def assert_untouched(host: RunningHost) -> None:
    """The first host still serves, as itself, and is the only one."""
    assert host_pids(host.host_dir) == [host.pid]
    out = ok(await run(isolated("host", "show"), env=host.env))
    assert f"running as {host.name}" in out


@pytest.mark.parametrize("password", ["host and policy password", "not the password"])
async def test_second_start_is_refused_and_the_first_host_untouched(
    running_host: RunningHost, password: str
) -> None:
    pw = running_host.base / "second-pw"
    pw.write_text(password + "\n")
    log = running_host.host_dir / "host.log"
    log_before = log.read_bytes()

    result = await run(isolated("host", "start", "--password-file", str(pw)), env=running_host.env)

    one_line_error(result, "already running", running_host.name, "taonet host stop")
    assert "started" not in result.stdout
    await assert_untouched(running_host)
    assert log.read_bytes() == log_before  # not even a child was started


async def test_two_starts_at_once_exactly_one_says_started(tmp_path: Path) -> None:
    """Both may pass the "is one running?" check before either host binds: then the
    loser's own child reports that it failed, and only the winner says "started"."""
    env = await make_root_host(tmp_path)
    host_dir = Path(env["TAO_DOMAIN"]) / "linux_tao_host"
    argv = isolated("host", "start", "--password-file", str(tmp_path / "pw"))
    results: list[Result] = []

    async def start() -> None:
        results.append(await run(argv, env=env))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            nursery.start_soon(start)
        wins = [r for r in results if r.returncode == 0]
        losses = [r for r in results if r.returncode != 0]
        assert len(wins) == 1, results
        _, pid = started(wins[0])
        one_line_error(losses[0], "running")
        assert host_pids(host_dir) == [pid]
    finally:
        await run(isolated("host", "stop"), env=env)


async def test_a_start_that_fails_says_why_in_one_line(tmp_path: Path) -> None:
    env = await make_root_host(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    result = await run(isolated("host", "start", "--password-file", str(wrong)), env=env)
    one_line_error(result, "the host did not start", "wrong password", returncode=4)
    assert host_pids(Path(env["TAO_DOMAIN"]) / "linux_tao_host") == []


async def test_list_into_a_closed_pipe_is_quiet(running_host: RunningHost) -> None:
    """``taonet list | head -1``, with head gone before taonet writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = await run(isolated("list"), env=running_host.env, stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, ""), result


def lock_is_free(host_dir: Path) -> bool:
    """Nobody holds ``host.lock`` (a running host holds it exclusively)."""
    fd = os.open(host_dir / "host.lock", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


async def test_stop_returns_only_once_the_host_let_go_of_its_directory(
    running_host: RunningHost,
) -> None:
    """``taonet host stop`` used to return as soon as the host answered, while the host
    still held ``host.lock``: a script that stopped and at once restarted a host could be
    told that one was "already running". Now stop waits for the lock itself."""
    pw = str(running_host.base / "pw")
    for _ in range(2):
        assert not lock_is_free(running_host.host_dir)
        assert "Linux host stopped" in ok(await run(isolated("host", "stop"), env=running_host.env))
        assert lock_is_free(running_host.host_dir)
        started(await run(isolated("host", "start", "--password-file", pw), env=running_host.env))


_HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


async def test_stop_waits_for_the_lock_holder_to_let_go(tmp_path: Path) -> None:
    """What ``host stop`` waits on is the lock itself (a blocking flock), not a timer:
    it returns exactly when the process holding ``host.lock`` lets go of it."""
    from taonet.cli._host_cmd import _released

    lock = tmp_path / "host.lock"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            holder = await trio.lowlevel.open_process(
                [sys.executable, "-c", _HOLD_LOCK, str(lock)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert holder.stdout is not None
            assert holder.stdin is not None
            assert (await holder.stdout.receive_some()).startswith(b"locked")
            done = trio.Event()

            async def wait() -> None:
                assert await _released(lock) is True
                done.set()

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # still held: still waiting
            await holder.stdin.aclose()  # the holder exits, and its lock goes with it
            await done.wait()
            await holder.wait()
    assert await _released(tmp_path / "no-such-lock") is True
