"""The TPM 2.0 key core against a real swtpm: name, attest, seal, unseal, secrets."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from taonet import AuthenticationError, ConfigError, HostError, auth, certs
from taonet.attestation import UNROOTED, Attestation, validate
from taonet.crypto import Signer
from tests.hosts.tpm2.tpm2_host_helpers import TEST_PCRS, extend, loaded_handles, make_host, reset

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Tpm2Host

HELLO = auth.Pred("Hello", (auth.Str("world"),))


def _program(host: Tpm2Host, name: str = "prog") -> auth.Prin:
    return host.name.extend(auth.SubPrin((auth.PrinExt("Program", (auth.Str(name),)),)))


async def test_name_is_quote_key_and_pcrs(host: Tpm2Host, tmp_path: Path, swtpm_tcti: str) -> None:
    from taonet.attestation.tpm2 import host_name, host_pcrs
    from taonet.hosts.tpm2 import Tpm2Host

    assert host.name.type == "tpm2"
    assert host.name == host_name(host.quote_key_der, host.pcrs)
    assert sorted(host.pcrs) == list(TEST_PCRS)
    assert host_pcrs(host.name) == host.pcrs
    name = host.name
    with trio.fail_after(60):
        await host.aclose()
        again = await Tpm2Host.open(tmp_path / "tpmhost")
        try:
            assert again.name == name  # same key, same PCRs: same name after a restart
            assert await again.tao().get_tao_name() == name
        finally:
            await again.aclose()
        # the fixture's aclose of the first host is a no-op now


async def test_create_refuses_existing_and_bad_arguments(tmp_path: Path, swtpm_tcti: str) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    with pytest.raises(ConfigError, match="ecc"):
        Tpm2Host.create(tmp_path / "a", tcti=swtpm_tcti, alg="dsa")
    with pytest.raises(ConfigError, match="PCR"):
        Tpm2Host.create(tmp_path / "b", tcti=swtpm_tcti, pcrs=(0, 24))
    with pytest.raises(ConfigError, match="TCTI"):
        Tpm2Host.create(tmp_path / "c", tcti="mssim:port=1")
    with trio.fail_after(60):
        await trio.to_thread.run_sync(
            lambda: Tpm2Host.create(tmp_path / "d", tcti=swtpm_tcti, pcrs=(16,))
        )
    with pytest.raises(ConfigError, match="already holds"):
        Tpm2Host.create(tmp_path / "d", tcti=swtpm_tcti)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    for f in (tmp_path / "d").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f


async def test_attest_validates_unrooted(host: Tpm2Host) -> None:
    att = await host.tao().attest(HELLO)
    now = time.time_ns()
    assert att.signer_type == "tpm2"
    assert att.tpm2_quote_structure is not None
    proven = validate(att, now_ns=now, policy_cert=UNROOTED)
    assert proven.speaker == host.name
    assert proven.message == HELLO
    # a program's attestation names the program; the quote's extraData is its statement's hash
    program = _program(host)
    att = await host.tao(program).attest(HELLO)
    assert validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED).speaker == program
    from taonet.attestation.tpm2 import parse_quote

    assert (
        parse_quote(att.tpm2_quote_structure or b"").extra_data
        == hashlib.sha256(att.serialized_statement).digest()
    )


async def test_attest_refuses_foreign_issuer(host: Tpm2Host) -> None:
    program = _program(host)
    with pytest.raises(HostError, match=r"not .* or one of its sub-principals"):
        await host.tao(program).attest(HELLO, issuer=_program(host, "other"))
    other = auth.key_principal(Signer.generate().public_key_der())
    with pytest.raises(HostError, match="is not this host"):
        host.tao(other)


async def test_quote_for_another_statement_fails_validation(host: Tpm2Host) -> None:
    # The attacker keeps a genuine quote and signature but swaps the statement: the
    # quote's extraData (SHA-256 of the statement) no longer matches.
    att = await host.tao().attest(HELLO)
    other = await host.tao().attest(auth.Pred("Goodbye", ()))
    forged = Attestation(
        serialized_statement=other.serialized_statement,
        signer_type=att.signer_type,
        signer_key=att.signer_key,
        signature=att.signature,
        tpm2_quote_structure=att.tpm2_quote_structure,
    )
    with pytest.raises(AuthenticationError):
        validate(forged, now_ns=time.time_ns(), policy_cert=UNROOTED)


async def test_quote_key_cannot_claim_other_pcrs(host: Tpm2Host) -> None:
    # Someone with the TPM (and so the quote key) signs a statement whose speaker claims
    # a trusted boot state it is not in: the quote's PCR digest gives it away.
    from taonet.attestation.tpm2 import host_name, tpm2_attestation
    from taonet.hosts.tpm2 import _wire

    claimed = dict(host.pcrs)
    claimed[16] = b"\x11" * 32
    now = time.time_ns()
    says = auth.Says(
        speaker=host_name(host.quote_key_der, claimed),
        message=HELLO,
        time=now,
        expiration=now + 10**12,
    )
    statement = auth.encode(says)
    runtime = host.core.runtime

    async def quote() -> bytes:
        handle = await runtime.load_quote_key()
        try:
            qualifying = hashlib.sha256(statement).digest()
            _, params = await runtime.call(
                _wire.quote_command(handle, qualifying, runtime.selection)
            )
        finally:
            await runtime.flush(handle)
        return params

    attest, signature = _wire.parse_quote(await runtime.run(quote))
    forged = tpm2_attestation(statement, host.quote_key_der, attest, signature)
    with pytest.raises(AuthenticationError, match="PCR"):
        validate(forged, now_ns=time.time_ns(), policy_cert=UNROOTED)


async def test_attest_rooted_in_a_quote_key_certificate(host: Tpm2Host) -> None:
    now = time.time_ns()
    policy = Signer.generate()
    policy_cert = certs.make_policy_certificate(policy, common_name="test domain", now_ns=now)
    cert = certs.issue_host_certificate(
        policy, policy_cert, host.quote_key_der, now_ns=now, signer_type="tpm2"
    )
    other = Signer.generate().public_key_der()
    wrong = certs.issue_host_certificate(policy, policy_cert, other, now_ns=now)
    with pytest.raises(ConfigError, match="another key"):
        await host.set_root_endorsement(wrong)
    await host.set_root_endorsement(cert)
    assert host.root_endorsement == cert
    att = await host.tao().attest(HELLO)
    now = time.time_ns()
    proven = validate(att, now_ns=now, policy_cert=policy_cert)
    assert proven.speaker == host.name
    assert proven.root_endorsement == cert
    # another domain's policy key does not root it
    stranger = Signer.generate()
    stranger_cert = certs.make_policy_certificate(stranger, common_name="other", now_ns=now)
    with pytest.raises(AuthenticationError):
        validate(att, now_ns=now, policy_cert=stranger_cert)


@pytest.mark.parametrize("policy", ["self", "few", "any"])
async def test_seal_unseal_policies(host: Tpm2Host, policy: str) -> None:
    program = _program(host)
    tao = host.tao(program)
    sealed = await tao.seal(b"secret state", policy)
    assert sealed.startswith(b"T2S1")
    assert b"secret state" not in sealed
    assert await tao.unseal(sealed) == (b"secret state", policy)
    assert await tao.unseal(await tao.seal(b"", policy)) == (b"", policy)
    other = host.tao(_program(host, "other"))
    if policy == "any":
        assert await other.unseal(sealed) == (b"secret state", "any")
    else:
        with pytest.raises(HostError, match="bound to another principal"):
            await other.unseal(sealed)


async def test_unseal_refuses_tampering(host: Tpm2Host) -> None:
    tao = host.tao()
    sealed = await tao.seal(b"secret state")
    # a flipped byte in the AEAD part, in the sealed object, or in the policy name
    for pos in (len(sealed) - 1, len(sealed) - 20, 60, 100):
        bad = bytearray(sealed)
        bad[pos] ^= 1
        with pytest.raises(HostError):
            await tao.unseal(bytes(bad))
    with pytest.raises(HostError, match="magic"):
        await tao.unseal(b"TSL1" + sealed[4:])  # the soft host's format is not ours
    with pytest.raises(HostError, match="truncated"):
        await tao.unseal(sealed[:50])
    # A well-formed blob whose AEAD key object is another blob's: the AEAD check fails.
    other = await tao.seal(b"other data")
    swapped = (
        sealed[: len(sealed) - len(b"secret state") - 28]
        + other[len(other) - len(b"other data") - 28 :]
    )
    with pytest.raises(HostError):
        await tao.unseal(swapped)


async def test_unseal_refuses_another_hosts_blob(
    host: Tpm2Host, tmp_path: Path, swtpm_tcti: str
) -> None:
    sealed = await host.tao().seal(b"mine", "any")
    name = host.name
    await host.aclose()
    # Another host on the same TPM, same PCRs: another quote key, so another name.
    with trio.fail_after(60):
        other = await make_host(tmp_path / "other", swtpm_tcti)
        try:
            assert other.name != name
            with pytest.raises(HostError, match="bound to another principal"):
                await other.tao().unseal(sealed)
        finally:
            await other.aclose()


async def _raw(host: Tpm2Host, command: bytes) -> None:
    """Send one command on the host's own connection (swtpm serves one at a time)."""
    runtime = host.core.runtime
    await runtime.run(lambda: runtime.call(command))


