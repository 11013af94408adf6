"""A grant revoked through one replica is refused by every other at once.

The review's attack (F5): grant Read to a program through replica A, revoke it
through A, and read through replica B on a channel opened before: B kept releasing
for up to 4.5 s (it reloaded grants every 5 s). Now every grant and revocation bumps
a generation row in its own transaction, and a replica reads that row (and reloads
when it moved) before it lets a request through on a grant's strength. Both
storages: two servers on one SQLite file, and two on one PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from taonet.secrets import GrantRequest, UnauthorizedError, connect
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.test_grant import OWNER, tail
from tests.secrets.test_operator_server import operator
from tests.secrets.world import secret_world


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
async def test_a_revocation_through_one_replica_holds_on_another(
    tmp_path: Path,
    make_domain: MakeDomain,
    make_host: MakeHost,
    storage: str,
    request: pytest.FixtureRequest,
) -> None:
    options = {}
    if storage == "postgresql":
        options["db_url"] = request.getfixturevalue("postgres_url")
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER, **options) as world:
            second = await world.start_server("replica", **options)
            other = ("127.0.0.1", second.port)
            async with connect(world.address, await world.identity("owner")) as owner:
                await owner.create("/app/db/password", b"hunter2")
            stranger = tail(world, "stranger")
            async with connect(other, await world.identity("stranger")) as store:
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/db/password")
                async with operator(world) as op:  # through the first replica
                    await op.call(GrantRequest(stranger, ("Read",), "/app/db"))
                # The second honours it at once (it used to wait for its refresh).
                assert (await store.read("/app/db/password")).value == b"hunter2"
                async with operator(world) as op:
                    await op.call(GrantRequest(stranger, ("Read",), "/app/db", revoke=True))
                # The same channel to the second replica, right after: refused.
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/db/password")
