"""Revocation lists signed by the policy key: round trips, tampering, staleness, garbage."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterable, Iterator

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, certs
from taonet.certs._der import split
from taonet.crypto import Signer
from taonet.testing import CertificateFactory
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
    certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns)
    for i in range(len(der)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = der[:i] + bytes([der[i] ^ mask]) + der[i + 1 :]
            with pytest.raises(AuthenticationError):
                certs.verify_crl(domain.policy_anchor, tampered, now_ns=now_ns)


# -- mutations: whatever verifies is the very CRL the policy key signed ---------------

MUTATION_NOW = 1_800_000_000 * 10**9
MUTATION_SEED = 20240610


def even_tailed_crl(factory: CertificateFactory, listed: list[int]) -> bytes:
    """A CRL whose signature ends in three zero bits (one in eight does).

    Then a signature BIT STRING that claims 1 to 3 unused bits is well-formed DER
    for the same signature value: the field the review found changed in the one
    accepted mutant (its unused-bits octet, 0x00 -> 0x01), which the signature
    does not cover.
    """
    while True:
        der = certs.make_crl(factory.signer, factory.anchor, listed, now_ns=MUTATION_NOW)
        if der[-1] & 0x07 == 0:
            return der


def mutants(der: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    """``count`` seeded mutants: bit flips, byte replacements (1 to 4), insertions, deletions.

    A mutant equal to ``der`` (a byte replaced by itself) is not counted.
    """
    made = 0
    while made < count:
        b = bytearray(der)
        op = rng.randrange(5)
        if op == 0:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            for _ in range(rng.randrange(2, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 3:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        else:
            del b[rng.randrange(len(b))]
        if b != der:
            made += 1
            yield bytes(b)


def accepted_mutants(factory: CertificateFactory, der: bytes, candidates: Iterable[bytes]) -> int:
    """How many candidates verify; asserts each one that does is ``der`` itself."""
    count = 0
    for candidate in candidates:
        try:
            certs.verify_crl(factory.anchor, candidate, now_ns=MUTATION_NOW)
        except AuthenticationError:
            continue
        assert candidate == der, f"a different CRL verified: {candidate.hex()}"
        count += 1
    return count


def every_byte_replaced(der: bytes) -> Iterator[bytes]:
    for i in range(len(der)):
        for value in range(256):
            yield der[:i] + bytes([value]) + der[i + 1 :]


def test_the_unused_bits_octet_is_refused() -> None:
    # The review's accepted mutant, made on purpose: same signed part, same
    # signature value, BIT STRING unused-bits octet 0 -> 1, 2, 3.
    factory = CertificateFactory.generate(now_ns=MUTATION_NOW)
    der = even_tailed_crl(factory, [5, 9])
    position = len(der) - len(split(der).signature) - 1
    assert der[position] == 0
    for unused in (1, 2, 3):
        mutant = der[:position] + bytes([unused]) + der[position + 1 :]
        assert split(mutant).signature == split(der).signature
        with pytest.raises(AuthenticationError, match=f"declares {unused} unused bits"):
            certs.verify_crl(factory.anchor, mutant, now_ns=MUTATION_NOW)


def test_every_single_byte_mutant_and_seeded_mutants_are_refused() -> None:
    # Every value at every position (about 75,000 CRLs), then 10,000 seeded
    # mutants: the only ones that verify are the original, byte for byte (each
    # byte "replaced" by its own value).
    factory = CertificateFactory.generate(now_ns=MUTATION_NOW)
    der = even_tailed_crl(factory, [5, 9, 1 << 100])
    assert accepted_mutants(factory, der, every_byte_replaced(der)) == len(der)
    rng = random.Random(MUTATION_SEED)
    assert accepted_mutants(factory, der, mutants(der, rng, 10_000)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_200000_seeded_mutants_are_refused(curve: str) -> None:
    factory = CertificateFactory.generate(now_ns=MUTATION_NOW, curve=curve)
    der = even_tailed_crl(factory, [5, 9, 1 << 100, 1 << 158])
    rng = random.Random(MUTATION_SEED)
    assert accepted_mutants(factory, der, mutants(der, rng, 200_000)) == 0


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
    # Accepted only if nothing changed.
    assert spliced == der