async def test_pcr_extended_after_sealing_refuses_unseal(host: Tpm2Host) -> None:
    from taonet.hosts.tpm2 import _wire

    tao = host.tao()
    sealed = await tao.seal(b"boot-bound")
    try:
        # Another measurement lands while the host runs: the TPM itself refuses the
        # policy (the host only explains which PCR moved).
        await _raw(host, _wire.pcr_extend_command(16, hashlib.sha256(b"evil").digest()))
        with pytest.raises(HostError, match=r"PCRs changed .*PCR 16") as info:
            await tao.unseal(sealed)
        assert info.value.rc is not None
        assert info.value.rc & 0xBF == _wire.RC_POLICY_FAIL
        with pytest.raises(HostError, match="PCR 16"):
            await tao.attest(HELLO)
        # sealing still binds to the name's values, so it too opens only once restored
        later = await tao.seal(b"sealed while PCR 16 was off")
        with pytest.raises(HostError, match="PCR 16"):
            await tao.unseal(later)
    finally:
        await _raw(host, _wire.pcr_reset_command(16))
    assert await tao.unseal(sealed) == (b"boot-bound", "self")
    assert await tao.unseal(later) == (b"sealed while PCR 16 was off", "self")
    validate(await tao.attest(HELLO), now_ns=time.time_ns(), policy_cert=UNROOTED)


