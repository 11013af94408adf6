"""Attacks on the NV counters by another user of the TPM (owner auth is empty, so any
user may delete, define and write owner-range NV indices) and a failed seal."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from taonet import HostError
from tests.hosts.tpm2.tpm2_host_helpers import make_host

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Tpm2Host

CC_NV_UNDEFINE_SPACE = 0x122
CC_NV_WRITE = 0x137
#: TPM_NT_ORDINARY, AUTHWRITE, AUTHREAD, NO_DA, OWNERREAD: an ordinary 8-byte index.
ORDINARY = 0x00000004 | 0x00040000 | 0x02000000 | 0x00020000


@pytest.fixture
async def host(tmp_path: Path, swtpm_tcti: str) -> AsyncIterator[Tpm2Host]:
    h = await make_host(tmp_path / "tpmhost", swtpm_tcti)
    try:
        yield h
    finally:
        with trio.fail_after(60):
            await h.aclose()


def _raw(tcti: str, *commands: bytes) -> list[tuple[bytes, bytes]]:
    """Commands sent by another process's connection (the host must be closed:
    swtpm serves one connection at a time)."""
    from taonet.hosts.tpm2._transport import SyncTransport, parse_tcti

    with SyncTransport(parse_tcti(tcti)) as t:
        return [t.call(c) for c in commands]


def _undefine(index: int) -> bytes:
    from taonet.hosts.tpm2 import _wire

    return _wire.command(
        CC_NV_UNDEFINE_SPACE, [_wire.TPM_RH_OWNER, index], b"", _wire.password_auth()
    )


def _define_ordinary(index: int) -> bytes:
    from taonet.hosts.tpm2 import _wire

    public = (
        _wire.u32(index)
        + _wire.u16(_wire.TPM_ALG_SHA256)
        + _wire.u32(ORDINARY)
        + _wire.u16(0)
        + _wire.u16(8)
    )
    return _wire.command(
        _wire.CC_NV_DEFINE_SPACE,
        [_wire.TPM_RH_OWNER],
        _wire.tpm2b(b"") + _wire.tpm2b(public),
        _wire.password_auth(),
    )


def _write(index: int, value: int) -> bytes:
    from taonet.hosts.tpm2 import _wire

    return _wire.command(
        CC_NV_WRITE,
        [index, index],
        _wire.tpm2b(value.to_bytes(8, "big")) + _wire.u16(0),
        _wire.password_auth(),
    )


async def _reopen(directory: Path) -> Tpm2Host:
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(60):
        return await Tpm2Host.open(directory)


def _index(host: Tpm2Host) -> int:
    (entry,) = host.counters._table.values()
    return entry.index


async def test_counter_replaced_by_an_ordinary_index_holding_an_older_value(
    host: Tpm2Host, tmp_path: Path, swtpm_tcti: str
) -> None:
    from taonet.hosts.tpm2._nvcounters import nv_read_command, parse_nv_read_counter

    tao = host.tao()
    with trio.fail_after(60):
        old = await tao.rollback_protected_seal("state", b"balance=100")
        await tao.rollback_protected_seal("state", b"balance=0")
    index = _index(host)
    await host.aclose()
    ((_, params),) = _raw(swtpm_tcti, nv_read_command(index))
    value = parse_nv_read_counter(params)
    # The attacker puts back an ordinary index holding the value the old blob was sealed at.
    _raw(swtpm_tcti, _undefine(index), _define_ordinary(index), _write(index, value - 1))
    host = await _reopen(tmp_path / "tpmhost")
    try:
        with pytest.raises(HostError, match="was replaced"), trio.fail_after(60):
            await host.tao().rollback_protected_unseal(old)
        with pytest.raises(HostError, match="was replaced"), trio.fail_after(60):
            await host.tao().get_counter("state")
        with pytest.raises(HostError, match="was replaced"), trio.fail_after(60):
            await host.tao().rollback_protected_seal("state", b"balance=1")
    finally:
        await host.aclose()


async def test_counter_deleted_with_the_state_directory_put_back(
    host: Tpm2Host, tmp_path: Path, swtpm_tcti: str
) -> None:
    """The state directory as it was before the label existed, and the label's genuine
    NV counter deleted: the program starts over, and its first-ever blob stays refused."""
    directory = tmp_path / "tpmhost"
    await host.aclose()
    shutil.copytree(directory, tmp_path / "before")
    host = await _reopen(directory)
    tao = host.tao()
    with trio.fail_after(60):
        first = await tao.rollback_protected_seal("state", b"balance=100 (first ever)")
        await tao.rollback_protected_seal("state", b"balance=0")
    index = _index(host)
    await host.aclose()
    shutil.rmtree(directory)
    shutil.copytree(tmp_path / "before", directory)
    _raw(swtpm_tcti, _undefine(index))
    host = await _reopen(directory)
    try:
        tao = host.tao()
        with pytest.raises(HostError, match="rollback detected"), trio.fail_after(60):
            await tao.rollback_protected_unseal(first)
        with trio.fail_after(60):
            fresh = await tao.rollback_protected_seal("state", b"fresh start")
            assert await tao.get_counter("state") == 1  # what `first` was sealed at
        with pytest.raises(HostError, match="rollback detected"), trio.fail_after(60):
            await tao.rollback_protected_unseal(first)
        with trio.fail_after(60):
            assert await tao.rollback_protected_unseal(fresh) == (b"fresh start", "self")
    finally:
        await host.aclose()


@pytest.mark.parametrize("shape", ["ours", "ordinary"])
async def test_squatted_index_moves_to_the_next_candidate(
    host: Tpm2Host, tmp_path: Path, swtpm_tcti: str, shape: str
) -> None:
    """Another user defines the label's (public) first candidate index first, shaped
    like this host's counters or not: the counter goes to the next candidate, recorded
    in the MAC'd map, and works after a reopen."""
    from taonet.hosts.tpm2._nvcounters import nv_define_counter_command

    first = host.counters._index(str(host.name), "state")
    await host.aclose()
    define = nv_define_counter_command if shape == "ours" else _define_ordinary
    _raw(swtpm_tcti, define(first))
    try:
        host = await _reopen(tmp_path / "tpmhost")
        try:
            with trio.fail_after(60):
                blob = await host.tao().rollback_protected_seal("state", b"x")
            chosen = _index(host)
            assert chosen == host.counters._index(str(host.name), "state", 1)
        finally:
            await host.aclose()
        host = await _reopen(tmp_path / "tpmhost")
        try:
            assert _index(host) == chosen
            with trio.fail_after(60):
                assert await host.tao().rollback_protected_unseal(blob) == (b"x", "self")
        finally:
            await host.aclose()
    finally:
        _raw(swtpm_tcti, _undefine(first))


async def test_failed_seal_leaves_the_last_good_blob_current(
    host: Tpm2Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal whose TPM Create fails (here: the HostError a TPM timeout gives, raised in
    place of the TPM call) does not move the counter: the last blob still opens."""
    tao = host.tao()
    with trio.fail_after(60):
        good = await tao.rollback_protected_seal("state", b"balance=42")

    async def failing(secret: bytes) -> tuple[bytes, bytes]:
        raise HostError("the TPM did not answer within 60 s")

    monkeypatch.setattr(host.core, "seal_object", failing)
    with pytest.raises(HostError, match="did not answer"), trio.fail_after(60):
        await tao.rollback_protected_seal("state", b"balance=43")
    monkeypatch.undo()
    with trio.fail_after(60):
        assert await tao.get_counter("state") == 1
        assert await tao.rollback_protected_unseal(good) == (b"balance=42", "self")
