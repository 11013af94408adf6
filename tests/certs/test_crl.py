"""Revocation lists signed by the policy key: round trips, tampering, staleness, garbage."""

from __future__ import annotations

import secrets
import time

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, certs
from taonet.crypto import Signer
from tests.conftest import PASSWORD

DAY = 24 * 3600 * 10**9
SECOND = 10**9


def serials(n: int) -> list[int]:
    return [secrets.randbits(159) | 1 << 158 | 1 for _ in range(n)]


@pytest.fixture
def domain(make_domain):  # type: ignore[no-untyped-def]
    return make_domain()


def test_empty_round_trip(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, [], now_ns=now_ns)
    crl = certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns)
    assert crl.serials == frozenset()
    assert 12345 not in crl
    assert crl.number == now_ns
    # Dated five minutes back for lagging clocks; valid for a day from now.
    assert crl.this_update_ns == now_ns // SECOND * SECOND - 300 * SECOND
    assert crl.next_update_ns == now_ns // SECOND * SECOND + DAY


def test_round_trip_with_dates(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    revoked = {s: now_ns - i * 3600 * SECOND for i, s in enumerate(serials(5))}
    der = certs.make_crl(
        domain.unlock(PASSWORD),
        domain.policy_anchor,
        revoked,
        now_ns=now_ns,
        next_update_days=7,
        crl_number=42,
    )
    crl = certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns + 6 * DAY)
    assert crl.serials == frozenset(revoked)
    assert all(s in crl for s in revoked)
    assert 1 not in crl
    assert crl.number == 42
    assert crl.next_update_ns == crl.this_update_ns + 300 * SECOND + 7 * DAY
    # The profile: issuer, dates, extensions.
    parsed = x509.load_der_x509_crl(der)
    assert parsed.issuer == domain.policy_anchor.cert.subject
    assert parsed.is_signature_valid(domain.policy_anchor.public_key)
    for entry in parsed:
        assert int(entry.revocation_date_utc.timestamp()) == revoked[entry.serial_number] // SECOND
    assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_plain_serials_are_dated_now(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    listed = serials(3)
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, listed, now_ns=now_ns)
    assert certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns).serials == set(listed)
    for entry in x509.load_der_x509_crl(der):
        assert int(entry.revocation_date_utc.timestamp()) == now_ns // SECOND


def test_p384_policy_key(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(curve="P-384")
    listed = serials(2)
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, listed, now_ns=now_ns)
    assert certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns).serials == set(listed)


def test_other_domains_crl_is_refused(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make_domain(), make_domain()
    der = certs.make_crl(theirs.unlock(PASSWORD), theirs.policy_anchor, [7], now_ns=now_ns)
    with pytest.raises(AuthenticationError, match="not signed by this domain's policy key"):
        certs.verify_crl(ours.policy_anchor, der, now_ns=now_ns)


def test_wrong_signer_is_refused(make_domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    domain, other = make_domain(), make_domain()
    for signer in (Signer.generate(), other.unlock(PASSWORD)):
        with pytest.raises(AuthenticationError, match="only the domain's policy key"):
            certs.make_crl(signer, domain.policy_anchor, [7], now_ns=now_ns)


def test_stale_crl_is_refused(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, [7], now_ns=now_ns)
    certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns + DAY - SECOND)
    with pytest.raises(AuthenticationError, match="the CRL is out of date"):
        certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns + DAY + SECOND)
    # A cached success is not a pass for later: the window is checked every time.
    with pytest.raises(AuthenticationError, match="out of date"):
        certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns + 30 * DAY)


def test_not_yet_valid_crl_is_refused(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    later = now_ns + 3600 * SECOND
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, [7], now_ns=later)
    with pytest.raises(AuthenticationError, match="not valid until"):
        certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns)
    assert 7 in certs.verify_crl(domain.policy_anchor, der, now_ns=later)


def test_expired_policy_certificate_refuses_crl(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, [7], now_ns=now_ns)
    with pytest.raises(AuthenticationError, match="policy certificate expired"):
        certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns + 4000 * DAY)