async def test_pcrs_changed_between_starts(host: Tpm2Host, tmp_path: Path, swtpm_tcti: str) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    tao = host.tao()
    sealed = await tao.seal(b"boot-bound")
    try:
        # Measured by someone else while the host's connection was closed: the host
        # finds the PCRs changed when it reconnects and refuses to serve under its name.
        await host.run_blocking(extend, swtpm_tcti, 23)
        with pytest.raises(HostError, match=r"PCR 23 differ"):
            await tao.unseal(sealed)
        with pytest.raises(HostError, match=r"PCR 23 differ"):
            await tao.attest(HELLO)
        await host.aclose()
        with pytest.raises(HostError, match="deriving key"), trio.fail_after(60):
            await Tpm2Host.open(tmp_path / "tpmhost")
    finally:
        await trio.to_thread.run_sync(reset, swtpm_tcti, 23)
    with trio.fail_after(60):
        again = await Tpm2Host.open(tmp_path / "tpmhost")
    try:
        assert await again.tao().unseal(sealed) == (b"boot-bound", "self")
    finally:
        await again.aclose()


async def test_shared_secrets(host: Tpm2Host, tmp_path: Path) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    a, b = host.tao(_program(host, "a")), host.tao(_program(host, "b"))
    sa = await a.get_shared_secret(32)
    assert len(sa) == 32
    assert sa != await b.get_shared_secret(32)
    assert await a.get_shared_secret(32, "any") == await b.get_shared_secret(32, "any")
    assert await a.get_shared_secret(0) == b""
    with pytest.raises(HostError):
        await a.get_shared_secret(-1)
    prog = _program(host, "a")
    await host.aclose()
    with trio.fail_after(60):
        again = await Tpm2Host.open(tmp_path / "tpmhost")
    try:
        assert await again.tao(prog).get_shared_secret(32) == sa  # stable across restarts
    finally:
        await again.aclose()


