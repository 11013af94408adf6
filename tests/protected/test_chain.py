"""recover(): following protectors from a leaf to the root, and the attacks on a chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet.protected import (
    MAX_CHAIN_DEPTH,
    ChainCycleError,
    ChainTooLongError,
    MissingProtectorError,
    ObjectId,
    ObjectStateError,
    ProtectedObject,
    Reason,
    SecretObject,
    Status,
    WrongKeyError,
    protect,
    recover,
)
from tests.protected.conftest import DAY, NOW, key, leaf

Lookup = Callable[[ObjectId], ProtectedObject | None]


def store(*pos: ProtectedObject) -> Lookup:
    table = {po.protected_id: po for po in pos}
    return table.get


def chain(
    root: SecretObject, depth: int, target: SecretObject | None = None
) -> tuple[SecretObject, Lookup]:
    """root -> k1 -> ... -> k(depth-1) -> leaf: ``depth`` protected objects."""
    pos = []
    above = root
    for i in range(1, depth):
        k = key(f"/chain/k{i}", fill=i)
        pos.append(protect(k, above))
        above = k
    obj = target or leaf()
    pos.append(protect(obj, above))
    return obj, store(*pos)


def test_three_levels(root: SecretObject) -> None:
    obj, lookup = chain(root, 3)
    assert recover(obj.id, root, lookup, now=NOW) == obj


def test_the_root_itself(root: SecretObject) -> None:
    assert recover(root.id, root, store(), now=NOW) is root


@given(st.integers(min_value=1, max_value=MAX_CHAIN_DEPTH))
def test_any_depth_up_to_the_bound(depth: int) -> None:
    root = key("/root", fill=0xEE)
    obj, lookup = chain(root, depth)
    assert recover(obj.id, root, lookup, now=NOW) == obj


def test_a_chain_longer_than_the_bound(root: SecretObject) -> None:
    obj, lookup = chain(root, MAX_CHAIN_DEPTH + 1)
    calls: list[ObjectId] = []

    def counting(oid: ObjectId) -> ProtectedObject | None:
        calls.append(oid)
        return lookup(oid)

    with pytest.raises(ChainTooLongError) as info:
        recover(obj.id, root, counting, now=NOW)
    assert info.value.reason is Reason.CHAIN_TOO_LONG
    assert len(calls) == MAX_CHAIN_DEPTH  # stopped at the bound, did not walk on


def test_missing_protector(root: SecretObject) -> None:
    obj, lookup = chain(root, 3)

    def holes(oid: ObjectId) -> ProtectedObject | None:
        return None if oid.name == "/chain/k2" else lookup(oid)

    with pytest.raises(MissingProtectorError, match="/chain/k2#1") as info:
        recover(obj.id, root, holes, now=NOW)
    assert info.value.reason is Reason.MISSING_PROTECTOR


def test_lookup_answering_for_another_id(root: SecretObject) -> None:
    other = protect(leaf("/other"), root)
    with pytest.raises(MissingProtectorError, match="gave"):
        recover(ObjectId("/acme/x", 1), root, lambda _oid: other, now=NOW)


@pytest.mark.parametrize("length", [2, 3, 5])
def test_a_cycle(root: SecretObject, length: int) -> None:
    # A protects B protects ... protects A: none of them leads to the root. Without
    # the check the walk would go round until the depth bound (or forever).
    keys = [key(f"/cycle/k{i}", fill=i + 1) for i in range(length)]
    pos = [protect(keys[i], keys[(i + 1) % length]) for i in range(length)]
    with pytest.raises(ChainCycleError) as info:
        recover(keys[0].id, root, store(*pos), now=NOW)
    assert info.value.reason is Reason.CYCLE


def test_a_cycle_below_the_leaf(root: SecretObject) -> None:
    # leaf -> A -> B -> A.
    a, b = key("/a", fill=1), key("/b", fill=2)
    lookup = store(protect(leaf(), a), protect(a, b), protect(b, a))
    with pytest.raises(ChainCycleError):
        recover(leaf().id, root, lookup, now=NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": Status.INACTIVE}, Reason.INACTIVE),
        ({"status": Status.REVOKED}, Reason.REVOKED),
        ({"not_after": NOW - DAY / 2}, Reason.EXPIRED),
        ({"not_before": NOW + DAY / 2}, Reason.NOT_YET_VALID),
    ],
)
def test_an_unusable_key_in_the_middle(
    root: SecretObject, changes: dict[str, Any], reason: Reason
) -> None:
    middle = key("/mid", fill=3, **changes)
    lookup = store(protect(middle, root), protect(leaf(), key("/mid", fill=3)))
    with pytest.raises(ObjectStateError) as info:
        recover(leaf().id, root, lookup, now=NOW)
    assert info.value.reason is reason


def test_a_retired_key_in_the_middle_still_unwraps(root: SecretObject) -> None:
    middle = key("/mid", fill=3)
    lookup = store(protect(middle.with_status(Status.RETIRED), root), protect(leaf(), middle))
    assert recover(leaf().id, root, lookup, now=NOW) == leaf()


@pytest.mark.parametrize("status", [Status.INACTIVE, Status.REVOKED])
def test_an_unusable_root_or_leaf(root: SecretObject, status: Status) -> None:
    obj, lookup = chain(root, 2)
    with pytest.raises(ObjectStateError):
        recover(obj.id, root.with_status(status), lookup, now=NOW)
    bad_leaf, lookup = chain(root, 2, target=leaf(status=status))
    with pytest.raises(ObjectStateError):
        recover(bad_leaf.id, root, lookup, now=NOW)


def test_an_expired_leaf(root: SecretObject) -> None:
    obj, lookup = chain(root, 2, target=leaf(not_after=NOW - DAY))
    with pytest.raises(ObjectStateError) as info:
        recover(obj.id, root, lookup, now=NOW)
    assert info.value.reason is Reason.EXPIRED


def test_a_file_in_the_middle_is_not_a_key(root: SecretObject) -> None:
    # Someone stores a 'file' object as the protector of the leaf: it cannot unwrap.
    middle = leaf("/mid", value=b"m" * 32)
    blob_key = key("/mid", fill=ord("m"))
    lookup = store(protect(middle, root), protect(leaf(), blob_key))
    with pytest.raises(WrongKeyError) as info:
        recover(leaf().id, root, lookup, now=NOW)
    assert info.value.reason is Reason.NOT_A_KEY


def test_a_chain_under_another_root(root: SecretObject) -> None:
    other_root = key("/server/master", fill=0x11)  # same id, another value
    obj, lookup = chain(other_root, 3)
    with pytest.raises(WrongKeyError):
        recover(obj.id, root, lookup, now=NOW)
