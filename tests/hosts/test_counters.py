"""Counters and rollback-protected sealing: the table, its sealed store, the soft host."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, HostError, auth
from taonet.hosts import SoftHost, SoftTao
from taonet.hosts._counters import (
    MAX_LABELS_PER_PROGRAM,
    MAX_TABLE_ENTRIES,
    CounterStore,
    CounterTable,
    ParentTableSealer,
    SoftTableSealer,
)
from taonet.hosts._tao import MAX_COUNTER, MAX_SEALED_BYTES
from taonet.wire import message_class, serialize
from tests.conftest import PASSWORD
from tests.hosts.test_rpc import NoCounters
from tests.tao_doubles import program

TIMEOUT = 10
TABLE_CONTEXT = b"taonet counter table v1\x00taonet.host.counters\x00"


@pytest.fixture
def tao(host: SoftHost) -> SoftTao:
    return host.tao_for(program(host.name, 1))


def directory(host: SoftHost) -> Path:
    assert host._directory is not None
    return host._directory


def rollback_blob(program_name: str, label: str, counter: int, data: bytes) -> bytes:
    """A serialized RollbackSealedData, as a forger would build it."""
    entry = message_class("RollbackEntry")(
        hosted_program_name=program_name, entry_label=label, counter=counter
    )
    return serialize(message_class("RollbackSealedData")(entry=entry, protected_data=data))


# -- CounterTable: pure logic and strict decoding ---------------------------------------------

names = st.text(min_size=1, max_size=40)
labels = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64)  # type: ignore[arg-type]
values = st.integers(0, MAX_COUNTER)


@given(st.dictionaries(st.tuples(names, labels), values, max_size=20), values)
def test_table_round_trip(entries: dict[tuple[str, str], int], version: int) -> None:
    table = CounterTable()
    for (name, label), value in entries.items():
        table.init(name, label, value)
    assert table.version == len(entries) == len(table)
    table.version = version
    data = table.to_bytes()
    back = CounterTable.from_bytes(data)
    assert list(back.items()) == sorted((n, lb, v) for (n, lb), v in entries.items())
    assert back.version == version
    assert back.to_bytes() == data


@given(st.binary(max_size=300))
def test_garbage_decodes_to_a_table_or_a_codec_error(data: bytes) -> None:
    try:
        table = CounterTable.from_bytes(data)
    except CodecError:
        return
    assert all(value >= 0 for _, _, value in table.items())
    assert table.version >= 0


def entry(name: Any = "p", label: Any = "c", counter: int = 1) -> Any:
    return message_class("RollbackEntry")(
        hosted_program_name=name, entry_label=label, counter=counter
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            serialize(message_class("RollbackCounterTable")(entries=[entry(), entry(counter=2)])),
            "appears twice",
        ),
        (
            serialize(message_class("RollbackCounterTable")(entries=[entry(counter=-1)])),
            "negative",
        ),
        (serialize(message_class("RollbackCounterTable")(version=-5)), "version is negative"),
        (serialize(message_class("RollbackCounterTable")(entries=[entry(label="")])), "label"),
        (
            serialize(message_class("RollbackCounterTable")(entries=[entry(label="x" * 257)])),
            "label",
        ),
        (serialize(message_class("RollbackCounterTable")(entries=[entry(name="")])), "program"),
        (b"\x0a\x06\x0a\x01p\x12\x01c", "missing required"),  # an entry without its counter
        (b"\x0a\x08\x0a\x01p\x12\x01\xff\x18\x01", "label"),  # a label that is not UTF-8
        (b"\x0a\x08\x0a\x01\xfe\x12\x01c\x18\x01", "program"),  # a name that is not UTF-8
    ],
)
def test_table_decoding_is_strict(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CounterTable.from_bytes(data)


def test_table_counters_only_increase() -> None:
    table = CounterTable()
    assert table.get("p", "c") is None
    assert table.init("p", "c", 0) is True
    assert table.get("p", "c") == 0
    assert table.init("p", "c", 5) is True
    assert table.version == 2
    assert table.init("p", "c", 5) is False  # equal: no change, no new version
    assert table.version == 2
    with pytest.raises(HostError, match="only increase"):
        table.init("p", "c", 4)
    assert table.get("p", "c") == 5
    assert table.bump("p", "c") == 6
    assert table.bump("p", "new") == 1  # a missing counter starts from 0
    assert table.get("q", "c") is None  # counters are per program
    assert table.version == 4


@pytest.mark.parametrize("bad", [-1, MAX_COUNTER + 1, True, 1.5, "3"])
def test_table_refuses_values_outside_int64(bad: Any) -> None:
    table = CounterTable()
    with pytest.raises(HostError, match="counter must be an integer"):
        table.init("p", "c", bad)
    assert len(table) == 0
    assert table.version == 0


def test_table_refuses_bad_labels_and_names() -> None:
    table = CounterTable()
    for label in ("", "x" * 257, "é" * 129, "\ud800", b"c", None):
        with pytest.raises(HostError, match="label"):
            table.bump("p", label)  # type: ignore[arg-type]
    table.bump("p", "é" * 128)  # exactly 256 bytes
    with pytest.raises(HostError, match="program name"):
        table.bump("", "c")
    assert len(table) == 1


def test_a_counter_at_its_maximum_cannot_be_bumped() -> None:
    table = CounterTable()
    table.init("p", "c", MAX_COUNTER)
    with pytest.raises(HostError, match="maximum"):
        table.bump("p", "c")
    assert table.get("p", "c") == MAX_COUNTER


def test_table_size_limits() -> None:
    table = CounterTable()
    for i in range(MAX_LABELS_PER_PROGRAM):
        table.init("p", f"l{i}", 0)
    with pytest.raises(HostError, match="at most"):
        table.bump("p", "one more")
    table.bump("p", "l0")  # existing counters still move
    # The per-program limit survives a round trip (the count is rebuilt).
    with pytest.raises(HostError, match="at most"):
        CounterTable.from_bytes(table.to_bytes()).bump("p", "one more")
    for n in range(1, MAX_TABLE_ENTRIES // MAX_LABELS_PER_PROGRAM):
        for i in range(MAX_LABELS_PER_PROGRAM):
            table.init(f"p{n}", f"l{i}", 0)
    assert len(table) == MAX_TABLE_ENTRIES
    with pytest.raises(HostError, match="full"):
        table.bump("another", "c")
    with pytest.raises(HostError, match="full"):
        CounterTable.from_bytes(table.to_bytes()).bump("another", "c")


# -- CounterStore ------------------------------------------------------------------------------


async def test_an_in_memory_store() -> None:
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(None)
    name = auth.Prin("key", auth.Bytes(b"k"))
    assert store.get_counter(name, "c") is None
    assert await store.bump(name, "c") == 1
    await store.init_counter(name, "c", 7)
    assert store.get_counter(name, "c") == 7
    assert not store.rollback_protected


async def test_a_store_needs_a_sealer_for_its_file(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(ValueError, match="sealer"):
        await CounterStore.open(tmp_path / "t")


async def test_every_change_is_stored_before_it_returns(host: SoftHost) -> None:
    path = directory(host) / "counters.sealed"
    me = program(host.name, 1)
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, SoftTableSealer(host))
        assert not path.exists()
        assert await store.bump(me, "c") == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        reopened = await CounterStore.open(path, SoftTableSealer(host))
        assert reopened.get_counter(me, "c") == 1
        await store.init_counter(me, "d", 40)
        reopened = await CounterStore.open(path, SoftTableSealer(host))
        assert reopened.get_counter(me, "d") == 40


async def test_concurrent_bumps_get_distinct_values(host: SoftHost) -> None:
    path = directory(host) / "counters.sealed"
    me = program(host.name, 1)
    got: list[int] = []

    async def bump(store: CounterStore) -> None:
        got.append(await store.bump(me, "c"))

    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, SoftTableSealer(host))
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(bump, store)
        assert sorted(got) == list(range(1, 41))
        reopened = await CounterStore.open(path, SoftTableSealer(host))
        assert reopened.get_counter(me, "c") == 40


async def test_a_failed_write_leaves_the_counter_where_callers_were_told(host: SoftHost) -> None:
    path = directory(host) / "counters.sealed"
    me = program(host.name, 1)
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, SoftTableSealer(host))
        assert await store.bump(me, "c") == 1
        path.unlink()
        path.mkdir()  # the rename onto the table file now fails
        with pytest.raises(
            HostError, match="cannot store the counter table in " + re.escape(str(path))
        ):
            await store.bump(me, "c")
        with pytest.raises(HostError, match="cannot store"):
            await store.init_counter(me, "c", 9)
        assert store.get_counter(me, "c") == 1
        path.rmdir()
        assert await store.bump(me, "c") == 2
        reopened = await CounterStore.open(path, SoftTableSealer(host))
        assert reopened.get_counter(me, "c") == 2


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage, not sealed at all",
        "sealed junk",
        "sealed non-table",
        "sealed by a program under any",
    ],
)
async def test_a_bad_table_file_is_an_error_never_a_reset(host: SoftHost, content: Any) -> None:
    path = directory(host) / "counters.sealed"
    me = program(host.name, 1)
    if content == "sealed junk":
        content = host.seal_for(host.name, TABLE_CONTEXT + b"\xff\xff\xff")
    elif content == "sealed non-table":
        content = host.seal_for(host.name, b"some other sealed data")
    elif content == "sealed by a program under any":
        forged = CounterTable()
        forged.init(str(me), "c", 0)
        content = host.seal_for(me, TABLE_CONTEXT + forged.to_bytes(), "any")
    path.write_bytes(content)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(
            HostError, match="cannot open the counter table " + re.escape(str(path))
        ):
            await CounterStore.open(path, SoftTableSealer(host))
        # The same through the host, after a restart; and the file is left as it was.
        restarted = SoftHost.load(directory(host), PASSWORD)
        with pytest.raises(HostError, match=r"counters\.sealed"):
            await restarted.tao_for(me).get_counter("c")
        assert restarted.counters is None
    assert path.read_bytes() == content


# -- rollback-protected sealing on a soft host -------------------------------------------------


async def test_get_without_init_and_counters_only_increase(tao: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(HostError, match="no counter 'c'"):
            await tao.get_counter("c")
        await tao.init_counter("c", 3)
        assert await tao.get_counter("c") == 3
        await tao.init_counter("c", 3)
        with pytest.raises(HostError, match="only increase"):
            await tao.init_counter("c", 2)
        with pytest.raises(HostError, match="counter must be an integer"):
            await tao.init_counter("c", -1)
        assert await tao.get_counter("c") == 3


@pytest.mark.parametrize("policy", ["self", "few"])
async def test_rollback_protected_round_trip(tao: SoftTao, policy: str) -> None:
    with trio.fail_after(TIMEOUT):
        for data in (b"", b"x", bytes(range(256)) * 100):
            blob = await tao.rollback_protected_seal("c", data, policy)
            assert await tao.rollback_protected_unseal(blob) == (data, policy)
        assert await tao.get_counter("c") == 3
        assert await tao.rollback_protected_unseal(
            await tao.rollback_protected_seal("d", b"z")
        ) == (
            b"z",
            "self",
        )
        assert await tao.get_counter("d") == 1  # the first seal is at 1
        await tao.init_counter("e", 5)
        await tao.rollback_protected_seal("e", b"y")
        assert await tao.get_counter("e") == 6


async def test_an_older_blob_is_detected(tao: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        first = await tao.rollback_protected_seal("c", b"one")
        second = await tao.rollback_protected_seal("c", b"two")
        with pytest.raises(
            HostError, match=r"^rollback detected: .* sealed at counter 1, the counter is now 2$"
        ):
            await tao.rollback_protected_unseal(first)
        assert await tao.rollback_protected_unseal(second) == (b"two", "self")
        # Moving the counter by hand retires the current blob too.
        await tao.init_counter("c", 10)
        with pytest.raises(HostError, match="rollback detected"):
            await tao.rollback_protected_unseal(second)
        # Other labels are independent.
        other = await tao.rollback_protected_seal("d", b"three")
        assert await tao.rollback_protected_unseal(other) == (b"three", "self")


async def test_refused_requests_do_not_move_the_counter(tao: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        await tao.init_counter("c", 1)
        with pytest.raises(HostError, match="use self or few"):
            await tao.rollback_protected_seal("c", b"x", "any")
        with pytest.raises(HostError, match="unknown policy"):
            await tao.rollback_protected_seal("c", b"x", "bogus")
        with pytest.raises(HostError, match="over"):
            await tao.rollback_protected_seal("c", b"x" * MAX_SEALED_BYTES)
        for label in ("", "x" * 257):
            with pytest.raises(HostError, match="label"):
                await tao.rollback_protected_seal(label, b"x")
        assert await tao.get_counter("c") == 1


async def test_blobs_of_another_program_are_refused(host: SoftHost, tao: SoftTao) -> None:
    me = await tao.get_tao_name()
    other = host.tao_for(program(host.name, 2))
    with trio.fail_after(TIMEOUT):
        blob = await tao.rollback_protected_seal("c", b"mine")
        with pytest.raises(HostError, match="bound to another principal"):
            await other.rollback_protected_unseal(blob)
        # A blob naming me, sealed by the other program for itself: the name is checked.
        forged = await other.seal(rollback_blob(str(me), "c", 1, b"forged"))
        with pytest.raises(HostError, match="sealed for another program"):
            await other.rollback_protected_unseal(forged)
        # The same sealed under "any" would open for me: refused by its policy.
        forged = await other.seal(rollback_blob(str(me), "c", 1, b"forged"), "any")
        with pytest.raises(HostError, match="policy 'any'"):
            await tao.rollback_protected_unseal(forged)
        assert await tao.rollback_protected_unseal(blob) == (b"mine", "self")


async def test_not_rollback_protected_data_is_a_host_error(tao: SoftTao) -> None:
    with trio.fail_after(TIMEOUT):
        for plain in (b"", b"\xff\xff", b"ordinary data"):
            with pytest.raises(HostError, match="not rollback-protected data"):
                await tao.rollback_protected_unseal(await tao.seal(plain))
        blob = bytearray(await tao.rollback_protected_seal("c", b"x"))
        blob[-1] ^= 1
        with pytest.raises(HostError, match="integrity"):
            await tao.rollback_protected_unseal(bytes(blob))


async def test_counters_and_detection_survive_a_restart(host: SoftHost, tao: SoftTao) -> None:
    me = await tao.get_tao_name()
    with trio.fail_after(TIMEOUT):
        await tao.init_counter("plain", 7)
        old = await tao.rollback_protected_seal("c", b"old")
        new = await tao.rollback_protected_seal("c", b"new")
        again = SoftHost.load(directory(host), PASSWORD).tao_for(me)
        assert await again.get_counter("plain") == 7
        assert await again.get_counter("c") == 2
        with pytest.raises(HostError, match="rollback detected"):
            await again.rollback_protected_unseal(old)
        assert await again.rollback_protected_unseal(new) == (b"new", "self")


async def test_restoring_an_older_counter_file_on_a_soft_host_is_not_detected(
    host: SoftHost, tao: SoftTao
) -> None:
    """The honest limitation: soft keys at the root cannot notice a restored directory."""
    me = await tao.get_tao_name()
    path = directory(host) / "counters.sealed"
    with trio.fail_after(TIMEOUT):
        old = await tao.rollback_protected_seal("c", b"old")
        saved = path.read_bytes()
        new = await tao.rollback_protected_seal("c", b"new")
        path.write_bytes(saved)  # roll the host's table back

        restarted = SoftHost.load(directory(host), PASSWORD)
        again = restarted.tao_for(me)
        # Not detected: the old blob opens again, as if it were current.
        assert await again.rollback_protected_unseal(old) == (b"old", "self")
        assert (await restarted.open_counters()).rollback_protected is False
        # Only a blob newer than the restored table shows that something is wrong.
        with pytest.raises(HostError, match="counter table is behind this blob"):
            await again.rollback_protected_unseal(new)

        # Deleting the table is no better: it silently starts empty.
        path.unlink()
        again = SoftHost.load(directory(host), PASSWORD).tao_for(me)
        with pytest.raises(HostError, match="no counter"):
            await again.get_counter("c")


async def test_a_caller_must_be_hosted(make_host) -> None:  # type: ignore[no-untyped-def]
    a, b = make_host(), make_host()
    with trio.fail_after(TIMEOUT):
        counters = await a.open_counters()
        with pytest.raises(HostError, match="not this host"):
            await counters.init_counter(b.name, "c", 1)
        with pytest.raises(HostError, match="not this host"):
            await counters.get_counter(b.name, "c")
        with pytest.raises(HostError, match="not this host"):
            await counters.rollback_protected_seal(b.name, "c", b"x")
        assert counters.store.get_counter(b.name, "c") is None


# -- a table protected by the parent's counters ------------------------------------------------


@pytest.fixture
def parent(make_host) -> SoftTao:  # type: ignore[no-untyped-def]
    h: SoftHost = make_host()
    return h.tao_for(program(h.name, 9))


async def test_parent_sealer_detects_a_restored_table(parent: SoftTao, tmp_path: Path) -> None:
    path = tmp_path / "stacked" / "counters.sealed"
    path.parent.mkdir()
    me = auth.Prin("key", auth.Bytes(b"stacked host"))
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, ParentTableSealer(parent))
        assert store.rollback_protected
        assert await parent.get_counter("taonet.host.counters") == 0  # claimed, none written
        await store.init_counter(me, "c", 1)
        old = path.read_bytes()
        assert await store.bump(me, "c") == 2
        assert await store.bump(me, "c") == 3
        current = path.read_bytes()
        assert await parent.get_counter("taonet.host.counters") == 3

        reopened = await CounterStore.open(path, ParentTableSealer(parent))
        assert reopened.get_counter(me, "c") == 3

        path.write_bytes(old)
        with pytest.raises(HostError, match=re.escape(str(path)) + ".*rollback detected"):
            await CounterStore.open(path, ParentTableSealer(parent))
        path.unlink()
        with pytest.raises(HostError, match="shows one was written"):
            await CounterStore.open(path, ParentTableSealer(parent))
        path.write_bytes(current)
        assert (await CounterStore.open(path, ParentTableSealer(parent))).get_counter(me, "c") == 3


async def test_parent_sealer_survives_a_parent_restart(make_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    parent_host: SoftHost = make_host()
    name = program(parent_host.name, 9)
    path = tmp_path / "counters.sealed"
    me = auth.Prin("key", auth.Bytes(b"stacked host"))
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(path, ParentTableSealer(parent_host.tao_for(name)))
        await store.bump(me, "c")
        restarted = SoftHost.load(directory(parent_host), PASSWORD).tao_for(name)
        reopened = await CounterStore.open(path, ParentTableSealer(restarted))
        assert reopened.get_counter(me, "c") == 1
        # Another program on the same parent has other counters: it cannot open the table.
        stranger = parent_host.tao_for(program(parent_host.name, 8))
        with pytest.raises(HostError, match="bound to another principal"):
            await CounterStore.open(path, ParentTableSealer(stranger))


async def test_parent_sealer_refuses_other_sealed_data(parent: SoftTao, tmp_path: Path) -> None:
    path = tmp_path / "counters.sealed"
    with trio.fail_after(TIMEOUT):
        # Current rollback-protected data of the parent, but not a table for this label.
        path.write_bytes(await parent.rollback_protected_seal("taonet.host.counters", b"x"))
        with pytest.raises(HostError, match="not a counter table"):
            await CounterStore.open(path, ParentTableSealer(parent))
        other = tmp_path / "other.sealed"
        store = await CounterStore.open(other, ParentTableSealer(parent, "another.table"))
        await store.bump(auth.Prin("key", auth.Bytes(b"h")), "c")
        shutil.copyfile(other, path)
        with pytest.raises(HostError, match="not a counter table"):
            await CounterStore.open(path, ParentTableSealer(parent))


async def test_parent_without_counters_cannot_protect_a_table(
    parent: SoftTao, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(HostError, match="not supported by this host"):
        await CounterStore.open(tmp_path / "counters.sealed", ParentTableSealer(NoCounters(parent)))


async def test_a_program_cannot_escape_its_counter_quota_by_extending_its_name() -> None:
    from taonet.crypto import Keyset
    from taonet.hosts._counters import MAX_LABELS_PER_PROGRAM, HostCounters

    core = SoftHost(Keyset.generate())
    launched = core.name.extend(auth.SubPrin((auth.PrinExt("Program", (auth.Bytes(b"p"),)),)))
    other = core.name.extend(auth.SubPrin((auth.PrinExt("Program", (auth.Bytes(b"q"),)),)))

    def program_of(name: auth.Prin) -> auth.Prin:
        return auth.Prin(name.type, name.key_hash, auth.SubPrin(name.ext.exts[:1]))

    counters = HostCounters(core, await CounterStore.open(None), program_of=program_of)
    half = MAX_LABELS_PER_PROGRAM // 2
    alias = launched.extend(auth.SubPrin((auth.PrinExt("Alias", ()),)))
    for i in range(half):
        await counters.init_counter(launched, f"a{i}", 1)
    for i in range(MAX_LABELS_PER_PROGRAM - half):
        await counters.init_counter(alias, f"b{i}", 1)
    with pytest.raises(HostError, match="at most"):
        await counters.init_counter(alias.extend(auth.SubPrin((auth.PrinExt("More", ()),))), "c", 1)
    with pytest.raises(HostError, match="at most"):
        await counters.rollback_protected_seal(launched, "new", b"x")
    # Existing counters still work, and another program is not affected.
    await counters.init_counter(launched, "a0", 5)
    await counters.init_counter(other, "a0", 1)
    assert await counters.get_counter(other, "a0") == 1


# -- the write budget of a table under the parent's counters (TPM NV wear) ---------------------


# The budget's clock is a trio MockClock moved by hand (no sleeping, nothing racing): the
# run's own clock stays real, so trio.fail_after bounds the file and seal I/O (an
# autojump clock would jump to the fail_after deadline while a thread writes).


async def test_a_program_cannot_drive_unbounded_nv_writes(parent: SoftTao, tmp_path: Path) -> None:
    """The nv_wear attack: a hosted program seals in a loop, each seal one reseal of the
    host's table, one NV increment on a TPM root. With the default budget of a store
    under a ParentTableSealer it gets PROGRAM_BURST seals, then one per interval."""
    from taonet.crypto import Keyset
    from taonet.hosts._counters import HostCounters
    from taonet.hosts._write_budget import PROGRAM_BURST, PROGRAM_INTERVAL, WriteBudget

    core = SoftHost(Keyset.generate())
    prog = program(core.name, 1)
    clock = trio.testing.MockClock()
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(tmp_path / "counters.sealed", ParentTableSealer(parent))
        # The default for such a store is a budget with the default rates.
        default = HostCounters(core, store)
        for _ in range(PROGRAM_BURST):
            await default.rollback_protected_seal(prog, "default", b"x")
        with pytest.raises(HostError, match="too often"):
            await default.rollback_protected_seal(prog, "default", b"x")
        counters = HostCounters(core, store, budget=WriteBudget(clock=clock.current_time))
        for _ in range(PROGRAM_BURST):
            await counters.rollback_protected_seal(prog, "wear", b"x")
        written = await parent.get_counter("taonet.host.counters")
        with pytest.raises(HostError, match=r"too often.*retry in \d+ s"):
            await counters.rollback_protected_seal(prog, "wear", b"x")
        with pytest.raises(HostError, match="too often"):
            await counters.init_counter(prog, "wear2", 7)
        # Refused: nothing written, no counter moved.
        assert await parent.get_counter("taonet.host.counters") == written
        assert store.get_counter(prog, "wear") == PROGRAM_BURST
        assert store.get_counter(prog, "wear2") is None
        # A no-op (equal value) and reads cost nothing.
        await counters.init_counter(prog, "wear", PROGRAM_BURST)
        assert await counters.get_counter(prog, "wear") == PROGRAM_BURST
        clock.jump(PROGRAM_INTERVAL)
        await counters.rollback_protected_seal(prog, "wear", b"x")
        with pytest.raises(HostError, match="too often"):
            await counters.rollback_protected_seal(prog, "wear", b"x")
        # Another program has its own budget.
        await counters.rollback_protected_seal(program(core.name, 2), "wear", b"x")


async def test_the_host_wide_budget_bounds_all_programs_together(
    parent: SoftTao, tmp_path: Path
) -> None:
    """Many programs (or one launching others) share the host's budget; a caller that
    extends its name is charged to the program the host launched."""
    from taonet.crypto import Keyset
    from taonet.hosts._counters import HostCounters
    from taonet.hosts._write_budget import WriteBudget

    core = SoftHost(Keyset.generate())

    def program_of(name: auth.Prin) -> auth.Prin:
        return auth.Prin(name.type, name.key_hash, auth.SubPrin(name.ext.exts[:1]))

    clock = trio.testing.MockClock()
    budget = WriteBudget(
        program_burst=3, program_interval=5, host_burst=5, host_interval=2, clock=clock.current_time
    )
    with trio.fail_after(TIMEOUT):
        store = await CounterStore.open(tmp_path / "counters.sealed", ParentTableSealer(parent))
        counters = HostCounters(core, store, program_of=program_of, budget=budget)
        one = program(core.name, 1)
        alias = one.extend(auth.SubPrin((auth.PrinExt("Alias", ()),)))
        for caller in (one, alias, one):
            await counters.rollback_protected_seal(caller, "c", b"x")
        with pytest.raises(HostError, match="this program changes"):
            await counters.rollback_protected_seal(alias, "c", b"x")  # charged to `one`
        await counters.init_counter(program(core.name, 2), "c", 1)
        await counters.init_counter(program(core.name, 3), "c", 1)
        with pytest.raises(HostError, match=r"programs on this host .*retry in 2 s"):
            await counters.init_counter(program(core.name, 4), "c", 1)
        clock.jump(2)
        await counters.init_counter(program(core.name, 4), "c", 1)


async def test_a_soft_table_has_no_write_budget(tao: SoftTao) -> None:
    """Only a table under the parent's counters (NV on a TPM root) is budgeted."""
    from taonet.hosts._write_budget import HOST_BURST

    with trio.fail_after(TIMEOUT):
        for _ in range(HOST_BURST + 1):
            await tao.rollback_protected_seal("c", b"x")


def test_a_write_budget_needs_positive_rates() -> None:
    from taonet.hosts._write_budget import WriteBudget

    for bad in ({"program_burst": 0}, {"host_interval": 0.0}):
        with pytest.raises(ValueError, match="positive intervals"):
            WriteBudget(**bad)
