"""A chain cut behind the running server: refused, and checkpoints soon after releases.

The review's attack (F7): someone with write access to the database deletes the
newest audit entries (an insider's own reads of a secret) while the server runs. The
server used to append on top of the shortened chain, reusing the seqs, and
``taonet audit verify`` said OK. Now the server remembers the last entry it wrote,
refuses to record (or release) anything over a chain that lost it, and a checkpoint
signs releases within about a second, so a cut is visible to ``verify`` as well.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from taonet.audit import AuditError
from taonet.secrets import SecretServiceError, connect
from taonet_services.storage import AuditStore, Database
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import secret_world

GRANTS = [("owner", op, "/") for op in ("Read", "Write", "Create")] + [("reader", "Read", "/")]


def query(path: Path, sql: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(sql).fetchone()[0] or 0)
    finally:
        db.close()


async def test_a_chain_cut_behind_the_server_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            path = world.domain.path / "secrets.db"
            owner, reader = await world.identity("owner"), await world.identity("reader")
            async with connect(world.address, owner) as store:
                await store.create("/payroll/key", b"k")
            async with connect(world.address, reader) as store:
                for _ in range(3):
                    await store.read("/payroll/key")  # the insider's reads
            released = query(path, "select max(seq) from audit_entries")
            # A checkpoint follows the releases soon (the old server: after 100 entries
            # or 60 s), so the cut below is visible to verify too.
            # (Polled from outside, as an auditor reading the file would; bounded above.)
            while query(path, "select max(seq) from audit_checkpoints") < released:  # noqa: ASYNC110
                await trio.sleep(0.05)
            db = sqlite3.connect(path)
            try:
                with db:
                    db.execute("delete from audit_entries where kind = 'secret_released'")
            finally:
                db.close()
            # The old server appended entry `released - 2` again and answered ok.
            async with connect(world.address, owner) as store:
                with pytest.raises(SecretServiceError):
                    await store.create("/after", b"x")
            async with connect(world.address, reader) as store:
                with pytest.raises(SecretServiceError):
                    await store.read("/payroll/key")  # no release over a cut chain
            assert query(path, "select max(seq) from audit_entries") == released - 3
        db2 = await Database.open(path)
        try:
            with pytest.raises(AuditError):
                await (await AuditStore.open(db2)).verify()
        finally:
            await db2.aclose()