async def test_no_slots_leak_over_many_mixed_calls(host: Tpm2Host, swtpm_tcti: str) -> None:
    tao = host.tao()
    sealed = await tao.seal(b"x")
    bad = bytearray(sealed)
    bad[70] ^= 1  # inside the sealed object: TPM2_Load refuses it
    for i in range(60):
        await tao.attest(HELLO)
        assert (await tao.unseal(await tao.seal(b"%d" % i)))[0] == b"%d" % i
        with pytest.raises(HostError):
            await tao.unseal(bytes(bad))
        if i % 20 == 0:
            await tao.rollback_protected_seal("slots", b"y")
    # run_blocking flushes the kept primary and session: nothing else may remain
    assert await host.run_blocking(loaded_handles, swtpm_tcti) == []
    assert (await tao.unseal(sealed))[0] == b"x"  # and the host rebuilds after


async def test_many_tasks_at_once(host: Tpm2Host) -> None:
    tao = host.tao()
    results: list[bytes] = []

    async def worker(i: int) -> None:
        att = await tao.attest(auth.Pred("N", (auth.Int(i),)))
        validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED)
        data = b"task %d" % i
        got, _ = await tao.unseal(await tao.seal(data))
        results.append(got)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(worker, i)
    assert sorted(results) == sorted(b"task %d" % i for i in range(40))


async def test_cancelled_call_leaves_the_host_usable(host: Tpm2Host, swtpm_tcti: str) -> None:
    tao = host.tao()
    sealed = await tao.seal(b"z")
    for _ in range(20):
        with trio.move_on_after(0):
            await tao.unseal(sealed)
        with trio.CancelScope() as scope:
            scope.cancel()
            await tao.attest(HELLO)
    assert await tao.unseal(sealed) == (b"z", "self")
    assert await host.run_blocking(loaded_handles, swtpm_tcti) == []


async def test_closed_host_refuses(host: Tpm2Host) -> None:
    await host.aclose()
    with pytest.raises(HostError, match="closed"):
        await host.tao().seal(b"x")


async def test_rsa_quote_key(tmp_path: Path, swtpm_tcti: str) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(120):
        await trio.to_thread.run_sync(
            lambda: Tpm2Host.create(tmp_path / "rsa", tcti=swtpm_tcti, pcrs=TEST_PCRS, alg="rsa")
        )
        host = await Tpm2Host.open(tmp_path / "rsa")
    try:
        att = await host.tao().attest(HELLO)
        assert validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED).speaker == host.name
        assert (await host.tao().unseal(await host.tao().seal(b"r")))[0] == b"r"
    finally:
        await host.aclose()


async def test_aclose_while_calls_wait(host: Tpm2Host, swtpm_tcti: str) -> None:
    tao = host.tao()
    outcomes: list[str] = []
    started = trio.Event()

    async def worker() -> None:
        started.set()
        try:
            await tao.unseal(await tao.seal(b"w"))
            outcomes.append("done")
        except HostError as exc:
            outcomes.append("closed" if "closed" in str(exc) else str(exc))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(worker)
            await started.wait()
            nursery.start_soon(host.aclose)
    assert len(outcomes) == 10
    assert set(outcomes) <= {"done", "closed"}
    assert "closed" in outcomes
    # closed for good: nothing reconnected, nothing left loaded on the TPM
    assert await trio.to_thread.run_sync(loaded_handles, swtpm_tcti) == []
