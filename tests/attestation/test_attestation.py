"""Attestations: build, validate, and every way we know to break them."""

from __future__ import annotations

import contextlib

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError, auth
from taonet.attestation import (
    DEFAULT_VALIDITY_NS,
    MAX_DELEGATION_DEPTH,
    UNROOTED,
    Attestation,
    SignerType,
    attest,
    register_signer_type,
    validate,
)
from taonet.crypto import ATTESTATION_CONTEXT, Signer, Verifier

NOW = 1_800_000_000 * 10**9
SECOND = 10**9

HOST = Signer.generate()
HOST_NAME = auth.key_principal(HOST.public_key_der())
PROGRAM = HOST_NAME.extend(auth.PrinExt("Program", (auth.Bytes(b"\x01" * 32),)))
MESSAGE = auth.Pred("Ready", (auth.Str("now"),))


def make(**kw: object) -> Attestation:
    kw.setdefault("speaker", PROGRAM)
    kw.setdefault("now_ns", NOW)
    return attest(HOST, MESSAGE, **kw)  # type: ignore[arg-type]


def test_valid_attestation_proves_its_statement() -> None:
    att = make()
    proven = validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
    assert proven.speaker == PROGRAM
    assert proven.message == MESSAGE
    assert proven.signer == HOST_NAME
    assert proven.root_signer == HOST_NAME
    assert proven.not_before == NOW
    assert proven.not_after == NOW + DEFAULT_VALIDITY_NS
    assert proven.statement == att.statement()


def test_round_trip_of_the_protobuf_fields() -> None:
    att = attrs.evolve(
        make(),
        serialized_endorsements=(b"e1", b""),
        tpm2_quote_structure=b"q",
        root_endorsement=b"cert",
    )
    assert Attestation.from_bytes(att.to_bytes()) == att


def test_signer_itself_may_speak() -> None:
    att = attest(HOST, MESSAGE, now_ns=NOW)
    assert validate(att, now_ns=NOW, policy_cert=UNROOTED).speaker == HOST_NAME


def test_default_window_is_a_year_in_nanoseconds() -> None:
    says = make().statement()
    assert says.time == NOW
    assert says.expiration == NOW + 365 * 24 * 3600 * SECOND


@pytest.mark.parametrize(
    ("now", "error"),
    [
        (NOW - 1, "not yet valid"),
        (NOW + 10 * SECOND, "expired"),
        (NOW + 10 * SECOND + 1, "expired"),
    ],
)
def test_validity_window_is_checked_against_the_clock(now: int, error: str) -> None:
    att = make(time=NOW, expiration=NOW + 10 * SECOND)
    with pytest.raises(AuthenticationError, match=error):
        validate(att, now_ns=now, policy_cert=UNROOTED)
    assert validate(att, now_ns=NOW + 10 * SECOND - 1, policy_cert=UNROOTED).speaker == PROGRAM


def test_speaker_outside_the_signer_is_refused() -> None:
    other = auth.key_principal(Signer.generate().public_key_der())
    att = make(speaker=other)
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(att, now_ns=NOW, policy_cert=UNROOTED)


def test_resigned_with_another_key_is_refused() -> None:
    att = make()
    thief = Signer.generate()
    # Another key signs the same statement and puts itself in as the signer: the
    # speaker (a sub-principal of HOST) is not a sub-principal of the thief.
    stolen = attrs.evolve(
        att,
        signer_key=thief.public_key_der(),
        signature=thief.sign(att.serialized_statement, ATTESTATION_CONTEXT),
    )
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(stolen, now_ns=NOW, policy_cert=UNROOTED)
    # Another key's signature under the original signer key does not verify.
    forged = attrs.evolve(att, signature=thief.sign(att.serialized_statement, ATTESTATION_CONTEXT))
    with pytest.raises(AuthenticationError):
        validate(forged, now_ns=NOW, policy_cert=UNROOTED)


def test_signature_in_another_context_is_refused() -> None:
    att = make()
    wrong = attrs.evolve(att, signature=HOST.sign(att.serialized_statement, "some other context"))
    with pytest.raises(AuthenticationError):
        validate(wrong, now_ns=NOW, policy_cert=UNROOTED)