@pytest.mark.parametrize("bad", [0, -1, 1 << 159, True])
def test_bad_serials_are_a_programming_error(domain, now_ns, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError)):
        certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, [bad], now_ns=now_ns)


def test_every_flipped_byte_is_refused(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    listed = serials(3)
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, listed, now_ns=now_ns)
    good = certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns)
    original = x509.load_der_x509_crl(der)
    accepted = []
    for i in range(len(der)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = der[:i] + bytes([der[i] ^ mask]) + der[i + 1 :]
            try:
                crl = certs.verify_crl(domain.policy_anchor, tampered, now_ns=now_ns)
            except AuthenticationError:
                continue
            # Only a change outside the signed body and the signature value itself
            # (say, a BIT STRING's unused-bits count) may pass, and then it means
            # exactly what the original said.
            parsed = x509.load_der_x509_crl(tampered)
            assert parsed.tbs_certlist_bytes == original.tbs_certlist_bytes, (i, mask)
            assert parsed.signature == original.signature, (i, mask)
            assert crl == good, (i, mask)
            accepted.append((i, mask))
    assert len(accepted) <= 3


def test_truncations_are_refused(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    der = certs.make_crl(domain.unlock(PASSWORD), domain.policy_anchor, serials(2), now_ns=now_ns)
    for n in range(len(der)):
        with pytest.raises(AuthenticationError):
            certs.verify_crl(domain.policy_anchor, der[:n], now_ns=now_ns)
    with pytest.raises(AuthenticationError):
        certs.verify_crl(domain.policy_anchor, der + b"\x00", now_ns=now_ns)


def test_a_certificate_is_not_a_crl(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthenticationError, match="CRL"):
        certs.verify_crl(domain.policy_anchor, domain.policy_cert, now_ns=now_ns)


def test_oversized_and_non_bytes_are_refused(domain, now_ns) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthenticationError, match="at most"):
        certs.verify_crl(domain.policy_anchor, b"\x30" * (certs.MAX_CRL_BYTES + 1), now_ns=now_ns)
    with pytest.raises(AuthenticationError, match="at most"):
        certs.verify_crl(domain.policy_anchor, bytearray(b"\x30\x00"), now_ns=now_ns)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def policy() -> tuple[Signer, certs.PolicyAnchor]:
    """A policy key and anchor made without a domain directory (Hypothesis wants no
    function-scoped fixtures)."""
    signer = Signer.generate()
    now = time.time_ns()
    cert = certs.make_policy_certificate(signer, common_name="crl test", now_ns=now)
    return signer, certs.PolicyAnchor(cert, now_ns=now)


@given(
    data=st.binary(max_size=600)
    | st.builds(lambda b: b"\x30\x82" + len(b).to_bytes(2, "big") + b, st.binary(max_size=600))
)
def test_garbage_raises_only_authentication_error(
    policy: tuple[Signer, certs.PolicyAnchor], data: bytes
) -> None:
    with pytest.raises(AuthenticationError):
        certs.verify_crl(policy[1], data, now_ns=time.time_ns())


@given(cut=st.integers(min_value=0), junk=st.binary(max_size=40), drop=st.integers(0, 8))
def test_spliced_crls_raise_only_authentication_error(
    policy: tuple[Signer, certs.PolicyAnchor], cut: int, junk: bytes, drop: int
) -> None:
    signer, anchor = policy
    now = time.time_ns()
    der = certs.make_crl(signer, anchor, [5, 9], now_ns=now)
    cut %= len(der)
    spliced = der[:cut] + junk + der[cut + drop :]
    try:
        certs.verify_crl(anchor, spliced, now_ns=now)
    except AuthenticationError:
        return
    # Accepted only if the signed body and signature are the original ones.
    parsed, original = x509.load_der_x509_crl(spliced), x509.load_der_x509_crl(der)
    assert parsed.tbs_certlist_bytes == original.tbs_certlist_bytes
    assert parsed.signature == original.signature
