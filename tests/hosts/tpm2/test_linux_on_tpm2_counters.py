"""A Linux host on a TPM 2.0 root (real swtpm) and its counter table (outside review
a4s14): a program restarted under program_ids gets no fresh write budget (finding 2),
and a table write that fails after the TPM's NV counter moved is written at the host's
shutdown, so the host opens again (finding 3)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from taonet import HostError
from taonet.hosts._write_budget import PROGRAM_BURST
from taonet.hosts.linux import LinuxHost, LinuxHostConfig
from taonet.hosts.linux._config import COUNTERS_FILE
from tests.hosts.linux_helpers import run_probe, write_probe
from tests.tao_doubles import program

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

CONFIG = LinuxHostConfig(kind="root", root_tao="tpm2", guard="Liberal", grace_period=1.0)


async def test_a_failed_table_write_is_written_at_shutdown(
    fresh_swtpm: Swtpm, tmp_path: Path
) -> None:
    directory = tmp_path / "host"
    table = directory / COUNTERS_FILE
    with trio.fail_after(120):
        await LinuxHost.init_tpm2(directory, CONFIG, tcti=fresh_swtpm.tcti)
        host = await LinuxHost.open(directory)
        me = program(host.name, 1)
        try:
            await host._counters.init_counter(me, "c", 1)
            # The table's file cannot be replaced (as on a full disk): the rename fails.
            table.unlink()
            table.mkdir()
            with pytest.raises(HostError, match="already counted this change"):
                await host._counters.init_counter(me, "c", 2)
            with capture_logs() as logs:
                await host.aclose()  # still cannot write: logged, kept
            assert "counter_table_still_unwritten" in [e["event"] for e in logs]
            table.rmdir()
        finally:
            await host.aclose()  # now it can: written
        host = await LinuxHost.open(directory)
        try:
            assert await host._counters.get_counter(me, "c") == 2
        finally:
            await host.aclose()


async def test_a_restart_under_a_new_program_id_gets_no_fresh_budget(
    fresh_swtpm: Swtpm, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The budget_starve attack's restarts: each start is a new Program(id, ...) name,
    but the host charges the measurement, so the second start finds the bucket the
    first one emptied."""
    directory = tmp_path / "host"
    probe = write_probe(tmp_path)
    blob = str(tmp_path / "blob")
    with trio.fail_after(120):
        await LinuxHost.init_tpm2(
            directory, attrs.evolve(CONFIG, program_ids=True), tcti=fresh_swtpm.tcti
        )
        host = await LinuxHost.open(directory)
        await nursery.start(host.run)
        _, lines = await run_probe(
            host, probe, ["name"] + ["rpseal", "c", blob] * (PROGRAM_BURST + 1)
        )
        first = lines[0]["name"]
        assert [line.get("counter") for line in lines[1:-1]] == list(range(1, PROGRAM_BURST + 1))
        assert "this program changes" in lines[-1]["error"]
        _, lines = await run_probe(host, probe, ["name", "rpseal", "c", blob])
        assert lines[0]["name"] != first  # another program id
        assert "this program changes" in lines[1]["error"]
        await host.stop()