def test_changed_statement_is_refused() -> None:
    att = make()
    other = auth.encode(
        auth.Says(speaker=PROGRAM, message=auth.Pred("Evil", ()), time=NOW, expiration=NOW + 1)
    )
    with pytest.raises(AuthenticationError):
        validate(attrs.evolve(att, serialized_statement=other), now_ns=NOW, policy_cert=UNROOTED)


def test_statement_that_is_not_says_is_refused() -> None:
    body = auth.encode(MESSAGE)
    att = attrs.evolve(
        make(), serialized_statement=body, signature=HOST.sign(body, ATTESTATION_CONTEXT)
    )
    with pytest.raises(AuthenticationError, match="not a says"):
        validate(att, now_ns=NOW, policy_cert=UNROOTED)


def test_unknown_signer_type_is_refused() -> None:
    for signer_type in ("tpm", "", "KEY"):
        with pytest.raises(AuthenticationError, match="unsupported signer type"):
            validate(
                attrs.evolve(make(), signer_type=signer_type), now_ns=NOW, policy_cert=UNROOTED
            )


def test_a_key_signature_under_the_tpm2_signer_type_is_refused() -> None:
    # "tpm2" is built in: a key attestation relabelled as tpm2 carries no quote.
    with pytest.raises(AuthenticationError, match="no quote"):
        validate(attrs.evolve(make(), signer_type="tpm2"), now_ns=NOW, policy_cert=UNROOTED)


BASE = make(time=NOW - SECOND, expiration=NOW + 3600 * SECOND).to_bytes()


