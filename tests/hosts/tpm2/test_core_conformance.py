"""The Tao conformance suite (taonet.testing.check_tao) against the TPM host on swtpm."""

from __future__ import annotations

from pathlib import Path

import trio

from taonet.attestation import UNROOTED
from tests.hosts.tpm2.tpm2_host_helpers import opened_host
from tests.tao_doubles import check_programs, factory


async def test_tpm2_host_passes_check_tao(tmp_path: Path, swtpm_tcti: str) -> None:
    async with opened_host(tmp_path / "tpmhost", swtpm_tcti) as host:
        with trio.fail_after(600):
            await check_programs(
                lambda name: factory(lambda: host.tao(name)), host.name, policy_cert=UNROOTED
            )
