"""A rule retracted by the policy key ends at a running secret server, master key too.

The attack the review found: the guard was read once at start, so after the policy
key retracted a program's rule (``Domain.save_guard`` signs the new rule set and
``domain.sig``), the program kept reading, and a replica principal kept getting the
master key, until the server restarted. Here the server runs, the rule is retracted
on disk, and the next channel (and the next request of a channel already open) is
refused. A configuration put back from before (a rollback) does not bring the rule
back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from taonet.domain import ACLGuard
from taonet.protected import SecretObject
from taonet.secrets import ReadRequest, UnauthorizedError, connect
from taonet_services.secret_server import MASTER_ID
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

GRANTS = [("owner", op, "/app") for op in ("Read", "Create")] + [
    ("reader", "Own", MASTER_ID.name),
    ("reader", "Read", "/app"),
]


def retract(world: World, needle: str) -> None:
    """Sign the guard without the rules whose text contains ``needle`` (as an operator)."""
    guard = world.domain.guard
    assert isinstance(guard, ACLGuard)
    rules = [r for r in guard.rules if needle in str(r)]
    assert rules
    for rule in rules:
        guard = guard.without_rule(rule)
    world.domain.save_guard(guard, world.domain.unlock(PASSWORD))


async def test_a_retracted_rule_is_refused_on_a_running_server(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner, reader = await world.identity("owner"), await world.identity("reader")
            async with connect(world.address, owner) as store:
                await store.create("/app/k", b"v")
            async with connect(world.address, reader) as old:
                assert (await old.read("/app/k")).value == b"v"  # remembered by the channel
                master = await old.call(ReadRequest(MASTER_ID.name))
                assert isinstance(master, SecretObject)
                assert master.id == MASTER_ID
                retract(world, "/app")  # the reader's Read on /app, the owner's too
                retract(world, MASTER_ID.name)
                # A new channel: refused (the old code kept the guard it started with).
                async with connect(world.address, reader) as new:
                    with pytest.raises(UnauthorizedError):
                        await new.read("/app/k")
                    with pytest.raises(UnauthorizedError):
                        await new.call(ReadRequest(MASTER_ID.name))
                # The channel opened before: its remembered yes is gone as well.
                with pytest.raises(UnauthorizedError):
                    await old.read("/app/k")
                with pytest.raises(UnauthorizedError):
                    await old.call(ReadRequest(MASTER_ID.name))


async def test_a_rolled_back_configuration_does_not_bring_a_rule_back(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=GRANTS) as world:
            owner = await world.identity("owner")
            async with connect(world.address, owner) as store:
                await store.create("/app/k", b"v")
            saved = tmp_path / "before"
            saved.mkdir()
            for name in ("domain.sig", "acls", "domain.toml"):
                shutil.copy2(world.domain.path / name, saved / name)
            retract(world, "/app")
            async with connect(world.address, owner) as store:
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/k")
            # The files from before the retraction put back (a backup restored): the
            # serial is lower, so the server keeps the guard in force.
            assert world.running is not None
            reloader = world.running.server.refresh_guard.__self__  # type: ignore[union-attr]
            reports = reloader.reports
            for name in ("domain.sig", "acls", "domain.toml"):
                shutil.copy(saved / name, world.domain.path / name)
            async with connect(world.address, owner) as store:
                with pytest.raises(UnauthorizedError):
                    await store.read("/app/k")
            # The domain refuses to load a rollback; the watcher reports it once it
            # has failed for an interval (its looks every second).
            await reloader.wait_report(reports)
            # Both are in the server's audit chain: the retraction put in force, the
            # rollback refused.
            entries = await world.running.server.audit.entries()
            guard_events = [e for e in entries if e.kind == "domain_guard"]
            assert [e.outcome for e in guard_events] == ["reloaded", "refused"]
            assert "serial" in guard_events[1].details["error"], guard_events[1].details
            assert guard_events[0].subject == guard_events[1].subject  # the serial kept
