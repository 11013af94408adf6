"""End to end: `taonet domain revoke` against a `taonet domain-service` process closes the
revoked peer's open channel mid-transfer, both ends are told why, and others are served."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from loadtests.revocation_latency import HOST, Lab
from taonet import AuthorizationError
from taonet.channel import ChannelRevokedError, TaoStream, open_channel, serve_channels
from taonet.provision import RevocationWatcher

CHUNK = 16 * 1024


async def drain(stream: TaoStream) -> None:
    while await stream.receive_some(CHUNK):
        pass


async def test_revoke_command_closes_the_open_channel_mid_transfer(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    seen: dict[int, BaseException] = {}

    async def send_forever(stream: TaoStream) -> None:
        assert stream.peer.certificate is not None
        try:
            while True:
                await stream.send_all(b"y" * CHUNK)
        except BaseException as exc:
            seen[stream.peer.certificate.serial] = exc
            raise

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            process = await lab.start_service(nursery)
            try:
                server_id = await lab.identity()
                mallory_id, alice_id = await lab.identity(), await lab.identity()
                assert mallory_id.certificate is not None
                serial = mallory_id.certificate.serial
                where = (HOST, lab.port)
                server_crl = RevocationWatcher(lab.domain.policy_cert, where)
                # Mallory learns it from the server cutting its channel (no long
                # poll of its own: otherwise either end may close first).
                mallory_crl = RevocationWatcher(lab.domain.policy_cert, where, watch=False)
                await nursery.start(server_crl.run)
                await nursery.start(mallory_crl.run)
                listeners = await nursery.start(
                    functools.partial(
                        serve_channels, send_forever, 0, server_id, revocations=server_crl
                    )
                )
                port = int(listeners[0].socket.getsockname()[1])
                mallory = await open_channel(HOST, port, mallory_id, revocations=mallory_crl)
                alice = await open_channel(HOST, port, alice_id)
                for stream in (mallory, alice):
                    assert await stream.receive_some(CHUNK)

                await lab.revoke(serial)
                with pytest.raises(ChannelRevokedError) as caught:
                    await drain(mallory)
                assert caught.value.own
                assert caught.value.serial == serial
                assert isinstance(seen[serial], ChannelRevokedError)
                # Alice's transfer goes on; mallory cannot come back.
                received = 0
                while received < 1024 * 1024:
                    received += len(await alice.receive_some(CHUNK))
                retry = await open_channel(HOST, port, mallory_id)
                with pytest.raises(AuthorizationError, match="revoked"):
                    await retry.receive_some()
                for stream in (mallory, alice, retry):
                    await stream.aclose()
            finally:
                process.terminate()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()
                nursery.cancel_scope.cancel()
