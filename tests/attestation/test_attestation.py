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
    Attestation,
    attest,
    validate,
)
from taonet.crypto import ATTESTATION_CONTEXT, Signer

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
    proven = validate(att.to_bytes(), now_ns=NOW)
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
    assert validate(att, now_ns=NOW).speaker == HOST_NAME


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
        validate(att, now_ns=now)
    assert validate(att, now_ns=NOW + 10 * SECOND - 1).speaker == PROGRAM


def test_speaker_outside_the_signer_is_refused() -> None:
    other = auth.key_principal(Signer.generate().public_key_der())
    att = make(speaker=other)
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(att, now_ns=NOW)


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
        validate(stolen, now_ns=NOW)
    # Another key's signature under the original signer key does not verify.
    forged = attrs.evolve(att, signature=thief.sign(att.serialized_statement, ATTESTATION_CONTEXT))
    with pytest.raises(AuthenticationError):
        validate(forged, now_ns=NOW)


def test_signature_in_another_context_is_refused() -> None:
    att = make()
    wrong = attrs.evolve(att, signature=HOST.sign(att.serialized_statement, "some other context"))
    with pytest.raises(AuthenticationError):
        validate(wrong, now_ns=NOW)


def test_changed_statement_is_refused() -> None:
    att = make()
    other = auth.encode(
        auth.Says(speaker=PROGRAM, message=auth.Pred("Evil", ()), time=NOW, expiration=NOW + 1)
    )
    with pytest.raises(AuthenticationError):
        validate(attrs.evolve(att, serialized_statement=other), now_ns=NOW)


def test_statement_that_is_not_says_is_refused() -> None:
    body = auth.encode(MESSAGE)
    att = attrs.evolve(
        make(), serialized_statement=body, signature=HOST.sign(body, ATTESTATION_CONTEXT)
    )
    with pytest.raises(AuthenticationError, match="not a says"):
        validate(att, now_ns=NOW)


def test_unknown_signer_type_is_refused() -> None:
    for signer_type in ("tpm2", "tpm", "", "KEY"):
        with pytest.raises(AuthenticationError, match="unsupported signer type"):
            validate(attrs.evolve(make(), signer_type=signer_type), now_ns=NOW)


BASE = make(time=NOW - SECOND, expiration=NOW + 3600 * SECOND).to_bytes()


@given(st.integers(0, len(BASE) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_refused(position: int, mask: int) -> None:
    tampered = bytearray(BASE)
    tampered[position] ^= mask
    try:
        proven = validate(bytes(tampered), now_ns=NOW)
    except AuthenticationError:
        return
    # The only flips that may survive are in bytes the signature does not cover and
    # that change nothing proven (e.g. an unknown protobuf field); the statement must
    # be exactly the signed one.
    assert proven.statement == Attestation.from_bytes(BASE).statement()


def test_every_truncation_is_refused() -> None:
    for end in range(len(BASE)):
        with pytest.raises(AuthenticationError):
            validate(BASE[:end], now_ns=NOW)


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_authentication_error(data: bytes) -> None:
    with pytest.raises(AuthenticationError):
        validate(data, now_ns=NOW)


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
    proven = validate(att.to_bytes(), now_ns=NOW)
    assert proven.speaker == CHILD
    assert proven.signer == STACKED_NAME
    assert proven.root_signer == HOST_NAME
    assert proven.root_signer_key == HOST.public_key_der()
    # The window is the intersection of the chain's windows.
    assert proven.not_before == NOW - 5 * SECOND
    assert proven.not_after == NOW + 50 * SECOND


def test_expired_delegation_expires_the_chain() -> None:
    att = chained(delegation(expiration=NOW + SECOND))
    validate(att, now_ns=NOW)
    with pytest.raises(AuthenticationError, match=r"delegation \(level 1\) has expired"):
        validate(att, now_ns=NOW + 2 * SECOND)


def test_delegation_whose_speaker_is_not_the_delegator() -> None:
    deleg = delegation(speaker=HOST_NAME)  # HOST says STACKED speaksfor LINUX_HOST
    with pytest.raises(AuthenticationError, match="is not the delegator"):
        validate(chained(deleg), now_ns=NOW)


def test_delegation_to_another_key() -> None:
    other = auth.key_principal(Signer.generate().public_key_der())
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(chained(delegation(delegate=other)), now_ns=NOW)


def test_statement_speaker_outside_the_delegator() -> None:
    outsider = HOST_NAME.extend(auth.PrinExt("LinuxHost", (auth.Bytes(b"\x09" * 32),)))
    with pytest.raises(AuthenticationError, match="is not the delegator"):
        validate(chained(delegation(), speaker=outsider), now_ns=NOW)


def test_delegation_that_is_not_speaksfor() -> None:
    deleg = attest(HOST, MESSAGE, speaker=LINUX_HOST, now_ns=NOW)
    with pytest.raises(AuthenticationError, match="not a speaksfor"):
        validate(chained(deleg), now_ns=NOW)


def test_delegation_signed_by_an_outsider() -> None:
    # The outsider claims to speak for LINUX_HOST, a sub-principal of HOST.
    outsider = Signer.generate()
    deleg = attest(
        outsider, auth.Speaksfor(STACKED_NAME, LINUX_HOST), speaker=LINUX_HOST, now_ns=NOW
    )
    with pytest.raises(AuthenticationError, match="is not the signer"):
        validate(chained(deleg), now_ns=NOW)


def test_tampered_delegation_is_refused() -> None:
    deleg = delegation()
    tampered = attrs.evolve(
        deleg, signature=deleg.signature[:-1] + bytes([deleg.signature[-1] ^ 1])
    )
    with pytest.raises(AuthenticationError):
        validate(chained(tampered), now_ns=NOW)


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
    proven = validate(long_chain(MAX_DELEGATION_DEPTH), now_ns=NOW)
    assert proven.message == MESSAGE
    with pytest.raises(AuthenticationError, match="longer than"):
        validate(long_chain(MAX_DELEGATION_DEPTH + 1), now_ns=NOW)
