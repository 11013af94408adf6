"""TPM NV counters behind the Tao counter calls, and a restored state directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from taonet import ConfigError, HostError, auth
from taonet.hosts._counters import CounterStore, ParentTableSealer

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Tpm2Host


async def _reopen(host: Tpm2Host, directory: Path) -> Tpm2Host:
    from taonet.hosts.tpm2 import Tpm2Host

    await host.aclose()
    with trio.fail_after(60):
        return await Tpm2Host.open(directory)


async def test_counter_calls(host: Tpm2Host) -> None:
    tao = host.tao()
    with pytest.raises(HostError, match="no counter"):
        await tao.get_counter("c")
    await tao.init_counter("c", 0)
    assert await tao.get_counter("c") == 0
    await tao.init_counter("c", 0)  # equal: no change
    await tao.init_counter("c", 3)  # raised by three NV increments
    assert await tao.get_counter("c") == 3
    with pytest.raises(HostError, match="only increase"):
        await tao.init_counter("c", 2)
    with pytest.raises(HostError, match="one step at a time"):
        await tao.init_counter("c", 10_000)
    await tao.init_counter("started-high", 7)
    assert await tao.get_counter("started-high") == 7
    # Counters are per program: another name's "c" is its own.
    other = host.tao(host.name.extend(_sub("other")))
    with pytest.raises(HostError, match="no counter"):
        await other.get_counter("c")


def _sub(name: str) -> auth.SubPrin:
    return auth.SubPrin((auth.PrinExt("Program", (auth.Str(name),)),))


async def test_rollback_protected_seal(host: Tpm2Host) -> None:
    tao = host.tao()
    first = await tao.rollback_protected_seal("state", b"v1")
    assert await tao.get_counter("state") == 1
    assert await tao.rollback_protected_unseal(first) == (b"v1", "self")
    assert await tao.get_counter("state") == 1  # reading does not increment
    second = await tao.rollback_protected_seal("state", b"v2")
    assert await tao.rollback_protected_unseal(second) == (b"v2", "self")
    with pytest.raises(HostError, match="rollback detected"):
        await tao.rollback_protected_unseal(first)  # an older blob, replayed
    with pytest.raises(HostError, match="self or few"):
        await tao.rollback_protected_seal("state", b"v3", "any")
    with pytest.raises(HostError, match="not rollback-protected"):
        await tao.rollback_protected_unseal(await tao.seal(b"plain"))
    other = host.tao(host.name.extend(_sub("other")))
    with pytest.raises(HostError, match="another principal"):
        await other.rollback_protected_unseal(second)


async def test_restored_state_directory_is_detected(host: Tpm2Host, tmp_path: Path) -> None:
    directory = tmp_path / "tpmhost"
    tao = host.tao()
    old = await tao.rollback_protected_seal("state", b"v1")
    shutil.copytree(directory, tmp_path / "copy")
    await tao.rollback_protected_seal("state", b"v2")
    await tao.rollback_protected_seal("state", b"v3")
    # The operator (or an attacker) restores the directory copied before two seals.
    host = await _reopen(host, directory)
    shutil.rmtree(directory)
    shutil.copytree(tmp_path / "copy", directory)
    with trio.fail_after(60):
        await host.aclose()
        from taonet.hosts.tpm2 import Tpm2Host

        restored = await Tpm2Host.open(directory)
    try:
        with pytest.raises(HostError, match="rollback detected"):
            await restored.tao().rollback_protected_unseal(old)
        assert await restored.tao().get_counter("state") == 3  # the TPM's count stands
    finally:
        await restored.aclose()


async def test_restored_directory_before_a_label_existed(host: Tpm2Host, tmp_path: Path) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    directory = tmp_path / "tpmhost"
    await host.aclose()
    shutil.copytree(directory, tmp_path / "copy")
    with trio.fail_after(60):
        host = await Tpm2Host.open(directory)
    try:
        blob = await host.tao().rollback_protected_seal("new", b"v1")
    finally:
        await host.aclose()
    shutil.rmtree(directory)
    shutil.copytree(tmp_path / "copy", directory)
    with trio.fail_after(60):
        restored = await Tpm2Host.open(directory)
    try:
        with pytest.raises(HostError, match="rollback detected"):
            await restored.tao().rollback_protected_unseal(blob)
        # the label gets a new counter at another index, never the old one adopted,
        # and the old blob stays refused under it
        with trio.fail_after(60):
            await restored.tao().rollback_protected_seal("new", b"v2")
        with pytest.raises(HostError, match="rollback detected"), trio.fail_after(60):
            await restored.tao().rollback_protected_unseal(blob)
    finally:
        await restored.aclose()


async def test_hand_edited_counter_map_is_refused(host: Tpm2Host, tmp_path: Path) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    directory = tmp_path / "tpmhost"
    await host.tao().rollback_protected_seal("state", b"v1")
    await host.aclose()
    path = directory / "counters.json"
    text = json.loads(path.read_text())
    text["counters"][0]["base"] -= 1  # would make an old blob's counter match again
    path.write_text(json.dumps(text))
    with pytest.raises(ConfigError, match="integrity check"), trio.fail_after(60):
        await Tpm2Host.open(directory)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"), trio.fail_after(60):
        await Tpm2Host.open(directory)


async def test_a_stacked_hosts_counter_table_on_this_root(host: Tpm2Host, tmp_path: Path) -> None:
    # What a Linux host stacked on the TPM root does with its counter table.
    table = tmp_path / "linux" / "counters.sealed"
    table.parent.mkdir()
    tao = host.tao(host.name.extend(_sub("linux-host")))
    store = await CounterStore.open(table, ParentTableSealer(tao))
    assert store.rollback_protected
    await store.bump(host.name, "x")
    old_table = table.read_bytes()
    await store.bump(host.name, "x")
    reopened = await CounterStore.open(table, ParentTableSealer(tao))
    assert reopened.get_counter(host.name, "x") == 2
    table.write_bytes(old_table)  # the stacked host's directory, restored
    with pytest.raises(HostError, match="rollback detected"):
        await CounterStore.open(table, ParentTableSealer(tao))
    table.unlink()  # or deleted: starting empty is refused too
    with pytest.raises(HostError, match="shows one was written"):
        await CounterStore.open(table, ParentTableSealer(tao))
