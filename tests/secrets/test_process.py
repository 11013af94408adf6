"""`taonet secret-server` as a real process, killed with SIGKILL in the middle of writes
and rotations, restarted: every acknowledged write is there, no chain is half rotated,
the audit chain verifies."""

from __future__ import annotations

import contextlib
import random
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio

from taonet import ProtocolError
from taonet.protected import ObjectId
from taonet.secrets import SecretStore, connect
from taonet_services.storage import AuditStore, Database
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]
CHILDREN = 20
WRITERS = 4


async def start_server(world: World, tmp_path: Path) -> tuple[trio.Process, int]:
    password = tmp_path / "host-password"
    password.write_bytes(PASSWORD + b"\n")
    host, port = world.domain_service
    log = (tmp_path / "server.log").open("ab")
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "taonet", "secret-server", "--domain", str(world.domain.path)),
            *("--state", str(tmp_path / "state"), "--listen", "127.0.0.1:0"),
            *(
                "--domain-service",
                f"{host}:{port}",
                "--soft-host",
                str(tmp_path / "host0"),
            ),  # make_host's first
            *("--password-file", str(password)),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    log.close()  # the child has its own copy
    assert process.stdout is not None
    line = b""
    while b"\n" not in line:
        chunk = await process.stdout.receive_some()
        assert chunk, (tmp_path / "server.log").read_text()[-3000:]
        line += chunk
    match = re.search(rb"listening on 127\.0\.0\.1:(\d+) as ", line)
    assert match, line
    return process, int(match.group(1))


async def stop(process: trio.Process, sig: int) -> None:
    process.send_signal(sig)
    await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


@pytest.mark.slow
async def test_sigkill_during_writes_and_rotations(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    rng = random.Random()
    acked: dict[str, bytes] = {}  # name -> the last value whose write was acknowledged
    in_flight: dict[str, set[bytes]] = {}  # values sent whose answer never came
    key_epoch = 1  # the key's epoch last acknowledged
    with trio.fail_after(300):  # the whole run; each round has a tighter bound
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER, start=False
        ) as world:
            owner = await world.identity("owner")
            with trio.fail_after(60):
                process, port = await start_server(world, tmp_path)
                async with connect(("127.0.0.1", port), owner) as store:
                    await store.create("/app/key")
                    for i in range(CHILDREN):
                        await store.create(f"/app/child/{i}", b"c%d" % i, protector="/app/key")
                    for w in range(WRITERS):
                        await store.create(f"/app/w{w}", b"0")
                        acked[f"/app/w{w}"] = b"0"
            for round_ in range(5):
                with trio.fail_after(60):
                    async with connect(("127.0.0.1", port), owner) as store:
                        progress = await _load_until_killed(
                            store, process, round_, rng.randint(1, 40), acked, in_flight
                        )
                    rotating = progress.rotating  # a rotation was in flight at the kill
                    key_epoch = progress.key_epoch or key_epoch
                    await process.wait()
                    assert process.returncode == -signal.SIGKILL
                    if process.stdout is not None:
                        await process.stdout.aclose()
                    # Restarted: what was acknowledged is there; every chain is whole.
                    process, port = await start_server(world, tmp_path)
                    async with connect(("127.0.0.1", port), owner) as store:
                        for name, value in acked.items():
                            got = (await store.read(name)).value
                            assert got == value or got in in_flight.get(name, ()), (name, got)
                            in_flight[name] = set()
                            acked[name] = got
                        key = await store.read("/app/key")
                        allowed = (key_epoch, key_epoch + 1) if rotating else (key_epoch,)
                        assert key.id.epoch in allowed  # the rotation in flight: either state
                        key_epoch = key.id.epoch
                        for i in range(CHILDREN):
                            assert (await store.read(f"/app/child/{i}")).value == b"c%d" % i
                        if key_epoch > 1:
                            assert (await store.read("/app/key", key_epoch - 1)).status.value == (
                                "retired"
                            )
            await stop(process, signal.SIGTERM)
    assert key_epoch > 1  # rotations happened
    with trio.fail_after(30):
        db = await Database.open(world.domain.path / "secrets.db")
        try:
            audit = await AuditStore.open(db)
            summary = await audit.verify()
            entries = await audit.entries()
        finally:
            await db.aclose()
    assert summary is not None
    rotated = [e for e in entries if e.kind == "secret_rotated"]
    assert [e.subject for e in rotated][-1] == str(ObjectId("/app/key", key_epoch))


@attrs.define
class Progress:
    done: int = 0
    key_epoch: int = 0
    rotating: bool = False
    killed: trio.Event = attrs.field(factory=trio.Event)


async def _load_until_killed(
    store: SecretStore,
    process: trio.Process,
    round_: int,
    kill_after: int,
    acked: dict[str, bytes],
    in_flight: dict[str, set[bytes]],
) -> Progress:
    """Writers and a rotator at once; SIGKILL the server after ``kill_after`` writes were
    acknowledged, while the other writes and a rotation are in flight."""
    progress = Progress()

    async def writer(name: str) -> None:
        n = 0
        while not progress.killed.is_set():
            n += 1
            value = b"r%d-%d" % (round_, n)
            in_flight.setdefault(name, set()).add(value)
            await store.write(name, value)
            in_flight[name].discard(value)
            acked[name] = value
            progress.done += 1
            if progress.done == kill_after:
                process.kill()
                progress.killed.set()

    async def rotator() -> None:
        while not progress.killed.is_set():
            progress.rotating = True
            progress.key_epoch = (await store.rotate("/app/key")).epoch
            progress.rotating = False

    async def until_broken(fn: Callable[..., Awaitable[None]], *args: object) -> None:
        with contextlib.suppress(ProtocolError):  # the killed server broke the channel
            await fn(*args)

    async with trio.open_nursery() as nursery:
        for w in range(WRITERS):
            nursery.start_soon(until_broken, writer, f"/app/w{w}")
        nursery.start_soon(until_broken, rotator)
    return progress
