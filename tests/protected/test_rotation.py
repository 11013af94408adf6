"""plan_rotation / may_revoke: a new epoch, children rewrapped, the old epoch retired."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError
from taonet.protected import (
    MAX_EPOCH,
    ObjectId,
    ObjectStateError,
    ProtectedObject,
    ProtectedObjectError,
    Reason,
    SecretObject,
    Status,
    WrongKeyError,
    encode_object,
    encode_protected_object,
    may_revoke,
    plan_rotation,
    protect,
    recover,
    unprotect,
)
from tests.protected.conftest import DAY, NOW, key, leaf

LATER = NOW + timedelta(hours=1)


def family(
    n: int, parent: SecretObject
) -> tuple[SecretObject, list[SecretObject], list[ProtectedObject]]:
    """A key under ``parent`` with ``n`` file children."""
    k = key("/acme/key", fill=0x42)
    objs = [leaf(f"/acme/key/file{i}", value=f"secret {i}".encode()) for i in range(n)]
    return k, objs, [protect(o, k) for o in objs]


def test_plan_rotation(root: SecretObject) -> None:
    k, objs, children = family(5, root)
    before_key = copy.deepcopy(k)
    before_children = [encode_protected_object(c) for c in children]
    before_list = list(children)

    rot = plan_rotation(k, children, now=LATER, parent=root)

    # The inputs are as they were: the original's helpers changed copies and lost it,
    # or (the other way round) changed what the caller still held.
    assert k == before_key
    assert k.status is Status.ACTIVE
    assert children == before_list
    assert [encode_protected_object(c) for c in children] == before_children

    assert rot.new_key.id == ObjectId("/acme/key", 2)
    assert rot.new_key.status is Status.ACTIVE
    assert rot.new_key.type == k.type
    assert rot.new_key.value != k.value
    assert len(rot.new_key.value) == 32
    assert (rot.new_key.not_before, rot.new_key.not_after) == (LATER, LATER + 2 * DAY)
    assert rot.retired_old == k.with_status(Status.RETIRED)

    assert [c.protected_id for c in rot.rewrapped] == [o.id for o in objs]
    for child, obj in zip(rot.rewrapped, objs, strict=True):
        assert child.protector_id == rot.new_key.id
        assert unprotect(child, rot.new_key, now=LATER) == obj
        with pytest.raises(WrongKeyError):  # the old key no longer opens it
            unprotect(ProtectedObject(child.protected_id, k.id, child.blob), k)

    # The sealed copies for the store, under the parent.
    assert rot.new_key_protected is not None
    assert rot.retired_old_protected is not None
    assert unprotect(rot.new_key_protected, root) == rot.new_key
    assert unprotect(rot.retired_old_protected, root) == rot.retired_old


def test_after_rotation_the_chain_leads_through_the_new_epoch(root: SecretObject) -> None:
    k, objs, children = family(3, root)
    rot = plan_rotation(k, children, now=LATER, parent=root)
    assert rot.new_key_protected is not None
    table = {c.protected_id: c for c in rot.rewrapped}
    table[rot.new_key.id] = rot.new_key_protected
    for obj in objs:
        assert recover(obj.id, root, table.get, now=LATER) == obj


def test_may_revoke(root: SecretObject) -> None:
    k, _objs, children = family(3, root)
    rot = plan_rotation(k, children, now=LATER)
    assert not may_revoke(k.id, children)
    assert not may_revoke(k.id, [*rot.rewrapped[:2], children[2]])  # one child left behind
    assert may_revoke(k.id, rot.rewrapped)
    assert may_revoke(k.id, [])
    assert not may_revoke(rot.new_key.id, rot.rewrapped)


def test_the_old_key_is_retired_not_revoked_and_still_unwraps(root: SecretObject) -> None:
    # Between planning and applying, a reader holding the old rows still works.
    k, objs, children = family(2, root)
    rot = plan_rotation(k, children, now=LATER)
    assert rot.retired_old.status is Status.RETIRED
    assert unprotect(children[0], rot.retired_old, now=LATER) == objs[0]
    with pytest.raises(ObjectStateError):  # but it protects nothing new
        protect(leaf("/new"), rot.retired_old)


def test_given_value_and_validity(root: SecretObject) -> None:
    k, _objs, children = family(1, root)
    rot = plan_rotation(k, children, now=LATER, new_value=b"n" * 32, validity=timedelta(days=30))
    assert rot.new_key.value == b"n" * 32
    assert rot.new_key.not_after == LATER + timedelta(days=30)
    open_ended = plan_rotation(key("/k", not_after=None), [], now=LATER)
    assert open_ended.new_key.not_after is None
    assert open_ended.new_key.not_before == LATER


def test_an_expired_key_can_be_rotated(root: SecretObject) -> None:
    k = key("/acme/key", fill=0x42, not_after=NOW - DAY / 2)
    child = protect(leaf(), k)
    rot = plan_rotation(k, [child], now=NOW)
    assert unprotect(rot.rewrapped[0], rot.new_key, now=NOW) == leaf()


@pytest.mark.parametrize("status", [Status.INACTIVE, Status.RETIRED, Status.REVOKED])
def test_only_an_active_key_is_rotated(status: Status) -> None:
    # Rotating a retired epoch again would fork the key's history.
    with pytest.raises(ObjectStateError) as info:
        plan_rotation(key("/k", status=status), [], now=NOW)
    assert info.value.reason.value == status.value


def test_a_child_of_another_key(root: SecretObject) -> None:
    k, _objs, children = family(2, root)
    stranger = protect(leaf("/other"), root)
    with pytest.raises(WrongKeyError) as info:
        plan_rotation(k, [*children, stranger], now=NOW)
    assert info.value.reason is Reason.WRONG_PROTECTOR


def test_a_tampered_child_stops_the_plan(root: SecretObject) -> None:
    k, _objs, children = family(3, root)
    bad = bytearray(children[1].blob)
    bad[-1] ^= 1
    children[1] = ProtectedObject(children[1].protected_id, k.id, bytes(bad))
    with pytest.raises(WrongKeyError):
        plan_rotation(k, children, now=NOW)


def test_a_child_moved_from_another_id(root: SecretObject) -> None:
    k, _objs, children = family(2, root)
    moved = ProtectedObject(ObjectId("/acme/key/file9", 1), k.id, children[0].blob)
    with pytest.raises(WrongKeyError):
        plan_rotation(k, [children[1], moved], now=NOW)


def test_a_child_listed_twice(root: SecretObject) -> None:
    k, _objs, children = family(2, root)
    with pytest.raises(ValueError, match="twice"):
        plan_rotation(k, [*children, children[0]], now=NOW)


def test_the_last_epoch() -> None:
    with pytest.raises(ProtectedObjectError) as info:
        plan_rotation(key("/k", MAX_EPOCH), [], now=NOW)
    assert info.value.reason is Reason.EPOCH_EXHAUSTED
    assert plan_rotation(key("/k", MAX_EPOCH - 1), [], now=NOW).new_key.id.epoch == MAX_EPOCH


@pytest.mark.parametrize("value", [b"n" * 31, b"n" * 33, b"", b"\x42" * 32])
def test_bad_new_values(value: bytes) -> None:
    with pytest.raises(ValueError, match=r"bytes|differ"):
        plan_rotation(key("/k", fill=0x42), [], now=NOW, new_value=value)


def test_not_a_key() -> None:
    with pytest.raises(WrongKeyError) as info:
        plan_rotation(leaf(), [], now=NOW)
    assert info.value.reason is Reason.NOT_A_KEY


def test_an_unusable_parent(root: SecretObject) -> None:
    k, _objs, children = family(1, root)
    with pytest.raises(ObjectStateError):
        plan_rotation(k, children, now=NOW, parent=root.with_status(Status.RETIRED))


@given(
    n=st.integers(0, 6),
    grandchildren=st.integers(0, 3),
    rounds=st.integers(1, 3),
)
def test_rotating_again_and_again(n: int, grandchildren: int, rounds: int) -> None:
    """Rotate ``rounds`` times; children always open under the newest key, only direct
    children are rewrapped, grandchildren stay byte for byte, and the whole chain
    still recovers from the root."""
    root = key("/root", fill=0xEE)
    k, objs, children = family(n, root)
    # Child 0, when there is one, is itself a key protecting grandchildren.
    sub = key("/acme/key/sub", fill=0x33)
    grand = [leaf(f"/acme/key/sub/g{i}") for i in range(grandchildren)]
    grand_pos = [protect(g, sub) for g in grand]
    children = [protect(sub, k), *children]
    table = {po.protected_id: po for po in [protect(k, root), *children, *grand_pos]}
    grand_bytes = [encode_protected_object(p) for p in grand_pos]
    current = k
    for r in range(rounds):
        direct = [po for po in table.values() if po.protector_id == current.id]
        rot = plan_rotation(current, direct, now=LATER, parent=root)
        assert rot.new_key.id.epoch == r + 2
        assert rot.new_key_protected is not None
        assert rot.retired_old_protected is not None
        # Apply it as a store would, in one go.
        for po in (*rot.rewrapped, rot.new_key_protected):
            table[po.protected_id] = po
        table[current.id] = rot.retired_old_protected
        assert may_revoke(current.id, table.values())
        current = rot.new_key
    assert [encode_protected_object(table[g.id]) for g in grand] == grand_bytes
    for obj in [*objs, *grand, sub]:
        got = recover(obj.id, root, table.get, now=LATER)
        assert encode_object(got) == encode_object(obj)
    # Reading through the latest epoch of the key itself.
    assert recover(current.id, root, table.get, now=LATER) == current


def test_a_short_child_blob_is_a_codec_error(root: SecretObject) -> None:
    k, _objs, children = family(1, root)
    short = ProtectedObject(children[0].protected_id, k.id, children[0].blob[:20])
    with pytest.raises(CodecError, match="shorter"):
        plan_rotation(k, [short], now=NOW)
