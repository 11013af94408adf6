"""Disclosure directives: the wire format both ways, signing, verifying, and every attack.

Each refusal is made as an attacker would make it: bytes written by hand
(``directive_helpers``), or a key and certificate of the attacker's own, or a
directive the domain really signed, replayed where it does not apply. Each is
refused with its reason.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from taonet import AuthorizationError, CodecError, auth, certs
from taonet.crypto import Signer
from taonet.disclosure import (
    MAX_DIRECTIVE_BYTES,
    Directive,
    DirectiveError,
    DirectiveOp,
    DirectiveReason,
    decode_directive,
    sign_directive,
    verify_directive,
)
from taonet.protected import ObjectId
from taonet.testing import CertificateFactory

from . import directive_helpers as h

NOW = 1_795_000_000 * 10**9
HOUR = 3600 * 10**9
R = DirectiveReason
OID = ObjectId("/acme/key/customer-file-key", 3)
#: Version 2 of a program, on some host, bound to the domain: who may read.
DELEGATE = auth.parse_prin("key([0a0b0c]).Program([0102]).PolicyKey([0304])")
#: A program that owns the object (signs with its certificate).
OWNER = auth.parse_prin("key([0a0b0c]).Program([0506]).PolicyKey([0304])")


@pytest.fixture
def factory() -> CertificateFactory:
    return CertificateFactory.generate(now_ns=NOW)


def by_policy(factory: CertificateFactory, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "op": DirectiveOp.READ,
        "delegate": DELEGATE,
        "object_id": OID,
        "not_before": NOW - HOUR,
        "not_after": NOW + HOUR,
    }
    fields.update(changes)
    return sign_directive(factory.signer, **fields)


def program_signer(
    factory: CertificateFactory, principal: auth.Prin = OWNER, **cert_changes: Any
) -> tuple[Signer, bytes]:
    key = Signer.generate()
    cert = factory.program_certificate(key.public_key_der(), principal, now_ns=NOW, **cert_changes)
    return key, cert


def by_program(factory: CertificateFactory, key: Signer, cert: bytes, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "op": DirectiveOp.READ,
        "delegate": DELEGATE,
        "object_id": OID,
        "not_before": NOW - HOUR,
        "not_after": NOW + HOUR,
        "cert": cert,
    }
    fields.update(changes)
    return sign_directive(key, **fields)


def refused(reason: DirectiveReason, call: Callable[[], object]) -> DirectiveError:
    with pytest.raises(DirectiveError) as info:
        call()
    assert info.value.reason is reason, info.value
    assert isinstance(info.value, AuthorizationError)
    return info.value


def refused_at_now(
    factory: CertificateFactory, reason: DirectiveReason, raw: bytes
) -> DirectiveError:
    return refused(reason, lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW))


# -- what is accepted --------------------------------------------------------------------


def test_policy_directive_round_trip(factory: CertificateFactory) -> None:
    raw = by_policy(factory)
    got = verify_directive(raw, policy=factory.anchor, now_ns=NOW)
    assert got.op is DirectiveOp.READ
    assert (got.delegate, got.object_id) == (DELEGATE, OID)
    assert got.delegator == got.signer == auth.key_principal(factory.signer.public_key_der())
    assert (got.not_before, got.not_after) == (NOW - HOUR, NOW + HOUR)
    assert got.by_policy
    assert got.cert is None
    assert got.cert_serial is None
    assert got.signer_key == factory.signer.public_key_der()
    assert got.raw == raw
    assert got.grants(DELEGATE, DirectiveOp.READ, OID)
    # decode says the same, unverified.
    decoded = decode_directive(raw)
    assert (decoded.op, decoded.delegate, decoded.object_id) == (got.op, DELEGATE, OID)
    assert not decoded.by_policy
    assert decoded.signer_key == b""
    # A Directive is verified again by its raw bytes, whatever its fields claim.
    forged = attrs.evolve(decoded, delegate=OWNER, by_policy=True)
    assert verify_directive(forged, policy=factory.anchor, now_ns=NOW).delegate == DELEGATE


def test_program_directive_round_trip(factory: CertificateFactory) -> None:
    key, cert = program_signer(factory)
    raw = by_program(factory, key, cert, op=DirectiveOp.OWN)
    got = verify_directive(raw, policy=factory.anchor, now_ns=NOW, revoked=frozenset())
    assert got.op is DirectiveOp.OWN
    assert got.delegator == OWNER
    assert got.signer == auth.key_principal(key.public_key_der())
    assert got.signer_key == key.public_key_der()
    assert not got.by_policy
    assert got.cert == cert
    assert got.cert_serial == x509.load_der_x509_certificate(cert).serial_number


@pytest.mark.parametrize("op", list(DirectiveOp))
def test_every_operation(factory: CertificateFactory, op: DirectiveOp) -> None:
    got = verify_directive(by_policy(factory, op=op), policy=factory.anchor, now_ns=NOW)
    assert got.op is op
    assert [o.value for o in DirectiveOp] == ["Read", "Write", "Create", "Delete", "Own"]


def test_grants_is_exact(factory: CertificateFactory) -> None:
    got = verify_directive(by_policy(factory), policy=factory.anchor, now_ns=NOW)
    assert got.grants(DELEGATE, DirectiveOp.READ, OID)
    assert not got.grants(OWNER, DirectiveOp.READ, OID)
    assert not got.grants(DELEGATE.parent() or DELEGATE, DirectiveOp.READ, OID)
    assert not got.grants(DELEGATE.extend(auth.PrinExt("X")), DirectiveOp.READ, OID)
    assert not got.grants(DELEGATE, DirectiveOp.WRITE, OID)
    assert not got.grants(DELEGATE, DirectiveOp.READ, ObjectId(OID.name, 4))
    assert not got.grants(DELEGATE, DirectiveOp.READ, ObjectId(OID.name + "2", 3))


def test_window_edges(factory: CertificateFactory) -> None:
    raw = by_policy(factory, not_before=NOW, not_after=NOW + 10)
    verify_directive(raw, policy=factory.anchor, now_ns=NOW)  # from is inclusive
    verify_directive(raw, policy=factory.anchor, now_ns=NOW + 9)
    refused(R.EXPIRED, lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW + 10))
    refused(R.NOT_YET_VALID, lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW - 1))
    # Only an end: valid until it (from whenever the policy certificate is).
    only_end = by_policy(factory, not_before=None, not_after=NOW + 10)
    assert (
        verify_directive(only_end, policy=factory.anchor, now_ns=NOW - 60 * 10**9).not_before
        is None
    )


def test_sign_refuses_an_empty_window_and_a_foreign_certificate(
    factory: CertificateFactory,
) -> None:
    with pytest.raises(ValueError, match="before"):
        by_policy(factory, not_before=NOW, not_after=NOW)
    _key, cert = program_signer(factory)
    with pytest.raises(ValueError, match="another key"):
        by_program(factory, Signer.generate(), cert)
    with pytest.raises(TypeError):
        by_policy(factory, op="Read")


# -- the wire format, from the format sheet -----------------------------------------------

FIXED_POLICY = ec.derive_private_key(0x5EED_D15C_705E, ec.SECP256R1())


def _fixed_factory() -> CertificateFactory:
    signer = Signer(FIXED_POLICY)
    cert = certs.make_policy_certificate(signer, common_name="vector policy", now_ns=NOW)
    return CertificateFactory(signer, cert, now_ns=NOW)


def _delegate_bytes() -> bytes:
    # key([0a0b0c]).Program([0102]).PolicyKey([0304]), by the tags of the format sheet.
    return h.a_prin(
        "key",
        bytes.fromhex("0a0b0c"),
        h.a_ext("Program", h.a_bytes_term(bytes.fromhex("0102"))),
        h.a_ext("PolicyKey", h.a_bytes_term(bytes.fromhex("0304"))),
    )


def test_golden_vector_written_field_by_field() -> None:
    factory = _fixed_factory()
    raw = by_policy(factory)
    statement = h.statement(
        h.key_prin_bytes(FIXED_POLICY),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=NOW - HOUR,
        expiration=NOW + HOUR,
    )
    # Everything but the signature is fixed: type, statement, signer, in field order.
    prefix = (
        h.varint_field(1, 1) + h.field(2, statement) + h.field(3, h.key_prin_bytes(FIXED_POLICY))
    )
    assert raw.startswith(prefix)
    signature_field = raw[len(prefix) :]
    assert signature_field[0] == 0x22
    assert signature_field[1] == len(signature_field) - 2
    signature = signature_field[2:]
    assert raw == prefix + h.field(4, signature)
    # The signature, checked with cryptography alone: SignedData{header, DER ECDSA}
    # over SHA-256 of ContextualizedData{"Policy Secret ...", statement}.
    h.check_signature(FIXED_POLICY.public_key(), statement, signature)
    # The statement's exact bytes, as a stable vector.
    assert (
        hashlib.sha256(statement).hexdigest()
        == hashlib.sha256(
            auth.encode(
                auth.Says(
                    auth.key_principal(h.spki(FIXED_POLICY)),
                    auth.Pred(
                        "Read", (DELEGATE, auth.Bytes(h.object_id_message(OID.name, OID.epoch)))
                    ),
                    time=NOW - HOUR,
                    expiration=NOW + HOUR,
                )
            )
        ).hexdigest()
    )


def test_golden_vector_read_from_bytes_made_by_hand() -> None:
    factory = _fixed_factory()
    statement = h.statement(
        h.key_prin_bytes(FIXED_POLICY),
        "Write",
        _delegate_bytes(),
        "/acme/other",
        7,
        time=NOW - HOUR,
        expiration=NOW + HOUR,
    )
    raw = h.directive_message(
        statement=statement,
        signer=h.key_prin_bytes(FIXED_POLICY),
        signature=h.sign(FIXED_POLICY, statement),
    )
    got = verify_directive(raw, policy=factory.anchor, now_ns=NOW)
    assert (got.op, got.delegate, got.object_id) == (
        DirectiveOp.WRITE,
        DELEGATE,
        ObjectId("/acme/other", 7),
    )
    assert (got.not_before, got.not_after) == (NOW - HOUR, NOW + HOUR)


#: A directive taonet signed once with FIXED_POLICY (ECDSA is randomized, so it is kept
#: whole): policy says Delete(key([0a0b0c]).Program([0102]).PolicyKey([0304]),
#: /acme/vector#9), valid NOW - 1 h to NOW + 1 h. Every later taonet must read it.
STORED_VECTOR = bytes.fromhex(
    "08011283010e01036b6579042063e705eea5232d202a0ef8dc302a10d53e7a8f65708fff3a9c9ea4d0f6f706"
    "fc11000180c0ebd8f2f6c6f4180180c0b0e4b8c8c8f418070644656c6574650201036b657904030a0b0c1102"
    "120750726f6772616d01040201021209506f6c6963794b6579010402030404100a0c2f61636d652f76656374"
    "6f7210091a2901036b6579042063e705eea5232d202a0ef8dc302a10d53e7a8f65708fff3a9c9ea4d0f6f706"
    "fc1100225f0a14080222106563647361703235362d7075626c69631247304502207f7350300c610f57019204"
    "bcf45b32cca366b4450eb5ddb795a1caef353c8b1c022100c5a3e5c3ddea6bf25a50f9840367744fd4574a47"
    "c351e1ea8ccbfbc763aed9f5"
)


def test_stored_vector_still_verifies() -> None:
    factory = _fixed_factory()
    got = verify_directive(STORED_VECTOR, policy=factory.anchor, now_ns=NOW)
    assert got.grants(DELEGATE, DirectiveOp.DELETE, ObjectId("/acme/vector", 9))
    assert (got.not_before, got.not_after) == (NOW - HOUR, NOW + HOUR)
    fields = _fields(STORED_VECTOR)
    h.check_signature(FIXED_POLICY.public_key(), fields[2], fields[4])
    assert fields[3] == h.key_prin_bytes(FIXED_POLICY)
    assert fields[2] == h.statement(
        h.key_prin_bytes(FIXED_POLICY), "Delete", _delegate_bytes(), "/acme/vector", 9,
        time=NOW - HOUR, expiration=NOW + HOUR,
    )  # fmt: skip


_names = (
    st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12),
        min_size=1,
        max_size=4,
    )
    .map(lambda parts: "/" + "/".join(parts))
    .filter(lambda name: "/." not in name)
)
_prins = st.builds(
    lambda key, program: auth.Prin(
        "key", auth.Bytes(key), [auth.PrinExt("Program", (auth.Bytes(program),))]
    ),
    st.binary(min_size=1, max_size=32),
    st.binary(min_size=1, max_size=32),
)


@settings(max_examples=60, deadline=None)
@given(
    op=st.sampled_from(list(DirectiveOp)),
    delegate=_prins,
    name=_names,
    epoch=st.integers(1, 2**31 - 1),
    start=st.none() | st.integers(-(2**62), NOW),
    length=st.integers(1, 2**62),
)
def test_round_trip(
    op: DirectiveOp, delegate: auth.Prin, name: str, epoch: int, start: int | None, length: int
) -> None:
    factory = _FIXED.setdefault("factory", _fixed_factory())
    try:
        oid = ObjectId(name, epoch)
    except ValueError:
        return  # not a name the protected objects take
    end = max(NOW + 1, start or NOW) + length
    raw = sign_directive(
        factory.signer, op=op, delegate=delegate, object_id=oid, not_before=start, not_after=end
    )
    for got in (
        decode_directive(raw),
        verify_directive(raw, policy=factory.anchor, now_ns=NOW, max_lifetime_ns=None),
    ):
        assert (got.op, got.delegate, got.object_id) == (op, delegate, oid)
        assert (got.not_before, got.not_after) == (start, end)


_FIXED: dict[str, CertificateFactory] = {}


def test_original_directive_without_window_only_when_allowed() -> None:
    # As the original's CreateSecretDisclosureDirective makes it: no time, no
    # expiration, and the signing key's own certificate (the policy certificate) attached.
    factory = _fixed_factory()
    statement = h.statement(
        h.key_prin_bytes(FIXED_POLICY),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=None,
    )
    raw = h.directive_message(
        statement=statement,
        signer=h.key_prin_bytes(FIXED_POLICY),
        signature=h.sign(FIXED_POLICY, statement),
        cert=factory.policy_cert,
    )
    decoded = decode_directive(raw)
    assert (decoded.not_before, decoded.not_after) == (None, None)
    err = refused_at_now(factory, R.UNBOUNDED, raw)
    assert "expiration" in str(err)
    got = verify_directive(raw, policy=factory.anchor, now_ns=NOW, allow_unbounded=True)
    assert got.by_policy
    assert got.grants(DELEGATE, DirectiveOp.READ, OID)
    # And what taonet writes without a window reads the same way back.
    ours = by_policy(factory, not_before=None, not_after=None)
    assert decode_directive(ours).not_after is None
    refused(R.UNBOUNDED, lambda: verify_directive(ours, policy=factory.anchor, now_ns=NOW))


def _original_program_cert(
    factory: CertificateFactory, key: Signer, principal: auth.Prin, *, serial: int = 1
) -> bytes:
    """A program certificate of the original's profile: the principal's text as the
    subject CommonName, key usage with certSign, no taonet: URI."""
    fields = factory.program_fields(key.public_key_der(), principal, now_ns=NOW)
    fields = attrs.evolve(
        fields,
        subject=x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Google"),
                x509.NameAttribute(NameOID.COMMON_NAME, str(principal)),
            ]
        ),
        serial=serial,
        extensions=(),
    )
    fields = fields.with_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    fields = fields.with_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=True,
            key_cert_sign=True,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    fields = fields.with_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    )
    return factory.sign(fields)


def test_original_program_certificate_names_the_speaker_in_its_common_name(
    factory: CertificateFactory,
) -> None:
    key = Signer.generate()
    cert = _original_program_cert(factory, key, OWNER)
    raw = by_program(factory, key, cert)
    got = verify_directive(raw, policy=factory.anchor, now_ns=NOW)
    assert got.delegator == OWNER
    assert got.cert_serial == 1
    assert not got.by_policy
    # Its serial is revocable like any other.
    refused(
        R.REVOKED,
        lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW, revoked={1}),
    )
    # Serial 0 (what the original always issued) cannot be revoked: refused.
    zero = _original_program_cert(factory, key, OWNER, serial=0)
    err = refused(
        R.MALFORMED,
        lambda: verify_directive(
            _program_signed_with(key, zero), policy=factory.anchor, now_ns=NOW
        ),
    )
    assert "serial" in str(err)


# -- attacks: each refused with its reason --------------------------------------------------


def test_a_directive_for_another_principal_object_or_epoch_grants_nothing(
    factory: CertificateFactory,
) -> None:
    # Genuine directives, held up for something they do not say.
    got = verify_directive(by_policy(factory), policy=factory.anchor, now_ns=NOW)
    assert not got.grants(OWNER, DirectiveOp.READ, OID)  # another principal
    assert not got.grants(DELEGATE, DirectiveOp.READ, ObjectId("/acme/key/other", 3))
    assert not got.grants(DELEGATE, DirectiveOp.READ, ObjectId(OID.name, OID.epoch + 1))


def test_expired_and_not_yet_valid(factory: CertificateFactory) -> None:
    old = by_policy(factory, not_before=NOW - 2 * HOUR, not_after=NOW - HOUR)
    refused(R.EXPIRED, lambda: verify_directive(old, policy=factory.anchor, now_ns=NOW))
    later = by_policy(factory, not_before=NOW + HOUR, not_after=NOW + 2 * HOUR)
    refused(R.NOT_YET_VALID, lambda: verify_directive(later, policy=factory.anchor, now_ns=NOW))


def test_a_key_that_is_not_the_policy_key_and_has_no_certificate(
    factory: CertificateFactory,
) -> None:
    attacker = Signer.generate()
    # Speaking as itself...
    raw = sign_directive(
        attacker, op=DirectiveOp.READ, delegate=DELEGATE, object_id=OID, not_after=NOW + HOUR
    )
    refused_at_now(factory, R.UNKNOWN_SIGNER, raw)
    # ... or claiming to be the policy key: the signature gives it away.
    policy_prin = h.key_prin_bytes(factory.signer.private_key)
    statement = h.statement(
        policy_prin,
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    claimed = h.directive_message(
        statement=statement,
        signer=policy_prin,
        signature=h.sign(attacker.private_key, statement),
    )
    refused(R.BAD_SIGNATURE, lambda: verify_directive(claimed, policy=factory.anchor, now_ns=NOW))


def test_a_program_certificate_of_another_domain(factory: CertificateFactory) -> None:
    other = CertificateFactory.generate(now_ns=NOW)
    key, cert = program_signer(other)
    raw = by_program(other, key, cert)
    verify_directive(raw, policy=other.anchor, now_ns=NOW)  # good in its own domain
    err = refused_at_now(factory, R.WRONG_DOMAIN, raw)
    assert "policy key" in str(err)
    # Even one that copies this domain's policy subject as its issuer.
    fields = other.program_fields(key.public_key_der(), OWNER, now_ns=NOW)
    forged = other.sign(attrs.evolve(fields, issuer=factory.anchor.cert.subject))
    refused(
        R.WRONG_DOMAIN,
        lambda: verify_directive(by_program(other, key, forged), policy=factory.anchor, now_ns=NOW),
    )


def test_a_replayed_directive_from_a_revoked_program(factory: CertificateFactory) -> None:
    key, cert = program_signer(factory)
    raw = by_program(factory, key, cert)
    serial = x509.load_der_x509_certificate(cert).serial_number
    verify_directive(raw, policy=factory.anchor, now_ns=NOW, revoked={serial + 1})
    crl = certs.verify_crl(factory.anchor, factory.crl([serial], now_ns=NOW), now_ns=NOW)
    err = refused(
        R.REVOKED,
        lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW, revoked=crl),
    )
    assert str(serial) in str(err)
    refused(
        R.REVOKED,
        lambda: verify_directive(
            raw, policy=factory.anchor, now_ns=NOW, revoked=lambda s: s == serial
        ),
    )


def test_a_certificate_naming_another_principal_than_the_speaker(
    factory: CertificateFactory,
) -> None:
    # The program's key signs a statement in the name of a program its certificate
    # does not name (OWNER), its certificate being for someone else.
    key, cert = program_signer(factory, principal=DELEGATE)
    spoken = h.statement(
        _owner_bytes(),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    raw = h.directive_message(
        statement=spoken,
        signer=h.key_prin_bytes(key.private_key),
        signature=h.sign(key.private_key, spoken),
        cert=cert,
    )
    err = refused_at_now(factory, R.WRONG_SPEAKER, raw)
    assert "certificate names" in str(err)
    # The policy key speaking for someone else is refused the same way.
    policy_key = factory.signer.private_key
    other = h.statement(
        _owner_bytes(),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    by_key = h.directive_message(
        statement=other,
        signer=h.key_prin_bytes(policy_key),
        signature=h.sign(policy_key, other),
    )
    refused(R.WRONG_SPEAKER, lambda: verify_directive(by_key, policy=factory.anchor, now_ns=NOW))


def _owner_bytes() -> bytes:
    return h.a_prin(
        "key",
        bytes.fromhex("0a0b0c"),
        h.a_ext("Program", h.a_bytes_term(bytes.fromhex("0506"))),
        h.a_ext("PolicyKey", h.a_bytes_term(bytes.fromhex("0304"))),
    )


def test_a_certificate_whose_key_is_not_the_signer_key(factory: CertificateFactory) -> None:
    # A genuine certificate (someone else's), attached to a directive the attacker's
    # key signed in that program's name.
    _, cert = program_signer(factory)
    attacker = ec.generate_private_key(ec.SECP256R1())
    spoken = h.statement(
        _owner_bytes(),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    raw = h.directive_message(
        statement=spoken,
        signer=h.key_prin_bytes(attacker),
        signature=h.sign(attacker, spoken),
        cert=cert,
    )
    err = refused(
        R.UNKNOWN_SIGNER, lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW)
    )
    assert "another key" in str(err)
    # Naming the certified key as the signer instead: the signature is not by it.
    certified = x509.load_der_x509_certificate(cert).public_key()
    assert isinstance(certified, ec.EllipticCurvePublicKey)
    raw = h.directive_message(
        statement=spoken,
        signer=h.a_prin("key", hashlib.sha256(h.spki(certified)).digest()),
        signature=h.sign(attacker, spoken),
        cert=cert,
    )
    refused_at_now(factory, R.BAD_SIGNATURE, raw)


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ("CanRead", R.BAD_OP),
        ("Execute", R.BAD_OP),
        ("Owns", R.BAD_OP),
        ("X", R.BAD_OP),
        # Not even a predicate name in the auth language: the statement does not decode.
        ("read", R.MALFORMED),
    ],
)
def test_an_operation_outside_the_five(
    factory: CertificateFactory, op: str, reason: DirectiveReason
) -> None:
    # The original signs any predicate name; taonet refuses all but five.
    key = factory.signer.private_key
    spoken = h.statement(
        h.key_prin_bytes(key),
        op,
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    raw = h.directive_message(
        statement=spoken, signer=h.key_prin_bytes(key), signature=h.sign(key, spoken)
    )
    err = refused_at_now(factory, reason, raw)
    assert op in str(err)
    with pytest.raises(CodecError):
        decode_directive(raw)


def test_bytes_appended_after_the_ecdsa_value(factory: CertificateFactory) -> None:
    # The original's verifier accepts a signature with bytes after the DER value.
    key = factory.signer.private_key
    spoken = h.statement(
        h.key_prin_bytes(key),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    good = h.sign(key, spoken)
    good_raw = h.directive_message(statement=spoken, signer=h.key_prin_bytes(key), signature=good)
    verify_directive(good_raw, policy=factory.anchor, now_ns=NOW)
    der = h.ecdsa_value(good)
    for tail in (b"\x00", b"\x30\x00", der):
        padded = h.field(1, h.signed_data_header()) + h.field(2, der + tail)
        raw = h.directive_message(statement=spoken, signer=h.key_prin_bytes(key), signature=padded)
        refused_at_now(factory, R.BAD_SIGNATURE, raw)
    # After the SignedData itself (an unknown field, then garbage).
    for tail in (h.field(3, b"x"), b"\x00"):
        raw = h.directive_message(
            statement=spoken, signer=h.key_prin_bytes(key), signature=good + tail
        )
        refused_at_now(factory, R.BAD_SIGNATURE, raw)


def test_a_statement_edited_after_signing(factory: CertificateFactory) -> None:
    raw = by_policy(factory)
    fields = _fields(raw)
    original = fields[2]
    attacker_delegate = auth.encode(
        auth.parse_prin("key([0a0b0c]).Program([ffff]).PolicyKey([0304])")
    )
    edited = original.replace(auth.encode(DELEGATE), attacker_delegate)
    assert edited != original
    assert len(edited) == len(original)
    forged = h.directive_message(statement=edited, signer=fields[3], signature=fields[4])
    refused(R.BAD_SIGNATURE, lambda: verify_directive(forged, policy=factory.anchor, now_ns=NOW))
    # The genuine one still verifies (the edit, not the setting, is refused).
    verify_directive(raw, policy=factory.anchor, now_ns=NOW)


def _fields(raw: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a directive_message (by hand)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        if tag & 7 == 0:
            i += 1
            continue
        length, shift = 0, 0
        while True:
            b = raw[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out[tag >> 3] = raw[i : i + length]
        i += length
    return out


@pytest.mark.parametrize("type_", [None, 0, 2, 7, 2**32 + 1])
def test_a_type_other_than_secret_disclosure(
    factory: CertificateFactory, type_: int | None
) -> None:
    fields = _fields(by_policy(factory))
    raw = h.directive_message(
        statement=fields[2], signer=fields[3], signature=fields[4], type_=type_
    )
    refused_at_now(factory, R.BAD_TYPE, raw)
    with pytest.raises(CodecError):
        decode_directive(raw)


def test_oversized_input(factory: CertificateFactory) -> None:
    fields = _fields(by_policy(factory))
    big = h.directive_message(
        statement=fields[2],
        signer=fields[3],
        signature=fields[4],
        cert=b"\x00" * MAX_DIRECTIVE_BYTES,
    )
    assert len(big) > MAX_DIRECTIVE_BYTES
    err = refused(R.MALFORMED, lambda: verify_directive(big, policy=factory.anchor, now_ns=NOW))
    assert "limit" in str(err)
    with pytest.raises(CodecError, match="limit"):
        decode_directive(big)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda f: h.directive_message(statement=None, signer=f[3], signature=f[4]),
        lambda f: h.directive_message(statement=f[2], signer=None, signature=f[4]),
        lambda f: h.directive_message(statement=f[2], signer=f[3], signature=None),
        # Fields repeated or out of order: not the one encoding.
        lambda f: (
            h.directive_message(statement=f[2], signer=f[3], signature=f[4]) + h.field(2, f[2])
        ),
        lambda f: h.field(3, f[3]) + h.varint_field(1, 1) + h.field(2, f[2]) + h.field(4, f[4]),
        lambda f: (
            h.directive_message(statement=f[2], signer=f[3], signature=f[4]) + h.field(9, b"x")
        ),
        lambda f: b"\xff\xff",
        lambda f: b"",
    ],
)
def test_malformed_messages(
    factory: CertificateFactory, mangle: Callable[[dict[int, bytes]], bytes]
) -> None:
    raw = mangle(_fields(by_policy(factory)))
    with pytest.raises(DirectiveError) as info:
        verify_directive(raw, policy=factory.anchor, now_ns=NOW)
    assert info.value.reason in (R.MALFORMED, R.BAD_TYPE)
    with pytest.raises(CodecError):
        decode_directive(raw)


def test_a_statement_of_another_shape_is_malformed_even_when_signed(
    factory: CertificateFactory,
) -> None:
    key = factory.signer.private_key
    me = h.key_prin_bytes(key)
    oid_term = h.a_bytes_term(h.object_id_message(OID.name, OID.epoch))
    shapes = [
        h.a_says(me, h.a_pred("Read", _delegate_bytes()), time=None, expiration=NOW + HOUR),
        h.a_says(
            me, h.a_pred("Read", oid_term, _delegate_bytes()), time=None, expiration=NOW + HOUR
        ),
        h.a_says(
            me,
            h.a_pred("Read", _delegate_bytes(), h.a_bytes_term(b"")),  # no object
            time=None,
            expiration=NOW + HOUR,
        ),
        h.a_says(
            me,
            h.a_pred("Read", _delegate_bytes(), h.a_bytes_term(h.object_id_message("/a", 0))),
            time=None,
            expiration=NOW + HOUR,
        ),
        h.a_pred("Read", _delegate_bytes(), oid_term),  # not a says
    ]
    for spoken in shapes:
        raw = h.directive_message(statement=spoken, signer=me, signature=h.sign(key, spoken))
        refused_at_now(factory, R.MALFORMED, raw)


def test_expired_revoked_or_wrong_certificates(factory: CertificateFactory) -> None:
    key = Signer.generate()
    start = _dt.datetime.fromtimestamp(NOW / 1e9, tz=_dt.UTC)
    expired = factory.program_certificate(
        key.public_key_der(),
        OWNER,
        now_ns=NOW,
        not_before=start - _dt.timedelta(days=2),
        not_after=start - _dt.timedelta(days=1),
    )
    refused(
        R.EXPIRED,
        lambda: verify_directive(
            by_program(factory, key, expired), policy=factory.anchor, now_ns=NOW
        ),
    )
    future = factory.program_certificate(
        key.public_key_der(), OWNER, now_ns=NOW, not_before=start + _dt.timedelta(days=1)
    )
    refused(
        R.NOT_YET_VALID,
        lambda: verify_directive(
            by_program(factory, key, future), policy=factory.anchor, now_ns=NOW
        ),
    )
    # A host certificate of this domain is not a program's.
    host = factory.host_certificate(key.public_key_der(), now_ns=NOW)
    raw = _program_signed_with(key, host)
    refused_at_now(factory, R.UNKNOWN_SIGNER, raw)
    # Nor is the policy certificate, held up by another key.
    raw = _program_signed_with(key, factory.policy_cert)
    refused_at_now(factory, R.UNKNOWN_SIGNER, raw)
    # Garbage where the certificate goes.
    raw = _program_signed_with(key, b"\x30\x03\x02\x01\x01")
    refused_at_now(factory, R.MALFORMED, raw)


def _program_signed_with(key: Signer, cert: bytes) -> bytes:
    spoken = h.statement(
        _owner_bytes(),
        "Read",
        _delegate_bytes(),
        OID.name,
        OID.epoch,
        time=None,
        expiration=NOW + HOUR,
    )
    return h.directive_message(
        statement=spoken,
        signer=h.key_prin_bytes(key.private_key),
        signature=h.sign(key.private_key, spoken),
        cert=cert,
    )


def test_not_while_the_policy_certificate_is_out_of_its_window(
    factory: CertificateFactory,
) -> None:
    raw = by_policy(factory, not_after=NOW + 100 * 365 * 24 * HOUR)
    cert = factory.anchor.cert
    before = int(cert.not_valid_before_utc.timestamp()) * 10**9 - 1
    after = int(cert.not_valid_after_utc.timestamp()) * 10**9 + 1
    err = refused(R.EXPIRED, lambda: verify_directive(raw, policy=factory.anchor, now_ns=after))
    assert "policy certificate" in str(err)
    refused(R.NOT_YET_VALID, lambda: verify_directive(raw, policy=factory.anchor, now_ns=before))


def test_the_policy_key_with_a_certificate_other_than_its_own(factory: CertificateFactory) -> None:
    _, cert = program_signer(factory)
    fields = _fields(by_policy(factory))
    raw = h.directive_message(statement=fields[2], signer=fields[3], signature=fields[4], cert=cert)
    refused_at_now(factory, R.MALFORMED, raw)


def test_a_cached_certificate_still_meets_the_clock_and_the_crl(
    factory: CertificateFactory,
) -> None:
    # The certificate's checks are remembered; its window and revocation are not.
    key, cert = program_signer(factory)
    raw = by_program(factory, key, cert, not_after=NOW + 300 * 24 * HOUR)
    verify_directive(raw, policy=factory.anchor, now_ns=NOW)
    after_cert = NOW + 40 * 24 * HOUR  # program certificates last 30 days
    refused(R.EXPIRED, lambda: verify_directive(raw, policy=factory.anchor, now_ns=after_cert))
    serial = x509.load_der_x509_certificate(cert).serial_number
    refused(
        R.REVOKED,
        lambda: verify_directive(raw, policy=factory.anchor, now_ns=NOW, revoked={serial}),
    )
    # And a signature is checked every time: a good one cached does not vouch for a bad one.
    fields = _fields(raw)
    bad_sig = bytearray(fields[4])
    bad_sig[-1] ^= 1
    forged = h.directive_message(
        statement=fields[2], signer=fields[3], signature=bytes(bad_sig), cert=fields[5]
    )
    refused(R.BAD_SIGNATURE, lambda: verify_directive(forged, policy=factory.anchor, now_ns=NOW))


# -- decoding arbitrary bytes --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoding_arbitrary_bytes_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_directive(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_flipping_any_byte_of_a_directive_is_refused(data: st.DataObject) -> None:
    factory = _fixed_factory()
    raw = _FIXED_RAW.setdefault("raw", by_policy(factory))
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = bytearray(raw)
    mutated[i] ^= 1 << bit
    try:
        got = verify_directive(bytes(mutated), policy=factory.anchor, now_ns=NOW)
    except DirectiveError:
        return
    # The one change that may verify: none that alters what the directive says.
    pytest.fail(f"a directive with byte {i} flipped verified: {got}")


_FIXED_RAW: dict[str, bytes] = {}


def test_directive_type_is_public() -> None:
    assert Directive.__module__ == "taonet.disclosure"
    assert DirectiveError.__module__ == "taonet.disclosure"
