"""protect/unprotect, and the attacks on a single protected object."""

from __future__ import annotations

from taonet.protected import (
    SecretObject,
    protect,
    unprotect,
)
from tests.protected.conftest import NOW, leaf


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
