"""The master key handed to a replica on another host, over a Tao channel, if the guard says so.

Two real ``taonet secret-server`` processes on two soft hosts (different host keys:
the second cannot unseal the first's copy of the master key) on one real
PostgreSQL. The second gets the key from the first (``--replica-of``), stores its
own sealed copy, and serves the same objects, also after a restart without
``--replica-of``. A third, on a host whose server principal the guard does not let
hold the key, is refused, starts nothing, and the refusal is in the audit log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from taonet import auth
from taonet.domain import ACLGuard, Domain, measure_file
from taonet.hosts import SoftHost
from taonet.secrets import ReadRequest, UnauthorizedError, connect
from taonet_services.secret_server import MASTER_ID, PROGRAM_FILE
from taonet_services.storage import Database
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.test_operator_server import audit_entries
from tests.secrets.world import World, secret_world

ALL = ("Read", "Write", "Create", "Delete", "Own")
OWNER = [("owner", op, "/app") for op in ALL]
# A program with every right on every name: still not the master key (no prefix covers it).
EVERYTHING = [("writer", op, "/") for op in ALL]


def server_principal(domain: Domain, host: SoftHost) -> auth.Prin:
    name = domain.program_name(measure_file(PROGRAM_FILE), host=host.name)
    assert isinstance(name, auth.Prin)
    return name


def allow_master(domain: Domain, *principals: auth.Prin) -> None:
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    for principal in principals:
        guard = guard.with_rule(
            auth.Pred("Authorized", (principal, auth.Str("Own"), auth.Str(MASTER_ID.name)))
        )
    domain.save_guard(guard, domain.unlock(PASSWORD))


class Server:
    def __init__(self, process: trio.Process, port: int, principal: str) -> None:
        self.process = process
        self.port = port
        self.principal = principal

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def stop(self) -> None:
        self.process.terminate()
        await self.process.wait()


async def start(
    world: World, host: SoftHost, state: str, db_url: str, *extra: str
) -> tuple[trio.Process, bytes]:
    password_file = world.base / "host-pw"
    password_file.write_bytes(PASSWORD + b"\n")
    ds_host, ds_port = world.domain_service
    env = dict(os.environ)
    env.pop("TAO_DOMAIN", None)
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "taonet", "secret-server", "--domain", str(world.domain.path)),
            *("--state", str(world.base / state), "--listen", "127.0.0.1:0", "--db", db_url),
            *("--domain-service", f"{ds_host}:{ds_port}", "--soft-host", str(host._directory)),
            *("--password-file", str(password_file), *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    line = b""
    while b"\n" not in line:
        chunk = await process.stdout.receive_some()
        if not chunk:
            break
        line += chunk
    return process, line


async def started(world: World, host: SoftHost, state: str, db_url: str, *extra: str) -> Server:
    process, line = await start(world, host, state, db_url, *extra)
    match = re.search(rb"listening on 127\.0\.0\.1:(\d+) as (\S+)", line)
    if not match:
        assert process.stderr is not None
        err = await process.stderr.receive_some()
        pytest.fail(f"the secret server did not start: {line!r} {err!r}")
    return Server(process, int(match.group(1)), match.group(2).decode())


async def failed(world: World, host: SoftHost, state: str, db_url: str, *extra: str) -> str:
    process, line = await start(world, host, state, db_url, *extra)
    assert b"listening" not in line, line
    status = await process.wait()
    assert status != 0
    assert process.stderr is not None
    err = b""
    while chunk := await process.stderr.receive_some():
        err += chunk
    return err.decode()


async def sealed_holders(db_url: str) -> list[str]:
    db = await Database.open(db_url)
    try:

        def run(cur: Any) -> list[str]:
            cur.execute("SELECT principal FROM secret_master ORDER BY principal")
            return [str(r[0]) for r in cur.fetchall()]

        return await db.transaction(run, write=False)
    finally:
        await db.aclose()


async def test_a_replica_on_another_host_gets_the_master_key(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, postgres_url: str
) -> None:
    with trio.fail_after(180):
        async with secret_world(
            tmp_path, make_domain, make_host, grants=OWNER + EVERYTHING, start=False
        ) as world:
            second_host = make_host(world.domain)
            third_host = make_host(world.domain)
            assert second_host.public_key_der() != world.host.public_key_der()
            allow_master(
                world.domain,
                server_principal(world.domain, world.host),
                server_principal(world.domain, second_host),
            )
            first = await started(world, world.host, "one", postgres_url)
            # Without --replica-of, another host's server cannot start: the key is sealed
            # for the first server's Tao only.
            err = await failed(world, second_host, "two", postgres_url)
            assert "master key" in err
            second = await started(
                world, second_host, "two", postgres_url, "--replica-of", f"127.0.0.1:{first.port}"
            )
            try:
                assert first.principal != second.principal
                assert sorted(await sealed_holders(postgres_url)) == sorted(
                    [first.principal, second.principal]
                )
                owner = await world.identity("owner")
                async with (
                    connect(first.address, owner) as one,
                    connect(second.address, owner) as two,
                ):
                    await one.create("/app/k")
                    await one.create("/app/db", b"hunter2", protector="/app/k")
                    assert (await two.read("/app/db")).value == b"hunter2"
                    await two.rotate("/app/k")
                    await two.create("/app/new", b"made on two")
                    assert (await one.read("/app/new")).value == b"made on two"
                    assert (await one.read("/app/db")).value == b"hunter2"
                # A program with every right on "/" is not given the master key.
                async with connect(first.address, await world.identity("writer")) as writer:
                    with pytest.raises(UnauthorizedError):
                        await writer.call(ReadRequest(MASTER_ID.name))
                await second.stop()
                # Restarted without --replica-of: it unseals its own copy.
                second = await started(world, second_host, "two", postgres_url)
                async with connect(second.address, owner) as two:
                    assert (await two.read("/app/db")).value == b"hunter2"

                # A third host's server, not named by the guard: refused, nothing stored.
                err = await failed(
                    world,
                    third_host,
                    "three",
                    postgres_url,
                    "--replica-of",
                    f"127.0.0.1:{first.port}",
                )
                assert "guard" in err or "refused" in err, err
                assert len(await sealed_holders(postgres_url)) == 2
            finally:
                await first.stop()
                await second.stop()
        entries = await audit_entries(postgres_url)
    released = [e for e in entries if e.kind == "secret_master_released"]
    refused = [e for e in entries if e.kind == "secret_master_refused"]
    assert [e.actor for e in released] == [second.principal]
    third = str(server_principal(world.domain, third_host))
    assert [e.actor for e in refused if e.actor == third]
    assert all(e.actor != third for e in released)
