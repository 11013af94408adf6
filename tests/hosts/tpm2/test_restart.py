"""swtpm restarted under a running TPM host: a clear error, then recovery (or a refusal
when the PCRs no longer match the host's name)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
import trio

from taonet import HostError, auth
from taonet.attestation import UNROOTED, validate
from tests.hosts.tpm2.tpm2_host_helpers import (
    extend,
    loaded_handles,
    make_host,
    opened_host,
    reset,
)

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

HELLO = auth.Pred("Hello", ())


async def test_swtpm_restarted_under_a_running_host(tmp_path: Path, fresh_swtpm: Swtpm) -> None:
    async with opened_host(tmp_path / "tpmhost", fresh_swtpm.tcti) as host:
        tao = host.tao()
        sealed = await tao.seal(b"survives a reset")
        blob = await tao.rollback_protected_seal("state", b"v1")
        name = host.name
        with trio.fail_after(60):
            await trio.to_thread.run_sync(fresh_swtpm.restart)
        # The call that meets the reset fails, saying so ...
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(HostError, match="TPM was reset"),
        ):
            await tao.attest(HELLO)
        assert [e for e in logs if e["event"] == "tpm_reset" and e["log_level"] == "error"]
        # ... and the next rebuilds: same primary (deterministic), same PCRs, same name.
        att = await tao.attest(HELLO)
        assert validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED).speaker == name
        assert await tao.unseal(sealed) == (b"survives a reset", "self")
        assert await tao.rollback_protected_unseal(blob) == (b"v1", "self")  # NV survives
        assert await host.run_blocking(loaded_handles, fresh_swtpm.tcti) == []


async def test_reset_with_other_pcrs_refuses_service(tmp_path: Path, fresh_swtpm: Swtpm) -> None:
    async with opened_host(tmp_path / "tpmhost", fresh_swtpm.tcti) as host:
        tao = host.tao()
        sealed = await tao.seal(b"x")
        with trio.fail_after(60):
            await trio.to_thread.run_sync(fresh_swtpm.restart)
        with pytest.raises(HostError, match="TPM was reset"):
            await tao.unseal(sealed)
        # The machine "booted" into another state before the host reconnected.
        await host.run_blocking(extend, fresh_swtpm.tcti, 16)
        for _ in range(2):  # refused every time, never quietly renamed
            with pytest.raises(HostError, match="PCR 16 differ from the host's name"):
                await tao.attest(HELLO)
        assert host.name.type == "tpm2"
        await host.run_blocking(reset, fresh_swtpm.tcti, 16)
        assert await tao.unseal(sealed) == (b"x", "self")


async def test_tpm_gone_is_a_clear_error(tmp_path: Path, fresh_swtpm: Swtpm) -> None:
    async with opened_host(tmp_path / "tpmhost", fresh_swtpm.tcti) as host:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(fresh_swtpm.stop)
        with pytest.raises(HostError, match=r"cannot be reached|lost the connection"):
            await host.tao().seal(b"x")
        with pytest.raises(HostError, match="cannot connect"):
            await host.tao().seal(b"x")
        with trio.fail_after(60):
            await trio.to_thread.run_sync(fresh_swtpm.start)
        assert (await host.tao().unseal(await host.tao().seal(b"y")))[0] == b"y"


def _clear(tcti: str) -> None:
    """TPM2_Clear: a new owner seed, as if the state directory came from another TPM."""
    from tpm2_pytss.constants import ESYS_TR

    from taonet.hosts.tpm2._setup import _esapi

    with _esapi(tcti) as ectx:
        ectx.clear(ESYS_TR.RH_LOCKOUT)


async def test_state_directory_of_another_tpm(tmp_path: Path, fresh_swtpm: Swtpm) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    host = await make_host(tmp_path / "tpmhost", fresh_swtpm.tcti)
    await host.aclose()
    with trio.fail_after(60):
        await trio.to_thread.run_sync(_clear, fresh_swtpm.tcti)
    with pytest.raises(HostError, match="belongs to another TPM") as info, trio.fail_after(60):
        await Tpm2Host.open(tmp_path / "tpmhost")
    assert info.value.rc is not None
