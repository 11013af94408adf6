"""protect/unprotect, and the attacks on a single protected object."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, CodecError
from taonet.crypto import Crypter
from taonet.protected import (
    AAD_CONTEXT,
    ChainCycleError,
    Node,
    ObjectId,
    ObjectStateError,
    ProtectedObject,
    ProtectedObjectError,
    Reason,
    SecretObject,
    Status,
    WrongKeyError,
    associated_data,
    encode_node,
    encode_object,
    protect,
    unprotect,
)
from tests.protected.conftest import DAY, NOW, key, leaf


def test_round_trip(root: SecretObject) -> None:
    obj = leaf()
    po = protect(obj, root, now=NOW)
    assert po.protected_id == obj.id
    assert po.protector_id == root.id
    assert obj.value not in po.blob
    assert unprotect(po, root, now=NOW) == obj


def test_repr_hides_value(root: SecretObject) -> None:
    assert "file key" not in repr(leaf())
    assert root.value.hex() not in repr(root)
    assert "blob" not in repr(protect(leaf(), root))


def _reason(exc: pytest.ExceptionInfo[ProtectedObjectError]) -> Reason:
    return exc.value.reason


def test_the_blob_format_is_crypter_output_over_the_object_message(root: SecretObject) -> None:
    # Pin the documented format: Crypter blob (version 1, nonce, GCM) over
    # encode_object(obj), associated data = context || node_message{protected, protector}.
    obj = leaf()
    po = protect(obj, root)
    aad = associated_data(obj.id, root.id)
    assert aad == AAD_CONTEXT + encode_node(Node(obj.id, root.id))
    assert aad.startswith(b"taonet protected object v1\x00")
    assert po.blob[0] == 1
    assert len(po.blob) == 1 + 12 + len(encode_object(obj)) + 16
    assert Crypter(root.value).decrypt(po.blob, aad) == encode_object(obj)


def test_two_protections_differ(root: SecretObject) -> None:
    # A fresh nonce each time: sealing the same object twice gives two blobs.
    assert protect(leaf(), root).blob != protect(leaf(), root).blob


def test_blob_moved_to_another_protected_id(root: SecretObject) -> None:
    # The attacker with write access to the store copies A's blob into B's row.
    a = protect(leaf("/acme/a"), root)
    moved = ProtectedObject(ObjectId("/acme/b", 1), root.id, a.blob)
    with pytest.raises(WrongKeyError) as info:
        unprotect(moved, root)
    assert _reason(info) is Reason.WRONG_KEY


def test_blob_of_another_epoch(root: SecretObject) -> None:
    # An old epoch's blob replayed as the current epoch (a rollback of the value).
    old = protect(leaf(epoch=1), root)
    replayed = ProtectedObject(ObjectId(old.protected_id.name, 2), root.id, old.blob)
    with pytest.raises(WrongKeyError):
        unprotect(replayed, root)


def test_blob_moved_to_another_protector_with_the_same_key_value() -> None:
    # Two key ids holding the same bytes (a key copied to another name, or epoch 2
    # made with epoch 1's value): a blob under one is not accepted as under the other.
    k1 = key("/keys/one", fill=7)
    for other in (key("/keys/two", fill=7), key("/keys/one", 2, fill=7)):
        po = protect(leaf(), k1)
        moved = ProtectedObject(po.protected_id, other.id, po.blob)
        with pytest.raises(WrongKeyError) as info:
            unprotect(moved, other)
        assert _reason(info) is Reason.WRONG_KEY


def test_wrong_key_value_under_the_right_id(root: SecretObject) -> None:
    po = protect(leaf(), root)
    impostor = key(root.id.name, root.id.epoch, fill=0x55)
    with pytest.raises(WrongKeyError) as info:
        unprotect(po, impostor)
    assert _reason(info) is Reason.WRONG_KEY
    assert isinstance(info.value, AuthenticationError)


def test_protector_that_is_not_the_one_named(root: SecretObject) -> None:
    po = protect(leaf(), root)
    with pytest.raises(WrongKeyError) as info:
        unprotect(po, key("/other", fill=0xAA))
    assert _reason(info) is Reason.WRONG_PROTECTOR


def test_truncated_and_extended_blobs(root: SecretObject) -> None:
    po = protect(leaf(), root)
    variants = [po.blob[:n] for n in range(len(po.blob))]
    variants += [po.blob + b"\x00", po.blob + po.blob[-16:], b"\x02" + po.blob[1:]]
    for blob in variants:
        bad = ProtectedObject(po.protected_id, po.protector_id, blob)
        with pytest.raises((CodecError, WrongKeyError)):
            unprotect(bad, root)
    for i in range(len(po.blob)):  # every single flipped bit position's byte
        flipped = bytearray(po.blob)
        flipped[i] ^= 0x01
        bad = ProtectedObject(po.protected_id, po.protector_id, bytes(flipped))
        with pytest.raises((CodecError, WrongKeyError)):
            unprotect(bad, root)


def test_short_blob_is_a_codec_error(root: SecretObject) -> None:
    po = protect(leaf(), root)
    with pytest.raises(CodecError, match="shorter"):
        unprotect(ProtectedObject(po.protected_id, po.protector_id, po.blob[:28]), root)


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "file"},
        {"type": "aes128-gcm"},
        {"value": b"k" * 16},
        {"value": b"k" * 31},
        {"value": b"k" * 33},
        {"value": b""},
    ],
)
def test_protector_of_the_wrong_type_or_length(changes: dict[str, Any]) -> None:
    good = key("/k")
    bad = key("/k", **changes)
    with pytest.raises(WrongKeyError) as info:
        protect(leaf(), bad)
    assert _reason(info) is Reason.NOT_A_KEY
    po = protect(leaf(), good)
    with pytest.raises(WrongKeyError) as info:
        unprotect(po, bad)
    assert _reason(info) is Reason.NOT_A_KEY


@pytest.mark.parametrize("status", [Status.INACTIVE, Status.RETIRED, Status.REVOKED])
def test_only_an_active_key_protects(status: Status) -> None:
    with pytest.raises(ObjectStateError) as info:
        protect(leaf(), key("/k", status=status))
    assert _reason(info).value == status.value


def test_a_retired_key_still_unwraps_a_revoked_one_does_not() -> None:
    k = key("/k")
    po = protect(leaf(), k)
    assert unprotect(po, k.with_status(Status.RETIRED), now=NOW) == leaf()
    for status in (Status.REVOKED, Status.INACTIVE):
        with pytest.raises(ObjectStateError):
            unprotect(po, k.with_status(status), now=NOW)


def test_expired_and_not_yet_valid_protectors() -> None:
    k = key("/k")
    po = protect(leaf(), k)
    for now, reason in ((NOW + 2 * DAY, Reason.EXPIRED), (NOW - 2 * DAY, Reason.NOT_YET_VALID)):
        with pytest.raises(ObjectStateError) as info:
            protect(leaf(), k, now=now)
        assert _reason(info) is reason
        with pytest.raises(ObjectStateError) as info:
            unprotect(po, k, now=now)
        assert _reason(info) is reason


def test_a_key_cannot_protect_itself() -> None:
    k = key("/k")
    with pytest.raises(ChainCycleError):
        protect(k, k)


def test_a_blob_holding_another_object(root: SecretObject) -> None:
    # A blob that authenticates for id A but holds object B (made by whoever holds the
    # protector key): refused, the caller asked for A.
    a_id = ObjectId("/acme/a", 1)
    inner = encode_object(leaf("/acme/b"))
    blob = Crypter(root.value).encrypt(inner, associated_data(a_id, root.id))
    with pytest.raises(CodecError, match="holds"):
        unprotect(ProtectedObject(a_id, root.id, blob), root)


def test_a_blob_holding_garbage(root: SecretObject) -> None:
    a_id = ObjectId("/acme/a", 1)
    blob = Crypter(root.value).encrypt(b"\xff\xff\xff", associated_data(a_id, root.id))
    with pytest.raises(CodecError):
        unprotect(ProtectedObject(a_id, root.id, blob), root)


@given(st.binary(max_size=200))
def test_whatever_an_authentic_blob_holds_is_an_object_or_a_codec_error(inner: bytes) -> None:
    # The key holder can seal any bytes; opening them decodes or raises CodecError only.
    root = key("/server/master", fill=0xAA)
    a_id = ObjectId("/acme/a", 1)
    blob = Crypter(root.value).encrypt(inner, associated_data(a_id, root.id))
    try:
        obj = unprotect(ProtectedObject(a_id, root.id, blob), root)
    except CodecError:
        return
    assert obj.id == a_id
