"""A full disk and a read-only database: the client hears ``unavailable``, and nothing
is acknowledged that was not stored."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio

from taonet.secrets import NotFoundError, UnavailableError, connect
from tests.conftest import MakeDomain, MakeHost
from tests.mounts import tmpfs
from tests.pg import PgServer, database_name
from tests.secrets.world import secret_world

OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create", "Delete", "Own")]


async def test_disk_full(tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost) -> None:
    with tmpfs(tmp_path / "small", size="2m") as small, trio.fail_after(60):
        async with (
            secret_world(
                tmp_path,
                make_domain,
                make_host,
                grants=OWNER,
                db_url=f"sqlite:///{small / 'secrets.db'}",
            ) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            acknowledged: list[str] = []
            refusal: UnavailableError | None = None
            for i in range(100):
                name = f"/app/big/{i}"
                try:
                    await store.create(name, bytes([i]) * 100_000)
                except UnavailableError as exc:
                    refused, refusal = name, exc
                    break
                acknowledged.append(name)
            assert refusal is not None, "the 2 MB file system never filled"
            assert "nothing was changed" in str(refusal)
            assert acknowledged  # some writes fitted
            await trio.run_process(["mount", "-o", "remount,size=16m", str(small)])
            for i, name in enumerate(acknowledged):
                assert (await store.read(name)).value == bytes([i]) * 100_000
            with pytest.raises(NotFoundError):
                await store.read(refused)


async def test_read_only_database(
    tmp_path: Path,
    make_domain: MakeDomain,
    make_host: MakeHost,
    postgres_server: PgServer,
    postgres_url: str,
) -> None:
    """The database turns read-only under a running server (a standby after a failover,
    an operator's switch): writes answer ``unavailable`` and are not stored."""
    name = database_name(postgres_url)

    def read_only(on: bool) -> None:
        postgres_server.admin(
            f"ALTER DATABASE {name} SET default_transaction_read_only = {'on' if on else 'off'}",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )

    with trio.fail_after(60):
        async with (
            secret_world(
                tmp_path, make_domain, make_host, grants=OWNER, db_url=postgres_url
            ) as world,
            connect(world.address, await world.identity("owner")) as store,
        ):
            await store.create("/app/before", b"stored")
            read_only(True)
            failures = 0
            for attempt in range(5):  # the first may meet a connection the switch cut
                with pytest.raises(UnavailableError):
                    await store.create(f"/app/during/{attempt}", b"refused")
                failures += 1
            with pytest.raises(UnavailableError, match="read"):
                await store.write("/app/before", b"changed")
            read_only(False)
            value = None
            for _ in range(2):  # again, a connection the switch cut
                with contextlib.suppress(UnavailableError):
                    value = (await store.read("/app/before")).value
                    break
            assert value == b"stored"
            assert await store.list("/app") == ["/app/before"]
            assert failures == 5
