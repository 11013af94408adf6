"""Directive.digest names a grant by its signed statement and signer (review A5 F6):
other bytes of the same directive (the ECDSA (r, n-s) form, an attached policy
certificate) keep the name; another statement or another signer changes it."""

from __future__ import annotations

import hashlib
import time

import attrs
import pytest

from taonet import CodecError, auth
from taonet.disclosure import (
    DirectiveOp,
    decode_directive,
    directive_digest,
    sign_directive,
    verify_directive,
)
from taonet.protected import ObjectId
from taonet.testing import CertificateFactory
from tests.disclosure.test_peer_review import high_s

TO = auth.parse_prin("key([0a0b]).Program([0c0d])")
HOUR = 3600 * 10**9


def test_the_digest_is_of_the_statement_and_signer() -> None:
    now = time.time_ns()
    factory = CertificateFactory.generate(now_ns=now)
    other = CertificateFactory.generate(now_ns=now)

    def signed(oid: ObjectId, by: CertificateFactory = factory) -> bytes:
        return sign_directive(
            by.signer,
            op=DirectiveOp.READ,
            delegate=TO,
            object_id=oid,
            not_before=now - HOUR,
            not_after=now + HOUR,
        )

    raw = signed(ObjectId("/app/key", 1))
    malleated = high_s(raw)
    assert malleated != raw
    verified = verify_directive(malleated, policy=factory.anchor, now_ns=now)
    name = decode_directive(raw).digest
    assert verified.digest == name == directive_digest(malleated) == directive_digest(raw)
    assert name != hashlib.sha256(raw).hexdigest()
    assert len(name) == 64
    # Another object, another epoch, another signer: another name.
    assert decode_directive(signed(ObjectId("/app/key", 2))).digest != name
    assert decode_directive(signed(ObjectId("/app/other", 1))).digest != name
    assert decode_directive(signed(ObjectId("/app/key", 1), other)).digest != name
    # A Directive made by hand has no bytes to be named by.
    with pytest.raises(ValueError, match="no bytes"):
        _ = attrs.evolve(verified, raw=b"").digest
    with pytest.raises(CodecError):
        directive_digest(b"\xff\x00 not a directive")
