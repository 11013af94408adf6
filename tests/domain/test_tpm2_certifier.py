"""The domain service's core on tpm2-rooted chains: the host's state decides.

A chain made as a Linux host on a TPM makes it: the TPM quotes
``tpm2([q]).PCRs(...) says key(host key) speaksfor tpm2([q]).PCRs(...)`` (the quote key
certified by the policy key), and the host key attests for its program. The attacks:
a host in another state (correctly signed quote, one PCR other than trusted); a quote
correctly signed over other PCR values than its speaker names; a chain whose quote
key has no certificate from the domain.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from taonet import AuthenticationError, AuthorizationError, auth
from taonet.attestation.tpm2 import host_name, pcrs_ext
from taonet.crypto import Keyset, Signer
from taonet.domain import ACLGuard, Domain, ProgramCertifier, host_state_rule
from taonet.hosts import SoftHost
from tests.conftest import PASSWORD, MakeDomain
from tests.domain.tpm2_quotes import QuoteKey

PROGRAM_HASH = b"\x42" * 32
TRUSTED = {n: hashlib.sha256(b"measured %d" % n).digest() for n in (0, 1, 2, 3, 4, 7)}


@pytest.fixture
def domain(make_domain: MakeDomain) -> Domain:
    domain = make_domain(name="tpm2-certifier")
    signer = domain.unlock(PASSWORD)
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    guard = guard.with_rule(domain.program_rule(PROGRAM_HASH))
    guard = guard.with_rule(host_state_rule(str(pcrs_ext(TRUSTED))))
    domain.save_guard(guard, signer)
    return domain


async def request(
    domain: Domain,
    pcrs: dict[int, bytes],
    *,
    quoted: dict[int, bytes] | None = None,
    certified: bool = True,
    cert_signer_type: str = "tpm2",
    quote_key: QuoteKey | None = None,
) -> tuple[bytes, bytes]:
    """A program's certification request through a host on a TPM in state ``pcrs``
    (quoted by ``quote_key``, else a new one), its quote key certified by the domain."""
    now = time.time_ns()
    quote_key = QuoteKey() if quote_key is None else quote_key
    name = host_name(quote_key.der, pcrs)
    keyset = Keyset.generate()
    cert = domain.certify_host(domain.unlock(PASSWORD), quote_key.der, signer_type=cert_signer_type)
    delegation = quote_key.attest(
        name,
        auth.Speaksfor(auth.key_principal(keyset.signer.public_key_der()), name),
        now_ns=now,
        quoted_pcrs=pcrs if quoted is None else quoted,
        root_endorsement=cert if certified else None,
    )
    host = SoftHost(keyset, name=name, delegation=delegation)
    program = domain.program_name(PROGRAM_HASH, host=name)
    assert isinstance(program, auth.Prin)
    key = Signer.generate()
    att = await host.tao_for(program).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), program)
    )
    return att.to_bytes(), key.public_key_der()


async def test_a_host_in_a_trusted_state_gets_a_certificate(domain: Domain) -> None:
    certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
    att, key = await request(domain, TRUSTED)
    issued = certifier.certify(att, key)
    assert issued.principal.type == "tpm2"
    assert issued.principal.ext.exts[0] == pcrs_ext(TRUSTED)
    assert issued.principal.ext.exts[1].name == "Program"


@pytest.mark.parametrize("pcr", [0, 4, 7])
async def test_a_host_in_another_state_is_refused_naming_the_pcr(domain: Domain, pcr: int) -> None:
    certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
    booted = {**TRUSTED, pcr: hashlib.sha256(b"a rootkit").digest()}
    att, key = await request(domain, booted)  # a correct quote of the state it is in
    with pytest.raises(AuthorizationError) as info:
        certifier.certify(att, key)
    message = str(info.value)
    assert f"PCR {pcr} is {booted[pcr].hex()[:16]}" in message
    assert f"trusted {TRUSTED[pcr].hex()[:16]}" in message
    assert message.count("PCR ") == 1


async def test_a_quote_over_other_pcrs_than_the_name_is_refused(domain: Domain) -> None:
    certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
    booted = {**TRUSTED, 4: hashlib.sha256(b"a rootkit").digest()}
    # The name claims the trusted state; the quote, correctly signed, says otherwise.
    att, key = await request(domain, TRUSTED, quoted=booted)
    with pytest.raises(AuthenticationError, match="PCR digest"):
        certifier.certify(att, key)


async def test_a_quote_key_without_the_domains_certificate_is_refused(domain: Domain) -> None:
    certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
    att, key = await request(domain, TRUSTED, certified=False)
    with pytest.raises(AuthenticationError):
        certifier.certify(att, key)


async def test_retracting_the_state_refuses_the_host(domain: Domain) -> None:
    signer = domain.unlock(PASSWORD)
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    domain.save_guard(guard.without_rule(host_state_rule(str(pcrs_ext(TRUSTED)))), signer)
    reloaded = Domain.load(domain.path)
    att, key = await request(reloaded, TRUSTED)
    with pytest.raises(AuthorizationError, match="trusts no TPM host state"):
        ProgramCertifier(reloaded, signer).certify(att, key)


async def test_a_quote_key_certified_as_a_soft_key_is_refused(domain: Domain) -> None:
    """The policy key certified this key, but as a soft host's ("key"), not as a TPM's
    quote key: the certificate does not vouch that the key is a restricted TPM key."""
    certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
    att, key = await request(domain, TRUSTED, cert_signer_type="key")
    with pytest.raises(AuthenticationError):
        certifier.certify(att, key)


async def test_another_quote_key_is_refused_under_a_pinned_state(domain: Domain) -> None:
    """The rogue-quote-key attack: a second user of the operator's TPM makes a quote
    key, has it certified (the quote service vouches for the TPM, not for who uses it)
    and signs for tpm2([its key]).PCRs(trusted).Program([h]) with no host measuring
    anything. Under the pinned rule --add-host writes for the operator's host name,
    only the operator's quote key gets a program certificate."""
    signer = domain.unlock(PASSWORD)
    operator = QuoteKey()
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    guard = guard.without_rule(host_state_rule(str(pcrs_ext(TRUSTED))))
    guard = guard.with_rule(host_state_rule(str(host_name(operator.der, TRUSTED))))
    domain.save_guard(guard, signer)
    pinned = Domain.load(domain.path)
    certifier = ProgramCertifier(pinned, signer)
    att, key = await request(pinned, TRUSTED, quote_key=operator)
    assert (
        certifier.certify(att, key).principal.key_hash
        == host_name(operator.der, {0: b"\0" * 32}).key_hash
    )
    att, key = await request(pinned, TRUSTED)  # the rogue user's own certified key
    with pytest.raises(AuthorizationError, match="no TPM host state on this TPM"):
        certifier.certify(att, key)
