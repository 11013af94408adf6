"""Availability of a host's counters under its parent's rollback-protected seal: one user
cannot use up the write budget for root's programs (outside review a4s14, finding 2),
and a full disk does not leave the host unable to restart (finding 3)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from taonet import HostError, auth
from taonet.crypto import Keyset
from taonet.hosts import SoftHost, SoftTao
from taonet.hosts._counters import (
    ChargedCounters,
    CounterStore,
    HostCounters,
    ParentTableSealer,
)
from taonet.hosts._write_budget import (
    HOST_BURST,
    HOST_RESERVE,
    PROGRAM_BURST,
    UID_BURST,
    UID_INTERVAL,
    WriteAccount,
    WriteBudget,
)
from tests.tao_doubles import program

TIMEOUT = 30


@pytest.fixture
def parent(make_host) -> SoftTao:  # type: ignore[no-untyped-def]
    h: SoftHost = make_host()
    return h.tao_for(program(h.name, 9))


def _program_of(name: auth.Prin) -> auth.Prin:
    return auth.Prin(name.type, name.key_hash, auth.SubPrin(name.ext.exts[:1]))


# -- the write budget: per program measurement, per uid, and a reserve for root -------------
#
# As in test_counters.py the budget's clock is a trio MockClock moved by hand, and the run's
# own clock stays real so that trio.fail_after bounds the seals and file writes.


async def test_one_user_cannot_starve_roots_programs(parent: SoftTao, tmp_path: Path) -> None:
    """The budget_starve attack: a user restarts one program under program_ids (a new
    name each time) and runs several others, all sealing as fast as they may; another
    user does the same. Restarts share their measurement's bucket, the user's programs
    together stop at the uid's share, the other users stop at the host's reserve, and
    root's program still writes, at once and all hour long."""
    core = SoftHost(Keyset.generate())
    clock = trio.testing.MockClock()
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(tmp_path / "counters.sealed", ParentTableSealer(parent))
        counters = HostCounters(
            core, store, program_of=_program_of, budget=WriteBudget(clock=clock.current_time)
        )

        def evil(i: int, uid: int = 1000) -> tuple[auth.Prin, ChargedCounters]:
            account = WriteAccount(f"{uid}-evil-{i}", uid=uid, privileged=False)
            return program(core.name, uid % 100 + i), counters.charged_to(account)

        async def drain(name: auth.Prin, charged: ChargedCounters) -> tuple[int, str]:
            done = 0
            while True:
                try:
                    await charged.rollback_protected_seal(name, "c", b"x")
                except HostError as exc:
                    return done, str(exc)
                done += 1

        # Four restarts of one program: four names, one measurement, one bucket.
        restarts = [
            (
                program(core.name, 10 + n),
                counters.charged_to(WriteAccount("1000-evil-0", 1000, False)),
            )
            for n in range(4)
        ]
        totals = [await drain(*r) for r in restarts]
        assert [n for n, _ in totals] == [PROGRAM_BURST, 0, 0, 0]
        assert "this program changes" in totals[1][1]
        # A second program of the same user: its own bucket, but the uid's share ends first.
        done, _ = await drain(*evil(1))
        assert done == UID_BURST - PROGRAM_BURST
        done, why = await drain(*evil(2))
        assert done == 0
        assert "programs of uid 1000" in why
        # Another user takes the rest of the host's budget but its reserve.
        done, _ = await drain(*evil(0, uid=2000))
        assert done == HOST_BURST - UID_BURST - HOST_RESERVE
        done, why = await drain(*evil(1, uid=2000))
        assert done == 0
        assert re.search(r"programs on this host.*kept for root.*retry in \d+ s", why)
        # Root's program writes at once; the reserve is its (and the owner's).
        root = program(core.name, 200)
        roots = counters.charged_to(WriteAccount("root-db", uid=0, privileged=True))
        await roots.rollback_protected_seal(root, "db", b"x")
        # An hour in which six programs of the user and one of the other try every second.
        attackers = [(1000, *evil(i)) for i in range(6)] + [(2000, *evil(1, uid=2000))]
        written = {1000: 0, 2000: 0}
        root_ok = root_refused = 0
        for second in range(1, 3601):
            clock.jump(1)
            for uid, name, charged in attackers:
                with contextlib.suppress(HostError):
                    await charged.rollback_protected_seal(name, "c", b"x")
                    written[uid] += 1
            if second % 60 == 0:
                try:
                    await roots.rollback_protected_seal(root, "db", b"x")
                    root_ok += 1
                except HostError:
                    root_refused += 1
        assert (root_ok, root_refused) == (60, 0)
        # The user never had more than its uid's rate (plus nothing left of its burst).
        assert written[1000] <= 3600 / UID_INTERVAL + 1
        assert store.get_counter(root, "db") == 61


