"""The per-key cache of validation: keyed by the exact key bytes, bounded, never confused.

``validate`` keeps, per "key" signer, what depends only on its key (the parsed
verifier and the key principal) in a bounded LRU keyed by the key's exact bytes.
These tests try to make it answer for the wrong key: another encoding of a cached
key, a cached key with bytes appended, keys validated in turn, keys that are not
bytes; and check that it stays bounded and keeps no failures.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives import serialization

from taonet import AuthenticationError, auth
from taonet.attestation import (
    DEFAULT_VALIDITY_NS,
    UNROOTED,
    Attestation,
    _attestation,
    attest,
    validate,
)
from taonet.crypto import Signer

NOW = 1_800_000_000 * 10**9
MESSAGE = auth.Pred("Ready", ())


def _signed_by(signer: Signer) -> Attestation:
    return attest(signer, MESSAGE, now_ns=NOW)


def test_another_encoding_of_a_cached_key_is_refused() -> None:
    host = Signer.generate()
    att = _signed_by(host)
    validate(att, now_ns=NOW, policy_cert=UNROOTED)  # the key is cached now
    # The same public key in other bytes: a compressed point (its SPKI header says
    # 0x22 bytes of key; take the prefix from a known-good compressed SPKI).
    compressed = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    point = host.private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    for other in (compressed + point, host.public_key_der() + b"\x00"):
        forged = attrs.evolve(att, signer_key=other)
        with pytest.raises(AuthenticationError, match="signer key is malformed"):
            validate(forged, now_ns=NOW, policy_cert=UNROOTED)
    # The cached key still validates, as itself.
    assert validate(att, now_ns=NOW, policy_cert=UNROOTED).signer == auth.key_principal(
        host.public_key_der()
    )


def test_a_cached_key_does_not_vouch_for_another() -> None:
    alice, mallory = Signer.generate(), Signer.generate()
    good = _signed_by(alice)
    validate(good, now_ns=NOW, policy_cert=UNROOTED)
    # Alice's signature presented under Mallory's key (cached or not): refused.
    validate(_signed_by(mallory), now_ns=NOW, policy_cert=UNROOTED)
    swapped = attrs.evolve(good, signer_key=mallory.public_key_der())
    with pytest.raises(AuthenticationError, match="bad signature"):
        validate(swapped, now_ns=NOW, policy_cert=UNROOTED)


def test_keys_validated_in_turn_each_get_their_own_principal() -> None:
    signers = [Signer.generate(curve) for curve in ("P-256", "P-384", "P-256")]
    atts = [_signed_by(s) for s in signers]
    for _ in range(3):
        for signer, att in zip(signers, atts, strict=True):
            proven = validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
            expected = auth.key_principal(signer.public_key_der())
            assert proven.signer == proven.root_signer == proven.speaker == expected
            assert proven.root_signer_key == signer.public_key_der()
            assert proven.root_signer_type == "key"
            assert proven.root_endorsement is None
            assert proven.statement == att.statement()
            assert proven.message == MESSAGE
            assert (proven.not_before, proven.not_after) == (NOW, NOW + DEFAULT_VALIDITY_NS)


def test_signer_keys_as_other_bytes_like_objects() -> None:
    signer = Signer.generate()
    att = _signed_by(signer)
    like: list[Any] = [bytearray(signer.public_key_der()), memoryview(signer.public_key_der())]
    for key in like:
        proven = validate(attrs.evolve(att, signer_key=key), now_ns=NOW, policy_cert=UNROOTED)
        assert proven.signer == auth.key_principal(signer.public_key_der())
    # Not bytes at all: refused as a malformed attestation, not a TypeError, and an
    # int is not taken for that many zero bytes.
    others: list[Any] = [len(signer.public_key_der()), "key", None]
    for key in others:
        with pytest.raises(AuthenticationError, match="signer key"):
            validate(attrs.evolve(att, signer_key=key), now_ns=NOW, policy_cert=UNROOTED)


def test_the_cache_is_bounded_and_keeps_no_failures() -> None:
    cache = _attestation._key_signer
    maxsize = cache.cache_info().maxsize
    assert maxsize is not None
    assert maxsize <= 4096
    cache.cache_clear()
    for _ in range(maxsize + 50):
        validate(_signed_by(Signer.generate()), now_ns=NOW, policy_cert=UNROOTED)
    assert cache.cache_info().currsize == maxsize
    cache.cache_clear()
    att = _signed_by(Signer.generate())
    for junk in (b"", b"\x30\x00", att.signer_key[:-1], att.signer_key + b"\x00"):
        with pytest.raises(AuthenticationError):
            validate(attrs.evolve(att, signer_key=junk), now_ns=NOW, policy_cert=UNROOTED)
    assert cache.cache_info().currsize == 0