@given(st.integers(0, len(BASE) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused(position: int, mask: int) -> None:
    tampered = bytearray(BASE)
    tampered[position] ^= mask
    try:
        proven = validate(bytes(tampered), now_ns=NOW, policy_cert=UNROOTED)
    except AuthenticationError:
        return
    # The only flips that may survive are in bytes the signature does not cover and
    # that change nothing proven (e.g. an unknown protobuf field); the statement must
    # be exactly the signed one.
    assert proven.statement == Attestation.from_bytes(BASE).statement()


def test_every_truncation_is_refused() -> None:
    for end in range(len(BASE)):
        with pytest.raises(AuthenticationError):
            validate(BASE[:end], now_ns=NOW, policy_cert=UNROOTED)


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_authentication_error(data: bytes) -> None:
    with pytest.raises(AuthenticationError):
        validate(data, now_ns=NOW, policy_cert=UNROOTED)


@given(st.binary(max_size=300))
def test_from_bytes_raises_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        Attestation.from_bytes(data)


# -- delegation chains -----------------------------------------------------------

STACKED = Signer.generate()  # a stacked host's key, delegated to by HOST
STACKED_NAME = auth.key_principal(STACKED.public_key_der())
LINUX_HOST = HOST_NAME.extend(auth.PrinExt("LinuxHost", (auth.Bytes(b"\x02" * 32),)))
CHILD = LINUX_HOST.extend(auth.PrinExt("Program", (auth.Bytes(b"\x03" * 32),)))


def delegation(
    *,
    delegate: auth.Prin = STACKED_NAME,
    delegator: auth.Prin = LINUX_HOST,
    speaker: auth.Prin | None = None,
    **kw: object,
) -> Attestation:
    kw.setdefault("now_ns", NOW)
    return attest(
        HOST,
        auth.Speaksfor(delegate, delegator),
        speaker=speaker or delegator,
        **kw,  # type: ignore[arg-type]
    )


def chained(deleg: Attestation, *, speaker: auth.Prin = CHILD, **kw: object) -> Attestation:
    kw.setdefault("now_ns", NOW)
    return attest(STACKED, MESSAGE, speaker=speaker, delegation=deleg, **kw)  # type: ignore[arg-type]


def test_valid_delegation_chain() -> None:
    deleg = delegation(time=NOW - 5 * SECOND, expiration=NOW + 50 * SECOND)
    att = chained(deleg, time=NOW - 10 * SECOND, expiration=NOW + 100 * SECOND)
    proven = validate(att.to_bytes(), now_ns=NOW, policy_cert=UNROOTED)
    assert proven.speaker == CHILD
    assert proven.signer == STACKED_NAME
    assert proven.root_signer == HOST_NAME
    assert proven.root_signer_key == HOST.public_key_der()
    # The window is the intersection of the chain's windows.
    assert proven.not_before == NOW - 5 * SECOND
    assert proven.not_after == NOW + 50 * SECOND


def test_expired_delegation_expires_the_chain() -> None:
    att = chained(delegation(expiration=NOW + SECOND))
    validate(att, now_ns=NOW, policy_cert=UNROOTED)
    with pytest.raises(AuthenticationError, match=r"delegation \(level 1\) has expired"):
        validate(att, now_ns=NOW + 2 * SECOND, policy_cert=UNROOTED)


def test_delegation_whose_speaker_is_not_the_delegator() -> None:
    deleg = delegation(speaker=HOST_NAME)  # HOST says STACKED speaksfor LINUX_HOST
    with pytest.raises(AuthenticationError, match="is not the delegator"):
        validate(chained(deleg), now_ns=NOW, policy_cert=UNROOTED)


def test_delegation_to_another_key() -> None:
    other = auth.key_principal(Signer.generate().public_key_der())
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(chained(delegation(delegate=other)), now_ns=NOW, policy_cert=UNROOTED)


def test_statement_speaker_outside_the_delegator() -> None:
    outsider = HOST_NAME.extend(auth.PrinExt("LinuxHost", (auth.Bytes(b"\x09" * 32),)))
    with pytest.raises(AuthenticationError, match="is not the delegator"):
        validate(chained(delegation(), speaker=outsider), now_ns=NOW, policy_cert=UNROOTED)


def test_delegation_that_is_not_speaksfor() -> None:
    deleg = attest(HOST, MESSAGE, speaker=LINUX_HOST, now_ns=NOW)
    with pytest.raises(AuthenticationError, match="not a speaksfor"):
        validate(chained(deleg), now_ns=NOW, policy_cert=UNROOTED)


def test_delegation_signed_by_an_outsider() -> None:
    # The outsider claims to speak for LINUX_HOST, a sub-principal of HOST.
    outsider = Signer.generate()
    deleg = attest(
        outsider, auth.Speaksfor(STACKED_NAME, LINUX_HOST), speaker=LINUX_HOST, now_ns=NOW
    )
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(chained(deleg), now_ns=NOW, policy_cert=UNROOTED)


def test_tampered_delegation_is_refused() -> None:
    deleg = delegation()
    tampered = attrs.evolve(
        deleg, signature=deleg.signature[:-1] + bytes([deleg.signature[-1] ^ 1])
    )
    with pytest.raises(AuthenticationError):
        validate(chained(tampered), now_ns=NOW, policy_cert=UNROOTED)


def long_chain(levels: int) -> Attestation:
    """An attestation under ``levels`` nested delegations, every link valid."""
    keys = [Signer.generate() for _ in range(levels + 1)]
    names = [auth.key_principal(k.public_key_der()) for k in keys]
    prins = [names[0]]
    for i in range(levels + 1):
        prins.append(prins[-1].extend(auth.PrinExt("Level", (auth.Int(i),))))
    att = attest(keys[0], auth.Speaksfor(names[1], prins[1]), speaker=prins[1], now_ns=NOW)
    for i in range(1, levels):
        att = attest(
            keys[i],
            auth.Speaksfor(names[i + 1], prins[i + 1]),
            speaker=prins[i + 1],
            delegation=att,
            now_ns=NOW,
        )
    return attest(keys[levels], MESSAGE, speaker=prins[levels + 1], delegation=att, now_ns=NOW)


def test_chain_depth_is_bounded() -> None:
    proven = validate(long_chain(MAX_DELEGATION_DEPTH), now_ns=NOW, policy_cert=UNROOTED)
    assert proven.message == MESSAGE
    with pytest.raises(AuthenticationError, match="longer than"):
        validate(long_chain(MAX_DELEGATION_DEPTH + 1), now_ns=NOW, policy_cert=UNROOTED)


# -- the trust root is never skipped by omission -------------------------------------


def test_policy_cert_is_required() -> None:
    # An attestation from a host no policy key certified: before, forgetting
    # policy_cert validated it as if it were rooted in the domain.
    att = make()
    with pytest.raises(TypeError, match="policy_cert"):
        validate(att, now_ns=NOW)  # type: ignore[call-arg]
    for wrong in (None, "policy.der", bytearray(b"\x30"), 0):
        with pytest.raises(TypeError, match="UNROOTED to skip the trust root explicitly"):
            validate(att, now_ns=NOW, policy_cert=wrong)  # type: ignore[arg-type]
    # Skipping it is possible, but only by saying so.
    assert validate(att, now_ns=NOW, policy_cert=UNROOTED).speaker == PROGRAM
    assert repr(UNROOTED) == "UNROOTED"


def test_policy_cert_type_is_checked_before_anything_is_parsed() -> None:
    # The TypeError comes first even for garbage, so the mistake cannot hide
    # behind an AuthenticationError in tests of bad input.
    with pytest.raises(TypeError, match="policy_cert"):
        validate(b"garbage", now_ns=NOW, policy_cert=None)  # type: ignore[arg-type]


# -- signer types are registered once ----------------------------------------------


def _fresh_name() -> str:
    # The registry is process-wide: each test registers names no other test uses.
    import secrets

    return f"test{secrets.token_hex(6)}"


def _accept_anything(att: Attestation) -> None:
    del att


def _verify_as_key(att: Attestation) -> None:
    Verifier.from_der(att.signer_key).verify(
        att.serialized_statement, ATTESTATION_CONTEXT, att.signature
    )


def test_builtin_key_type_cannot_be_replaced() -> None:
    # The attack: code imported into the process swaps the "key" verifier for one
    # that accepts any signature, then forges an attestation.
    lax = SignerType(
        verify=_accept_anything, principal=lambda der: auth.principal_for_key("key", der)
    )
    with pytest.raises(ValueError, match="'key' is already registered"):
        register_signer_type("key", lax)
    forged = attrs.evolve(make(), signature=Signer.generate().sign(b"x", ATTESTATION_CONTEXT))
    with pytest.raises(AuthenticationError, match="bad signature"):
        validate(forged, now_ns=NOW, policy_cert=UNROOTED)


def test_registered_type_cannot_be_replaced_and_keeps_working() -> None:
    name = _fresh_name()
    strict = SignerType(
        verify=_verify_as_key, principal=lambda der: auth.principal_for_key(name, der)
    )
    register_signer_type(name, strict)
    signer_name = auth.principal_for_key(name, HOST.public_key_der())
    statement = auth.encode(auth.Says(speaker=signer_name, message=MESSAGE, time=NOW))
    good = Attestation(
        serialized_statement=statement,
        signer_type=name,
        signer_key=HOST.public_key_der(),
        signature=HOST.sign(statement, ATTESTATION_CONTEXT),
    )
    proven = validate(good, now_ns=NOW, policy_cert=UNROOTED)
    assert (proven.speaker, proven.root_signer_type) == (signer_name, name)
    forged = attrs.evolve(good, signature=Signer.generate().sign(statement, ATTESTATION_CONTEXT))
    with pytest.raises(AuthenticationError, match="bad signature"):
        validate(forged, now_ns=NOW, policy_cert=UNROOTED)
    # A second registration of the name, lax this time, is refused...
    lax = SignerType(
        verify=_accept_anything, principal=lambda der: auth.principal_for_key(name, der)
    )
    with pytest.raises(ValueError, match="already registered"):
        register_signer_type(name, lax)
    # ...and the first one still decides.
    with pytest.raises(AuthenticationError, match="bad signature"):
        validate(forged, now_ns=NOW, policy_cert=UNROOTED)


@pytest.mark.parametrize("name", ["", "Key", "tpm-2", "2tpm", "a" * 33, " key", "key\n"])
def test_signer_type_names_are_principal_types(name: str) -> None:
    lax = SignerType(verify=_accept_anything, principal=auth.key_principal)
    with pytest.raises(ValueError, match="lower-case word"):
        register_signer_type(name, lax)


def test_signer_type_must_be_a_signer_type() -> None:
    with pytest.raises(TypeError, match="SignerType"):
        register_signer_type(_fresh_name(), _accept_anything)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lower-case word"):
        register_signer_type(
            None,  # type: ignore[arg-type]
            SignerType(verify=_accept_anything, principal=auth.key_principal),
        )
