"""A Linux host on a TPM root renews the TPM's delegation; a host whose PCRs changed
stops being believed when the last delegation the TPM gave it expires.

The stale_state attack: the TPM's delegation ``key(host key) speaksfor
tpm2([q]).PCRs(S)`` was valid a year, so a host whose PCR 16 was extended after it
started (runtime measurement) kept getting program certificates as state S. Now the
delegation is valid for a short time (here 60 s of a clock the test moves), the host has
the TPM quote it again, and the TPM refuses once the PCRs differ from the name.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from taonet import AuthenticationError, HostError, auth
from taonet.crypto import Signer
from taonet.domain import Domain, ProgramCertifier, host_state_rule
from taonet.hosts import SoftHost
from taonet.hosts.linux import LinuxHost, LinuxHostConfig
from taonet.hosts.linux._tpm2_root import keep_tpm2_delegation_fresh, open_tpm2_state
from tests.conftest import PASSWORD, MakeDomain

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

PROGRAM_HASH = b"\x42" * 32
VALIDITY = 60 * 10**9
CONFIG = LinuxHostConfig(kind="root", root_tao="tpm2", guard="Liberal", grace_period=1.0)


async def _on_the_hosts_tpm(host: LinuxHost, command: bytes) -> None:
    """Send ``command`` over the host's own TPM connection (swtpm serves one at a time)."""
    transport = host._tpm._runtime.transport
    async with transport.lock:
        await transport.call(command)


async def test_a_host_whose_pcrs_changed_stops_being_believed(
    fresh_swtpm: Swtpm, tmp_path: Path, make_domain: MakeDomain
) -> None:
    from taonet.hosts.tpm2 import _wire

    now = [time.time_ns()]

    def clock() -> int:
        return now[0]

    domain = make_domain(name="stale-state")
    signer = domain.unlock(PASSWORD)
    directory = tmp_path / "host"
    key = Signer.generate()
    with trio.fail_after(120):
        name = await LinuxHost.init_tpm2(
            directory,
            attrs.evolve(CONFIG, guard="domain", domain=str(domain.path)),
            tcti=fresh_swtpm.tcti,
            pcrs=(7, 16),
        )
        async with await open_tpm2_state(directory) as tpm:
            cert = domain.certify_host(signer, tpm.quote_key_der, signer_type="tpm2")
            await tpm.set_root_endorsement(cert)
        guard = domain.guard.with_rule(host_state_rule(str(name)))  # type: ignore[attr-defined]
        domain.save_guard(guard.with_rule(domain.program_rule(PROGRAM_HASH)), signer)
        certifier = ProgramCertifier(Domain.load(domain.path), signer, clock=clock)
        host = await LinuxHost.open(directory, clock=clock, tpm2_delegation_validity_ns=VALIDITY)
        try:
            core = host._core
            assert isinstance(core, SoftHost)
            program = host.name.extend(auth.PrinExt("Program", (auth.Bytes(PROGRAM_HASH),)))

            async def request() -> bytes:
                message = auth.Speaksfor(auth.key_principal(key.public_key_der()), program)
                return (await core.tao_for(program).attest(message)).to_bytes()

            first = await request()
            issued = certifier.certify(first, key.public_key_der())
            assert issued.not_after <= now[0] + VALIDITY  # never past the delegation

            # Half-way, the host renews: the TPM quotes the same delegation again.
            now[0] += VALIDITY // 2
            assert await host.refresh_tpm2_delegation()
            second = await request()
            now[0] += VALIDITY // 2 + 1
            with pytest.raises(AuthenticationError, match="expired"):
                certifier.certify(first, key.public_key_der())
            certifier.certify(second, key.public_key_der())

            # The attack: a PCR in the name changes while the host runs.
            extend = _wire.pcr_extend_command(16, hashlib.sha256(b"runtime").digest())
            await _on_the_hosts_tpm(host, extend)
            try:
                assert not await host.refresh_tpm2_delegation()  # the TPM refuses; logged
                stale = await request()  # signed with the last good delegation
                certifier.certify(stale, key.public_key_der())  # until it expires...
                now[0] += VALIDITY // 2
                with pytest.raises(AuthenticationError, match="expired"):
                    certifier.certify(stale, key.public_key_der())
                with pytest.raises(AuthenticationError, match="expired"):
                    certifier.certify(await request(), key.public_key_der())
            finally:
                await _on_the_hosts_tpm(host, _wire.pcr_reset_command(16))
        finally:
            await host.aclose()


async def test_the_running_host_refreshes_every_half_validity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The refresh loop (no TPM: the refresh is a stand-in; the clock jumps)."""
    calls: list[float] = []
    answers = iter([True, False, False, True])
    start = trio.current_time()

    async def refresh() -> bool:
        calls.append(trio.current_time() - start)
        return next(answers, True)

    with trio.move_on_after(101):
        await keep_tpm2_delegation_fresh(refresh, 60 * 10**9)
    # Every 30 s; after a failure every 5 s until one succeeds.
    assert calls == [30, 60, 65, 70, 100]


async def test_a_delegation_of_another_statement_is_refused(make_host) -> None:  # type: ignore[no-untyped-def]
    soft: SoftHost = make_host()
    other = auth.Speaksfor(auth.key_principal(Signer.generate().public_key_der()), soft.name)
    with pytest.raises(HostError, match="replacing one that did"):
        soft.replace_delegation(await soft.tao_for(soft.name).attest(other))
