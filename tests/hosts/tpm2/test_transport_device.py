"""A ``device:`` TPM that never answers: the wait is a trio checkpoint, so a deadline
ends it and the descriptor is closed. A pty stands in for the character device (a real
file descriptor: the test holds the other end and plays the TPM)."""

from __future__ import annotations

import os
import tty
from collections.abc import Iterator

import pytest
import trio

from taonet import HostError
from taonet.hosts.tpm2 import _runtime, _wire
from taonet.hosts.tpm2._transport import Tcti, Transport

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pty")


@pytest.fixture
def device() -> Iterator[tuple[int, str]]:
    """(the TPM's end, the host's device path) of a raw pty."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(master)
        os.close(slave)


async def _receive(master: int) -> bytes:
    while True:
        try:
            return os.read(master, _wire.MAX_MESSAGE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(master)


async def test_device_that_never_answers_is_cancellable(device: tuple[int, str]) -> None:
    master, path = device
    os.set_blocking(master, False)
    transport = Transport(Tcti("device", path=path))
    command = _wire.read_clock_command()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cancel = trio.CancelScope()

            async def host() -> None:
                with cancel:
                    await transport.call(command)

            nursery.start_soon(host)
            # The command reached the "TPM", which never answers; the caller's
            # deadline (here: a cancel once the command arrived) ends the wait.
            assert await _receive(master) == command
            cancel.cancel()
    assert cancel.cancelled_caught
    assert not transport.connected  # the descriptor was closed, the next call reopens


async def test_device_answers_through_the_non_blocking_read(device: tuple[int, str]) -> None:
    master, path = device
    os.set_blocking(master, False)
    transport = Transport(Tcti("device", path=path))
    failure = (0x8001).to_bytes(2, "big") + (10).to_bytes(4, "big") + (0x101).to_bytes(4, "big")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def tpm() -> None:
                await _receive(master)
                os.write(master, failure)

            nursery.start_soon(tpm)
            with pytest.raises(_wire.TpmError, match="rc 0x101"):
                await transport.call(_wire.read_clock_command())
    assert transport.connected
    await transport.close()


async def test_runtime_deadline_ends_a_hung_device(
    device: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the host's runtime: its per-operation deadline (shortened here so the
    test does not wait a minute) gives a HostError and a closed transport."""
    _, path = device
    monkeypatch.setattr(_runtime, "TPM_TIMEOUT", 0.2)
    transport = Transport(Tcti("device", path=path))
    runtime = _runtime.TpmRuntime(transport, pcrs=(16,), quote_private=b"", quote_public=b"")
    with pytest.raises(HostError, match="did not answer"), trio.fail_after(30):
        await runtime.run(lambda: runtime.call(_wire.read_clock_command()))
    assert not transport.connected
