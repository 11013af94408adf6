"""Operator credentials (pure): every field bound, the window, the signer, the server.

Each test makes a credential as the CLI does and attacks it as someone holding the
bytes would: edits a field after signing, moves it to another server, signs with
another key, shifts the window, appends or cuts bytes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError, auth
from taonet.crypto import Signer
from taonet.secrets import (
    MAX_OPERATOR_BYTES,
    CreateRequest,
    DeleteRequest,
    GrantRequest,
    ListRequest,
    OperatorError,
    OperatorReason,
    ReadRequest,
    RotateRequest,
    WatchRequest,
    WriteRequest,
    decode_request,
    encode_request,
    sign_operator_request,
    verify_operator_request,
)
from taonet.secrets._operator import (
    CLOCK_SKEW_NS,
    MAX_WINDOW_NS,
    NONCE_BYTES,
    decode_credential,
)

NOW = 1_800_000_000 * 10**9
POLICY = Signer.generate()
SERVER = auth.key_principal(Signer.generate().public_key_der()).extend(
    auth.SubPrin((auth.PrinExt("Program", (auth.Bytes(b"\x01" * 32),)),))
)
OTHER_SERVER = auth.key_principal(Signer.generate().public_key_der())
STORE = bytes(range(16))
OTHER_STORE = bytes(range(1, 17))

REQUESTS = [
    ReadRequest("/app/db/password"),
    ReadRequest("/app/db/password", 3),
    WriteRequest("/app/db/password", b"hunter2"),
    CreateRequest("/app/key", type="aes256-gcm"),
    CreateRequest("/app/x", b"v", "bytes", "/app/key"),
    DeleteRequest("/app/x", 2),
    ListRequest("/app", "/app/a", 10),
    RotateRequest("/app/key"),
    WatchRequest("/app", 5),
    GrantRequest("ext.Program([0a0b])", ("Read", "Write"), "/app"),
    GrantRequest("ext.Program([0a0b])", ("Read",), "/app", revoke=True),
]


def signed(request: object, **kw: object) -> Any:
    options: dict[str, object] = {"server": SERVER, "store": STORE, "now_ns": NOW}
    options.update(kw)
    return sign_operator_request(request, POLICY, **options)  # type: ignore[arg-type]


def verify(
    request: object, *, now: int = NOW, server: auth.Prin = SERVER, store: bytes = STORE
) -> Any:
    return verify_operator_request(
        request,  # type: ignore[arg-type]
        policy_key=POLICY.verifier(),
        server=server,
        store=store,
        now_ns=now,
    )


def refused(reason: OperatorReason, request: object, **kw: object) -> OperatorError:
    with pytest.raises(OperatorError) as info:
        verify(request, **kw)  # type: ignore[arg-type]
    assert info.value.reason is reason, info.value
    assert isinstance(info.value, AuthenticationError)
    return info.value


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_signed_request_verifies_and_survives_the_wire(request_: object) -> None:
    req = signed(request_)
    claim = verify(req)
    assert claim.server == SERVER
    assert claim.store == STORE
    assert len(claim.nonce) == NONCE_BYTES
    method, body = encode_request(req)
    assert verify(decode_request(method, body)) == claim


def test_each_credential_has_a_fresh_nonce() -> None:
    nonces = {verify(signed(REQUESTS[0])).nonce for _ in range(50)}
    assert len(nonces) == 50


# Every field of every request, edited after signing: the credential no longer covers it.
EDITS = [
    (ReadRequest("/app/a"), {"name": "/app/b"}),
    (ReadRequest("/app/a", 1), {"epoch": 2}),
    (ReadRequest("/app/a"), {"epoch": 1}),
    (WriteRequest("/app/a", b"x"), {"value": b"y"}),
    (WriteRequest("/app/a", b"x"), {"epoch": 4}),
    (CreateRequest("/app/a", b"x"), {"type": "text"}),
    (CreateRequest("/app/a", b"x"), {"protector": "/app/key"}),
    (CreateRequest("/app/a", b"x"), {"value": b"y"}),
    (DeleteRequest("/app/a", 1), {"epoch": None}),
    (ListRequest("/app"), {"prefix": "/"}),
    (ListRequest("/app"), {"limit": 1000}),
    (RotateRequest("/app/k"), {"value": b"\x00" * 32}),
    (WatchRequest("/app"), {"prefix": "/"}),
    (GrantRequest("ext.Program([0a0b])", ("Read",), "/app"), {"ops": ("Read", "Own")}),
    (GrantRequest("ext.Program([0a0b])", ("Read",), "/app"), {"name": "/"}),
    (GrantRequest("ext.Program([0a0b])", ("Read",), "/app"), {"principal": "ext.Program([0c])"}),
    (GrantRequest("ext.Program([0a0b])", ("Read",), "/app", revoke=True), {"revoke": False}),
]


@pytest.mark.parametrize(("request_", "edit"), EDITS)
def test_a_field_edited_after_signing_is_refused(request_: object, edit: dict[str, object]) -> None:
    req = signed(request_)
    forged = attrs.evolve(req, **edit)
    refused(OperatorReason.BAD_SIGNATURE, forged)


def test_a_credential_moved_to_another_operation_is_refused() -> None:
    read = signed(ReadRequest("/app/a"))
    # The same credential on a Delete of the same name.
    refused(OperatorReason.BAD_SIGNATURE, DeleteRequest("/app/a", operator=read.operator))


def test_another_key_is_refused_as_not_the_policy_key() -> None:
    other = Signer.generate()
    req = sign_operator_request(
        ReadRequest("/app/a"), other, server=SERVER, store=STORE, now_ns=NOW
    )
    refused(OperatorReason.WRONG_SIGNER, req)


def test_another_key_claiming_to_be_the_policy_key_is_refused() -> None:
    # A forger copies the policy key's SPKI into the credential but signs with its own.
    other = Signer.generate()
    req = sign_operator_request(
        ReadRequest("/app/a"), other, server=SERVER, store=STORE, now_ns=NOW
    )
    _claim, head, signature = decode_credential(req.operator)  # type: ignore[arg-type]
    key = other.public_key_der()
    spki = POLICY.public_key_der()
    forged_head = head.replace(
        len(key).to_bytes(4, "big") + key, len(spki).to_bytes(4, "big") + spki
    )
    assert forged_head != head
    forged = forged_head + len(signature).to_bytes(4, "big") + signature
    refused(OperatorReason.BAD_SIGNATURE, attrs.evolve(req, operator=forged))


def test_a_credential_for_another_server_is_refused() -> None:
    req = signed(ReadRequest("/app/a"), server=OTHER_SERVER)
    error = refused(OperatorReason.WRONG_SERVER, req)
    assert "another server" in str(error)


def test_a_credential_for_another_store_of_the_same_server_is_refused() -> None:
    # Another instance of the same program (same principal) over another database: a
    # credential made for one is refused by the other, and accepted by its own.
    req = signed(ReadRequest("/app/a"), store=OTHER_STORE)
    error = refused(OperatorReason.WRONG_STORE, req)
    assert "another store" in str(error)
    assert OTHER_STORE.hex() in str(error)
    assert verify(req, store=OTHER_STORE).store == OTHER_STORE


def test_the_store_id_cannot_be_edited_after_signing() -> None:
    req = signed(ReadRequest("/app/a"), store=OTHER_STORE)
    raw = req.operator
    assert raw is not None
    assert raw.count(OTHER_STORE) == 1
    moved = raw.replace(OTHER_STORE, STORE)
    refused(OperatorReason.BAD_SIGNATURE, attrs.evolve(req, operator=moved))


def test_a_version_1_credential_without_a_store_id_is_refused() -> None:
    # The previous format: magic v1, then the server, the nonce... (no store id), its
    # signature made under the v1 context. It is never read as one for any store.
    request = ReadRequest("/app/a")
    v1_context = "taonet secret service operator request v1"
    key = POLICY.public_key_der()
    head = (
        b"taonet operator v1\0"
        + _lp(auth.encode(SERVER))
        + b"\x07" * NONCE_BYTES
        + NOW.to_bytes(8, "big")
        + (NOW + 60 * 10**9).to_bytes(8, "big")
        + _lp(key)
    )
    signature = POLICY.sign(head + _lp(_payload(request)), v1_context)
    old = attrs.evolve(request, operator=head + _lp(signature))
    error = refused(OperatorReason.MALFORMED, old)
    assert "older version" in str(error)
    with pytest.raises(CodecError):
        decode_credential(head + _lp(signature))
    # Given a v2 magic (and a store id spliced in), its v1 signature does not verify.
    spliced = (
        b"taonet operator v2\0"
        + _lp(auth.encode(SERVER))
        + STORE
        + head[len(b"taonet operator v1\0") + 4 + len(auth.encode(SERVER)) :]
    )
    refused(OperatorReason.BAD_SIGNATURE, attrs.evolve(request, operator=spliced + _lp(signature)))


def test_the_window() -> None:
    req = signed(ReadRequest("/app/a"))
    verify(req, now=NOW + 60 * 10**9)  # the last moment of a 60 s window
    refused(OperatorReason.EXPIRED, req, now=NOW + 60 * 10**9 + 1)
    refused(OperatorReason.EXPIRED, req, now=NOW + 3600 * 10**9)
    verify(req, now=NOW - CLOCK_SKEW_NS)  # a server clock behind by the skew allowed
    refused(OperatorReason.NOT_YET_VALID, req, now=NOW - CLOCK_SKEW_NS - 1)
    future = signed(ReadRequest("/app/a"), now_ns=NOW + 120 * 10**9)
    refused(OperatorReason.NOT_YET_VALID, future)


def test_a_window_longer_than_allowed_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        signed(ReadRequest("/app/a"), window_ns=MAX_WINDOW_NS + 1)
    # Made by hand (the signer refuses): a valid signature over a 1-day window.
    req = signed(ReadRequest("/app/a"), window_ns=MAX_WINDOW_NS)
    claim, head, _ = decode_credential(req.operator)
    start = head.index(claim.nonce) + NONCE_BYTES
    long_head = (
        head[:start]
        + NOW.to_bytes(8, "big")
        + (NOW + 86400 * 10**9).to_bytes(8, "big")
        + head[start + 16 :]
    )
    payload = long_head + _lp(_payload(ReadRequest("/app/a")))
    from taonet.secrets import OPERATOR_CONTEXT

    signature = POLICY.sign(payload, OPERATOR_CONTEXT)
    long_req = attrs.evolve(req, operator=long_head + _lp(signature))
    refused(OperatorReason.WINDOW_TOO_LONG, long_req)


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _payload(request: object) -> bytes:
    from taonet.secrets import operator_payload

    return operator_payload(request)  # type: ignore[arg-type]


def test_without_a_credential() -> None:
    refused(OperatorReason.MALFORMED, ReadRequest("/app/a"))


def test_appended_and_cut_bytes_are_malformed() -> None:
    req = signed(ReadRequest("/app/a"))
    raw = req.operator
    refused(OperatorReason.MALFORMED, attrs.evolve(req, operator=raw + b"\0"))
    for cut in (0, 1, 10, len(raw) // 2, len(raw) - 1):
        refused(OperatorReason.MALFORMED, attrs.evolve(req, operator=raw[:cut]))


@given(st.binary(max_size=600))
def test_any_bytes_decode_to_a_claim_or_a_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_credential(data)


@given(st.integers(0, 2000), st.integers(0, 255))
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    req = signed(ReadRequest("/app/a"))
    raw = bytearray(req.operator)
    position %= len(raw)
    if flip == 0 or raw[position] ^ flip == raw[position]:
        return
    raw[position] ^= flip
    with pytest.raises(OperatorError):
        verify(attrs.evolve(req, operator=bytes(raw)))


def test_stored_grant_proofs_check_the_signature_alone() -> None:
    req = signed(GrantRequest("ext.Program([0a0b])", ("Read",), "/app"))
    # Long after the window, on another replica: the signature still says it.
    claim = verify_operator_request(
        req,
        policy_key=POLICY.verifier(),
        server=None,
        store=STORE,
        now_ns=None,
    )
    assert claim.server == SERVER
    with pytest.raises(OperatorError):
        verify_operator_request(
            attrs.evolve(req, name="/"),
            policy_key=POLICY.verifier(),
            server=None,
            store=STORE,
            now_ns=None,
        )
    # A proof for another store (copied from another database) is not this store's.
    with pytest.raises(OperatorError) as info:
        verify_operator_request(
            req, policy_key=POLICY.verifier(), server=None, store=OTHER_STORE, now_ns=None
        )
    assert info.value.reason is OperatorReason.WRONG_STORE


def test_credentials_stay_under_the_bound() -> None:
    long_server = SERVER.extend(
        auth.SubPrin(tuple(auth.PrinExt("X", (auth.Bytes(b"\xff" * 64),)) for _ in range(20)))
    )
    req = signed(ReadRequest("/app/a"), server=long_server)
    assert len(req.operator) < MAX_OPERATOR_BYTES
    verify(req, server=long_server)
