"""A Linux host on a TPM 2.0 root whose counter table write fails after the TPM's NV
counter moved (outside review a4s14, finding 3): the host's shutdown writes the kept
table, so the host opens again (real swtpm)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from structlog.testing import capture_logs

from taonet import HostError
from taonet.hosts.linux import LinuxHost, LinuxHostConfig
from taonet.hosts.linux._config import COUNTERS_FILE
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
