"""Attacks on revocation from an outside review, repeated against real TLS channels.

* a newer CRL that drops a revoked serial (a domain service restored from a backup
  of its audit log) must not let that peer back in;
* a lower-numbered CRL that revokes more (a service whose clock stepped back) is
  taken for its additions, never for removals, and an expired CRL does not block a
  fresh one;
* a handler that retries after ChannelRevokedError must not freeze the server;
* a wall clock that jumps past nextUpdate must close open channels promptly;
* two CRLs taken back to back must not leave the cache older than memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from taonet import AuthenticationError, AuthorizationError, certs
from taonet.channel import ChannelRevokedError, CRLSource, TaoStream, open_channel
from taonet.provision import RevocationWatcher
from taonet.provision import _crl as crl_module
from tests.channel.conftest import Programs, echo, start_server
from tests.conftest import PASSWORD

H = 3600 * 10**9


def crl(programs: Programs, serials: list[int], number: int, now_ns: int | None = None) -> bytes:
    return certs.make_crl(
        programs.domain.unlock(PASSWORD),
        programs.domain.policy_anchor,
        serials,
        now_ns=now_ns if now_ns is not None else time.time_ns(),
        crl_number=number,
    )


def serial(identity: object) -> int:
    certificate = getattr(identity, "certificate", None)
    assert certificate is not None
    return int(certificate.serial)


async def echoes(port: int, identity: object) -> bool:
    """Whether ``identity`` gets an echo from the server at ``port`` (False: refused)."""
    stream = await open_channel("127.0.0.1", port, identity)  # type: ignore[arg-type]
    try:
        await stream.send_all(b"hi")
        return await stream.receive_some() == b"hi"
    except (AuthorizationError, trio.BrokenResourceError):
        return False
    finally:
        await stream.aclose()


# F1: a restored service hands out a newer CRL without the serial ---------------------------


async def test_a_newer_crl_that_drops_a_revoked_serial_does_not_unrevoke_it(
    programs: Programs, nursery: trio.Nursery
) -> None:
    source = CRLSource(programs.domain.policy_cert)
    mallory = await programs.identity(2)
    await source.update(crl(programs, [], number=1))
    port = await start_server(nursery, await programs.identity(1), revocations=source)
    with trio.fail_after(30):
        assert await echoes(port, mallory)
        await source.update(crl(programs, [serial(mallory)], number=10))
        assert not await echoes(port, mallory)
        with structlog.testing.capture_logs() as logs:
            # The restored service's CRL: numbered higher, lists nobody. It is taken...
            assert await source.update(crl(programs, [], number=11))
        assert source.crl is not None
        assert source.crl.number == 11
        # ... but Mallory stays revoked, and it is said loudly.
        assert source.is_revoked(serial(mallory))
        assert source.kept_serials == {serial(mallory)}
        assert not await echoes(port, mallory)
        dropped = [e for e in logs if e["event"] == "crl_dropped_serials"]
        assert len(dropped) == 1
        assert dropped[0]["log_level"] == "warning"
        assert dropped[0]["serials"] == [serial(mallory)]
        # Listed again later: it is no longer "kept", just listed.
        await source.update(crl(programs, [serial(mallory)], number=12))
        assert source.kept_serials == frozenset()
        assert source.is_revoked(serial(mallory))


async def test_the_serials_kept_are_bounded(
    programs: Programs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taonet.channel import _revocation

    monkeypatch.setattr(_revocation, "MAX_KEPT_SERIALS", 3)
    source = CRLSource(programs.domain.policy_cert)
    await source.update(crl(programs, [1, 2], number=1))
    await source.update(crl(programs, [3, 4], number=2))  # 1, 2 kept
    with structlog.testing.capture_logs() as logs:
        await source.update(crl(programs, [], number=3))  # 1, 2, 3, 4: one too many
    assert source.kept_serials == {2, 3, 4}  # the oldest forgotten first
    assert [e["forgotten"] for e in logs if e["event"] == "crl_kept_serials_forgotten"] == [1]


# F2: the service's clock stepped back ----------------------------------------------------


async def test_a_lower_numbered_crl_only_adds_revocations(
    programs: Programs, nursery: trio.Nursery
) -> None:
    source = CRLSource(programs.domain.policy_cert)
    mallory = await programs.identity(2)
    alice = await programs.identity(3)
    await source.update(crl(programs, [], number=100))
    port = await start_server(nursery, await programs.identity(1), revocations=source)
    with trio.fail_after(30):
        open_ = await open_channel("127.0.0.1", port, mallory)
        await open_.send_all(b"x")
        assert await open_.receive_some() == b"x"
        # Signed after the service's clock went back 30 s: a lower number, one more serial.
        with structlog.testing.capture_logs() as logs:
            assert await source.update(crl(programs, [serial(mallory)], number=50))
        assert source.crl is not None
        assert source.crl.number == 100
        assert source.is_revoked(serial(mallory))
        assert any(e["event"] == "crl_serials_added_from_older_crl" for e in logs)
        with pytest.raises(trio.BrokenResourceError):
            await open_.receive_some()  # her open channel was closed
        assert not await echoes(port, mallory)
        assert await echoes(port, alice)
        # A lower-numbered list that drops her (a replay) removes nothing and is refused,
        # with a message that does not accuse a rollback only.
        with pytest.raises(AuthenticationError, match=r"revokes nothing .* clock or audit log"):
            await source.update(crl(programs, [], number=40))
        assert source.is_revoked(serial(mallory))
        await open_.aclose()


async def test_an_expired_crl_held_does_not_block_a_fresh_lower_numbered_one(
    programs: Programs,
) -> None:
    now = [time.time_ns()]
    source = CRLSource(programs.domain.policy_cert, clock=lambda: now[0])
    await source.update(crl(programs, [5], number=100, now_ns=now[0]))
    now[0] += 25 * H  # the CRL held (one day) has expired
    with pytest.raises(AuthenticationError, match="expired"):
        source.check(6)
    fresh = crl(programs, [6], number=7, now_ns=now[0])
    assert await source.update(fresh)
    assert source.crl is not None
    assert source.crl.number == 7
    source.check(8)  # usable again
    assert source.is_revoked(5)
    assert source.is_revoked(6)


# F4: a handler that retries on a revoked stream --------------------------------------------


async def test_calls_on_a_revoked_stream_are_checkpoints(
    programs: Programs, nursery: trio.Nursery
) -> None:
    source = CRLSource(programs.domain.policy_cert)
    await source.update(crl(programs, [], number=1))
    got: list[TaoStream] = []
    ready = trio.Event()

    async def keep(stream: TaoStream) -> None:
        got.append(stream)
        ready.set()
        await trio.sleep_forever()

    port = await start_server(nursery, await programs.identity(1), keep, revocations=source)
    client_id = await programs.identity(2)
    with trio.fail_after(30):
        client = await open_channel("127.0.0.1", port, client_id)
        await client.send_all(b"x")
        await ready.wait()
        await source.update(crl(programs, [serial(client_id)], number=2))
        calls = (
            lambda: got[0].receive_some(),
            lambda: got[0].send_all(b"y"),
            lambda: got[0].wait_send_all_might_not_block(),
        )
        for call in calls:
            with trio.testing.assert_checkpoints(), pytest.raises(ChannelRevokedError):
                await call()
        await client.aclose()


async def test_a_handler_that_retries_on_a_revoked_stream_does_not_freeze_the_server(
    programs: Programs, nursery: trio.Nursery
) -> None:
    """The handler loops on BrokenResourceError; Alice must still be served meanwhile."""
    source = CRLSource(programs.domain.policy_cert)
    await source.update(crl(programs, [], number=1))
    mallory = await programs.identity(2)
    alice = await programs.identity(3)
    spinning = trio.Event()
    alice_served = trio.Event()
    retries_before_alice: list[int] = []
    handler_done = trio.Event()
    limit = 200_000  # retries; a frozen server gets here before Alice is answered

    async def handler(stream: TaoStream) -> None:
        assert stream.peer.certificate is not None
        if stream.peer.certificate.serial != serial(mallory):
            await echo(stream)
            return
        await stream.receive_some()
        retries = 0
        while not alice_served.is_set() and retries < limit:
            try:
                await stream.receive_some()
            except trio.BrokenResourceError:
                retries += 1
                spinning.set()
        retries_before_alice.append(retries)
        handler_done.set()

    port = await start_server(nursery, await programs.identity(1), handler, revocations=source)
    with trio.fail_after(60):
        victim = await open_channel("127.0.0.1", port, mallory)
        await victim.send_all(b"x")
        await trio.testing.wait_all_tasks_blocked()
        await source.update(crl(programs, [serial(mallory)], number=2))
        await spinning.wait()
        assert await echoes(port, alice)
        alice_served.set()
        await handler_done.wait()
        assert retries_before_alice[0] < limit
        await victim.aclose()


# F5: the wall clock jumps past nextUpdate --------------------------------------------------


async def test_open_channels_are_cut_when_the_wall_clock_jumps_past_next_update(
    programs: Programs, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    base = time.time_ns()
    jump = [0]

    def clock() -> int:
        return base + int(trio.current_time() * 1e9) + jump[0]

    source = CRLSource(programs.domain.policy_cert, clock=clock)
    await source.update(crl(programs, [], number=1, now_ns=clock()))
    await nursery.start(source.run)
    port = await start_server(
        nursery, await programs.identity(1), revocations=source, idle_timeout=None
    )
    with trio.fail_after(600):
        client = await open_channel("127.0.0.1", port, await programs.identity(2))
        await client.send_all(b"x")
        assert await client.receive_some() == b"x"
    # A VM paused for a day resumes: the wall clock jumps, the monotonic one did not.
    jump[0] = 25 * H
    with trio.fail_after(120), pytest.raises(trio.BrokenResourceError):
        await client.receive_some()  # cut within the periodic recheck, not a day later
    await client.aclose()


# F6: two CRLs taken back to back and the cache ----------------------------------------------


async def test_the_cache_is_never_left_older_than_the_crl_held(
    programs: Programs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = crl_module.atomic_write  # type: ignore[attr-defined]
    first_started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    release_first = trio.Event()
    calls: list[int] = []

    def slow_first(path: Path, data: bytes, mode: int) -> None:
        calls.append(1)
        if len(calls) == 1:
            # A slow fsync: the first write is held until the second CRL was taken.
            trio.from_thread.run_sync(first_started.set, trio_token=token)
            trio.from_thread.run(release_first.wait, trio_token=token)
        real(path, data, mode=mode)

    monkeypatch.setattr(crl_module, "atomic_write", slow_first)
    cache = tmp_path / "crl"
    watcher = RevocationWatcher(
        programs.domain.policy_cert, ("127.0.0.1", 9), watch=False, cache=cache
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.update, crl(programs, [7], number=1))
            await first_started.wait()
            nursery.start_soon(watcher.update, crl(programs, [7, 8], number=2))
            await trio.testing.wait_all_tasks_blocked()
            release_first.set()
    assert watcher.crl is not None
    assert watcher.crl.number == 2
    on_disk = certs.verify_crl(
        programs.domain.policy_anchor, cache.read_bytes(), now_ns=time.time_ns()
    )
    assert on_disk.number == 2
