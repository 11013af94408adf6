"""A real Linux host's admin socket against a hostile client process: malformed
frames, too many descriptors, and descriptors that are not what a program expects.
The host keeps serving and keeps no descriptor it was sent."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import trio
import trio.testing

from taonet.hosts.linux import LinuxHost
from tests.hosts.linux_helpers import (
    TIMEOUT,
    child_name,
    init_root,
    open_root,
    run_probe,
    write_probe,
)

CLIENT = Path(__file__).parent / "hostile_admin_client.py"


async def settled_fds(host: LinuxHost) -> set[str]:
    """The host's descriptors once it is done with finished work: its connection
    tasks have ended (nothing is left to run). The programs waited for are gone with
    their private copies: the host answers a wait only once the copy is removed."""
    programs = host.directory / "programs"
    await trio.testing.wait_all_tasks_blocked()
    fds = open_fds()
    assert not any(programs.iterdir()), list(programs.iterdir())
    assert not any(f"{programs}/" in fd for fd in fds), fds
    return fds


def open_fds() -> set[str]:
    """This process's descriptors and what they are (but the one that listed them)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        # The directory listing's own descriptor is closed since: skipped.
        with contextlib.suppress(OSError):
            found.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
    return found


async def test_malformed_frames_and_odd_fds_from_a_real_client(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    probe = write_probe(tmp_path)
    init_root(tmp_path / "host")
    work = tmp_path / "work"
    work.mkdir()
    with trio.fail_after(TIMEOUT * 2):
        host = await open_root(nursery, tmp_path / "host")
        await run_probe(host, probe, ["name"])
        before = await settled_fds(host)
        client = await trio.run_process(
            [sys.executable, str(CLIENT), str(host.socket_path), str(probe), str(work)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert client.returncode == 0, client.stderr.decode()
        results = {
            line["case"]: line for line in map(json.loads, client.stdout.decode().splitlines())
        }
        # Every malformed request cost the client its connection and nothing else.
        malformed = [
            "garbage",
            "truncated",
            "truncated_header",
            "oversized",
            "big_header",
            "body_over_1MiB",
            "four_fds",
            "two_hundred_fds",
            "fds_with_garbage",
            "no_fds_where_announced",
            "fewer_fds_than_announced",
            "fds_on_list",
            "fds_then_nothing",
        ]
        for case in malformed:
            assert results[case]["outcome"] == "dropped", results[case]
        # Odd descriptors are the program's business: it starts, and fails or not.
        for case in (
            "directory_as_stdout",
            "directory_as_all",
            "socket_as_stdin",
            "closed_pipe_as_stdout",
            "dev_zero_as_stdio",
            "o_path_as_stdin",
        ):
            assert results[case]["outcome"] in ("exited", "answered"), results[case]
        assert results["dev_zero_as_stdio"] == {
            "case": "dev_zero_as_stdio",
            "outcome": "exited",
            "status": 0,
        }
        assert results["directory_as_stdout"]["status"] != 0  # its output had nowhere to go
        assert results["after"] == {"case": "after", "outcome": "answered", "programs": 0}
        assert host.list_programs() == []
        # The host kept none of the descriptors it was sent (nor any of its own).
        assert await settled_fds(host) == before
        # And it still serves.
        status, lines = await run_probe(host, probe, ["name"])
        assert status == 0
        assert lines == [{"name": str(child_name(host, probe))}]
    await host.stop()
