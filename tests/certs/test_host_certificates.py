"""Host certificates (root endorsements) and attestations rooted in the policy key."""

from __future__ import annotations

import time

import attrs
import pytest
from cryptography import x509

from taonet import AuthenticationError, auth, certs
from taonet.attestation import UNROOTED, attest, validate
from taonet.crypto import Signer
from tests.conftest import PASSWORD

DAY = 24 * 3600 * 10**9
MESSAGE = auth.Pred("Hello", ())


def test_host_certificate_profile(make_domain, make_host, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    host = make_host(domain)
    cert = x509.load_der_x509_certificate(host.root_endorsement)
    assert cert.serial_number != 0
    assert cert.issuer == x509.load_der_x509_certificate(domain.policy_cert).subject
    assert certs.certificate_principal(cert) == host.name
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    verified = certs.verify_host_certificate(
        host.root_endorsement,
        domain.policy_cert,
        host_key_der=host.public_key_der(),
        now_ns=now_ns,
    )
    assert verified.serial_number == cert.serial_number


def test_serials_are_unique(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    signer = domain.unlock(PASSWORD)
    key = Signer.generate().public_key_der()
    serials = {
        x509.load_der_x509_certificate(domain.certify_host(signer, key)).serial_number
        for _ in range(20)
    }
    assert len(serials) == 20


def test_policy_certificate_is_a_self_signed_ca(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    cert = certs.verify_policy_certificate(domain.policy_cert, now_ns=now_ns)
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.certificate_principal(cert) == domain.policy_principal


async def test_attestation_from_a_certified_host_chains_to_the_policy_key(  # type: ignore[no-untyped-def]
    make_domain, make_host, now_ns
) -> None:
    domain = make_domain()
    host = make_host(domain)
    att = await host.tao_for().attest(MESSAGE)
    proven = validate(att.to_bytes(), now_ns=time.time_ns(), policy_cert=domain.policy_cert)
    assert proven.speaker == host.name
    assert proven.root_endorsement == host.root_endorsement


async def test_uncertified_host_is_refused(make_domain, make_host, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    att = await make_host().tao_for().attest(MESSAGE)
    validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED)  # valid on its own...
    with pytest.raises(AuthenticationError, match="no root endorsement"):
        validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)  # ...but not rooted


async def test_host_certified_by_another_domain_is_refused(  # type: ignore[no-untyped-def]
    make_domain, make_host, now_ns
) -> None:
    ours, theirs = make_domain(), make_domain()
    att = await make_host(theirs).tao_for().attest(MESSAGE)
    with pytest.raises(AuthenticationError, match="not signed by this domain's policy key"):
        validate(att, now_ns=time.time_ns(), policy_cert=ours.policy_cert)


async def test_endorsement_of_another_host_is_refused(  # type: ignore[no-untyped-def]
    make_domain, make_host, now_ns
) -> None:
    domain = make_domain()
    good, rogue = make_host(domain), make_host()
    att = await rogue.tao_for().attest(MESSAGE)
    # The rogue host staples the good host's certificate to its attestation.
    stapled = attrs.evolve(att, root_endorsement=good.root_endorsement)
    with pytest.raises(AuthenticationError, match="different key"):
        validate(stapled, now_ns=time.time_ns(), policy_cert=domain.policy_cert)


async def test_self_signed_endorsement_is_refused(make_domain, make_host, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    rogue = make_host()
    # The rogue makes its own "policy certificate" and certifies itself with it.
    fake_policy = Signer.generate()
    fake_cert = certs.make_policy_certificate(
        fake_policy, common_name="taonet policy key", now_ns=now_ns
    )
    endorsement = certs.issue_host_certificate(
        fake_policy, fake_cert, rogue.public_key_der(), now_ns=now_ns
    )
    att = attrs.evolve(await rogue.tao_for().attest(MESSAGE), root_endorsement=endorsement)
    with pytest.raises(AuthenticationError, match="not signed by this domain's policy key"):
        validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)


async def test_expired_host_certificate_is_refused(make_domain, make_host, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(host_validity_days=1)
    host = make_host(domain)
    att = await host.tao_for().attest(MESSAGE, expiration=now_ns + 10 * DAY)
    validate(att, now_ns=time.time_ns() + DAY // 2, policy_cert=domain.policy_cert)
    with pytest.raises(AuthenticationError, match="host certificate expired"):
        validate(att, now_ns=time.time_ns() + 2 * DAY, policy_cert=domain.policy_cert)


def test_policy_key_may_attest_directly(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    att = attest(domain.unlock(PASSWORD), MESSAGE, now_ns=now_ns)
    proven = validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)
    assert proven.speaker == domain.policy_principal


def test_program_key_is_not_a_host(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    # A host certificate is only for the key it names: a policy certificate (a CA cert)
    # stapled as the endorsement of a key the policy never certified is refused.
    domain = make_domain()
    rogue = Signer.generate()
    att = attest(rogue, MESSAGE, now_ns=now_ns, root_endorsement=domain.policy_cert)
    with pytest.raises(AuthenticationError):
        validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)


def test_garbage_endorsement_is_refused(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    att = attest(Signer.generate(), MESSAGE, now_ns=now_ns, root_endorsement=b"\x30\x03junk")
    with pytest.raises(AuthenticationError, match="malformed"):
        validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)


async def test_anchor_cache_rechecks_the_window_and_the_key(make_domain, make_host) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(host_validity_days=1)
    host, rogue = make_host(domain), make_host()
    anchor = domain.policy_anchor
    att = await host.tao_for().attest(MESSAGE, expiration=time.time_ns() + 10 * DAY)
    now = time.time_ns()
    validate(att, now_ns=now, policy_cert=anchor)  # now cached
    validate(att, now_ns=now, policy_cert=anchor)
    with pytest.raises(AuthenticationError, match="host certificate expired"):
        validate(att, now_ns=now + 2 * DAY, policy_cert=anchor)
    # The cached certificate still only vouches for the key it names.
    stapled = attrs.evolve(
        await rogue.tao_for().attest(MESSAGE), root_endorsement=host.root_endorsement
    )
    with pytest.raises(AuthenticationError, match="different key"):
        validate(stapled, now_ns=time.time_ns(), policy_cert=anchor)
    direct = attest(domain.unlock(PASSWORD), MESSAGE, now_ns=now, expiration=now + 5000 * DAY)
    validate(direct, now_ns=now, policy_cert=anchor)
    with pytest.raises(AuthenticationError, match="policy certificate expired"):
        validate(direct, now_ns=now + 4000 * DAY, policy_cert=anchor)
