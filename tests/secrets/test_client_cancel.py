"""One caller's deadline never breaks the channel its store shares with other callers.

Review A4 F6: tasks share one :class:`~taonet.secrets.SecretStore` (one Tao channel).
A call cancelled by its own caller's deadline while its request was being written cut
the TLS ``send_all`` short, which breaks the stream: every other task's call in flight
failed with "the channel to the secret server broke". A request once begun is now
written whole; a caller already out of time sends nothing.
"""

from __future__ import annotations

from pathlib import Path

import trio

from taonet import ProtocolError
from taonet.secrets import connect
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create")]


async def test_one_callers_timeout_does_not_fail_the_others(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(120):
        async with (
            secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            await store.create("/app/big", b"x" * 1000)
            await store.create("/app/small", b"s")
            broken: list[ProtocolError] = []
            gave_up = 0

            async def impatient(i: int) -> None:
                nonlocal gave_up
                # Deadlines that land while ~900 KiB are being written (and one
                # already past: it must send nothing at all).
                with trio.move_on_after(0.0001 * (i % 7)) as scope:
                    await store.write("/app/big", bytes([i % 256]) * (900 << 10))
                gave_up += scope.cancelled_caught

            async def patient() -> None:
                try:
                    assert (await store.read("/app/small")).value == b"s"
                except ProtocolError as exc:
                    broken.append(exc)

            for _ in range(10):
                async with trio.open_nursery() as nursery:
                    for i in range(6):
                        nursery.start_soon(impatient, i)
                        nursery.start_soon(patient)
            assert gave_up > 0  # the attack happened
            assert not broken, f"{len(broken)} patient callers failed: {broken[0]}"
            # The channel still serves.
            assert (await store.read("/app/small")).value == b"s"
