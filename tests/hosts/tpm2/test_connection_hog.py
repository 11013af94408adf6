"""Another local process holding swtpm's one connection while a host opens."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from taonet import HostError

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm


async def test_open_while_another_client_holds_swtpm(
    fresh_swtpm: Swtpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clear HostError naming the likely cause (not a bare trio.TooSlowError), and
    the host opens once that client lets go. The TPM deadline is shortened here so the
    test does not wait a minute."""
    from taonet.hosts.tpm2 import Tpm2Host, _runtime

    directory = tmp_path / "host"
    with trio.fail_after(60):
        await trio.to_thread.run_sync(
            lambda: Tpm2Host.create(directory, tcti=fresh_swtpm.tcti, pcrs=(0, 16))
        )
    monkeypatch.setattr(_runtime, "TPM_TIMEOUT", 1.0)
    with (
        socket.create_connection(("127.0.0.1", fresh_swtpm.port)),
        pytest.raises(HostError, match=r"did not answer.*another client"),
        trio.fail_after(30),
    ):
        await Tpm2Host.open(directory)
    monkeypatch.undo()
    with trio.fail_after(60):
        host = await Tpm2Host.open(directory)
        await host.aclose()