async def test_a_restart_under_a_new_name_gets_no_fresh_bucket() -> None:
    """Program buckets are keyed by (uid, measurement): names do not matter, and the same
    measurement run by another uid is another program (one user's copy of a common
    program does not use up another user's)."""
    clock = trio.testing.MockClock()
    budget = WriteBudget(program_burst=2, clock=clock.current_time)
    first = WriteAccount("aa" * 32, uid=1000, privileged=False)
    for _ in range(2):
        budget.take(first)
    with pytest.raises(HostError, match="this program changes"):
        budget.take(WriteAccount("aa" * 32, uid=1000, privileged=False))
    budget.take(WriteAccount("aa" * 32, uid=1001, privileged=False))
    # A plain name (a host whose programs share one user) is a privileged account.
    budget.take("host.Program([bb])")


def test_a_write_budget_needs_a_reserve_below_its_burst() -> None:
    for bad in ({"host_reserve": -1}, {"host_burst": 4, "host_reserve": 4}):
        with pytest.raises(ValueError, match="reserve"):
            WriteBudget(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive intervals"):
        WriteBudget(uid_burst=0)


# -- a full disk after the parent's counter moved --------------------------------------------


class _Disk:
    """A small filesystem that can be filled and freed again: a tmpfs of its own when
    running as root (unmounted by the fixture), else a directory made read-only."""

    def __init__(self, directory: Path, tmpfs: bool) -> None:
        self.directory = directory
        self._tmpfs = tmpfs
        self._filler = directory / "filler"

    def fill(self) -> None:
        if not self._tmpfs:
            self.directory.chmod(0o500)
            return
        chunk = b"\0" * 4096
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with pytest.raises(OSError, match="No space") as raised:
                _write_forever(fd, chunk)
            assert raised.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        if self._tmpfs:
            self._filler.unlink()
        else:
            self.directory.chmod(0o700)


def _write_forever(fd: int, chunk: bytes) -> None:
    while True:
        os.write(fd, chunk)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[_Disk]:
    directory = tmp_path / "small"
    directory.mkdir(mode=0o700)
    if os.geteuid() != 0:
        try:
            yield _Disk(directory, tmpfs=False)
        finally:
            directory.chmod(0o700)
        return
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(directory)],
        check=True,
        timeout=TIMEOUT,
    )
    try:
        yield _Disk(directory, tmpfs=True)
    finally:
        subprocess.run(["umount", str(directory)], check=True, timeout=TIMEOUT)


async def test_a_full_disk_does_not_leave_the_table_behind(parent: SoftTao, disk: _Disk) -> None:
    """The enospc_brick attack: a hosted program fills the disk, so the table's write
    fails after the parent's counter moved. The store keeps the sealed table and writes
    it before the next change; once written, a restart opens the table."""
    path = disk.directory / "counters.sealed"
    me = program(auth.Prin("key", auth.Bytes(b"stacked host")), 1)
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, ParentTableSealer(parent))
        assert await store.bump(me, "c") == 1
        disk.fill()
        with (
            capture_logs() as logs,
            pytest.raises(HostError, match="already counted this change"),
        ):
            await store.bump(me, "c")
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "counter_table_unwritten"
        ]
        assert store.pending
        # Not current until written: the running host answers as its file will.
        assert store.get_counter(me, "c") == 1
        # A crash now would leave the file behind the parent (refused at the next start).
        with pytest.raises(HostError, match="rollback detected"):
            await CounterStore.open(path, ParentTableSealer(parent))
        # While the disk stays full no other change is made (nothing more is counted).
        counted = await parent.get_counter("taonet.host.counters")
        with pytest.raises(HostError, match="still not written"):
            await store.init_counter(me, "d", 5)
        assert await parent.get_counter("taonet.host.counters") == counted
        assert store.get_counter(me, "d") is None
        disk.free()
        # The pending table (c = 2) is written first, then this change.
        assert await store.bump(me, "c") == 3
        assert not store.pending
        reopened = await CounterStore.open(path, ParentTableSealer(parent))
        assert reopened.get_counter(me, "c") == 3


async def test_shutdown_writes_a_pending_table(parent: SoftTao, disk: _Disk) -> None:
    """aclose (a host's shutdown) retries the write: still full, it logs an error and
    keeps the table pending; once space is freed it writes it and a restart opens."""
    path = disk.directory / "counters.sealed"
    me = program(auth.Prin("key", auth.Bytes(b"stacked host")), 1)
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, ParentTableSealer(parent))
        await store.init_counter(me, "c", 7)
        disk.fill()
        with pytest.raises(HostError, match="already counted"):
            await store.init_counter(me, "c", 8)
        with capture_logs() as logs:
            await store.aclose()
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "counter_table_still_unwritten"
        ]
        assert store.pending
        disk.free()
        await store.aclose()
        assert not store.pending
        assert store.get_counter(me, "c") == 8
        reopened = await CounterStore.open(path, ParentTableSealer(parent))
        assert reopened.get_counter(me, "c") == 8
