"""The NV counters' salted HMAC session against a real swtpm, and the attacks it stops:
another client of a resource manager swapping the counter's NV index between the host's
NV_ReadPublic check and its NV_Read (outside review a4s14 finding 1), and a proxy at the
TPM's address answering NV_Read with an older value (a forged or a replayed answer)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from taonet import HostError
from tests.hosts.tpm2.test_counter_attacks import _define_ordinary, _undefine, _write
from tests.hosts.tpm2.test_session import _cc, _create, _rc, proxy_to
from tests.hosts.tpm2.tpm2_host_helpers import loaded_handles, make_host

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm, Tpm2Host

CC_NV_READ = 0x14E
CC_NV_READ_PUBLIC = 0x169
CC_START_AUTH_SESSION = 0x176


def _index(host: Tpm2Host) -> int:
    (entry,) = host.counters._table.values()
    return entry.index


async def test_an_index_swapped_between_the_check_and_the_read_is_refused(
    host: Tpm2Host,
) -> None:
    """a4s14 nv_race: right after the host's NV_ReadPublic, another TPM client (emulated
    on the host's own connection, as a resource manager would interleave it) deletes the
    counter, defines an ordinary index at its handle and writes the old blob's value."""
    from taonet.hosts.tpm2 import _wire
    from taonet.hosts.tpm2._nvcounters import nv_read_command, parse_nv_read_counter

    tao = host.tao()
    with trio.fail_after(60):
        old = await tao.rollback_protected_seal("c", b"OLD balance=100")
        new = await tao.rollback_protected_seal("c", b"NEW balance=0")
    index = _index(host)
    runtime = host.counters._runtime

    async def read_now() -> int:
        _, params = await runtime.call(nv_read_command(index))
        return parse_nv_read_counter(params)

    with trio.fail_after(60):
        now = await runtime.run(read_now)
    real_call = runtime.transport.call
    swapped: list[tuple[bytes, bytes]] = []

    async def call(command: bytes) -> tuple[bytes, bytes]:
        result = await real_call(command)
        if _cc(command) == CC_NV_READ_PUBLIC and not swapped:
            # --- the other client's turn ---
            for c in (_undefine(index), _define_ordinary(index), _write(index, now - 1)):
                swapped.append(await real_call(c))
        return result

    runtime.transport.call = call  # type: ignore[method-assign]
    try:
        with pytest.raises(HostError, match="was replaced") as caught, trio.fail_after(60):
            await tao.rollback_protected_unseal(old)
    finally:
        runtime.transport.call = real_call  # type: ignore[method-assign]
    assert len(swapped) == 3  # the swap did happen between the two commands
    # The TPM refused the NV_Read itself: its HMAC covers the counter's Name.
    assert caught.value.rc is not None
    assert _wire.rc_base(caught.value.rc) == _wire.RC_BAD_AUTH
    with pytest.raises(HostError, match="was replaced"), trio.fail_after(60):
        await tao.rollback_protected_unseal(new)


@pytest.mark.parametrize("attack", ["older_value", "replay"])
async def test_an_older_nv_read_answer_from_a_proxy_is_refused(
    tmp_path: Path, fresh_swtpm: Swtpm, attack: str
) -> None:
    """A proxy answers the host's NV_Read with the value the old blob was sealed at:
    the real answer with its 8-byte value decremented, or the TPM's own earlier answer.
    Without the response HMAC the old (rolled back) blob would be accepted."""
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(120):
        await _create(tmp_path / "host", fresh_swtpm.tcti)
        async with proxy_to(fresh_swtpm) as proxy:
            host = await Tpm2Host.open(tmp_path / "host", tcti=f"swtpm:port={proxy.port}")
            try:
                tao = host.tao()
                old = await tao.rollback_protected_seal("c", b"OLD balance=100")
                earlier = proxy.answers(CC_NV_READ)[-1]  # the value old was sealed at
                new = await tao.rollback_protected_seal("c", b"NEW balance=0")
                # The NV_Read answer: header, parameterSize, TPM2B (2 + 8 bytes), session.
                assert struct.unpack_from(">IH", earlier, 10) == (10, 8)

                def rewrite(command: bytes, response: bytes) -> bytes:
                    if _cc(command) != CC_NV_READ or _rc(response) != 0:
                        return response
                    if attack == "replay":
                        return earlier
                    value = int.from_bytes(response[16:24], "big") - 1
                    return response[:16] + value.to_bytes(8, "big") + response[24:]

                proxy.rewrite = rewrite
                with pytest.raises(HostError, match="session HMAC"):
                    await tao.rollback_protected_unseal(old)
                proxy.rewrite = None
                # Once the proxy stops, the host works again in new sessions.
                sessions = len(proxy.sent(CC_START_AUTH_SESSION))
                with pytest.raises(HostError, match="rollback detected"):
                    await tao.rollback_protected_unseal(old)
                assert await tao.rollback_protected_unseal(new) == (b"NEW balance=0", "self")
                assert len(proxy.sent(CC_START_AUTH_SESSION)) == sessions + 2
            finally:
                await host.aclose()
        # The host's NV_Reads went out in its HMAC session, not with the password.
        for command in proxy.sent(CC_NV_READ):
            assert struct.unpack_from(">I", command, 22)[0] != 0x40000009


async def test_counters_work_across_reopen_and_leave_no_session(
    tmp_path: Path, swtpm_tcti: str
) -> None:
    """The HMAC session is rebuilt with the host and flushed when it closes."""
    from taonet.hosts.tpm2 import Tpm2Host

    host = await make_host(tmp_path / "host", swtpm_tcti)
    try:
        with trio.fail_after(60):
            blob = await host.tao().rollback_protected_seal("c", b"v1")
            assert await host.tao().get_counter("c") == 1
    finally:
        with trio.fail_after(60):
            await host.aclose()
    assert loaded_handles(swtpm_tcti) == []
    with trio.fail_after(60):
        host = await Tpm2Host.open(tmp_path / "host")
    try:
        with trio.fail_after(60):
            tao = host.tao()
            assert await tao.rollback_protected_unseal(blob) == (b"v1", "self")
            newer = await tao.rollback_protected_seal("c", b"v2")
            assert await tao.get_counter("c") == 2
            with pytest.raises(HostError, match="rollback detected"):
                await tao.rollback_protected_unseal(blob)
            assert await tao.rollback_protected_unseal(newer) == (b"v2", "self")
    finally:
        with trio.fail_after(60):
            await host.aclose()
    assert loaded_handles(swtpm_tcti) == []
