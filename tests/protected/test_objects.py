"""ObjectId, SecretObject and their rules, table-driven."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from taonet.protected import (
    MAX_EPOCH,
    MAX_NAME_BYTES,
    ObjectId,
    ObjectStateError,
    ProtectedObject,
    Reason,
    SecretObject,
    Status,
    check_name,
)
from tests.protected.conftest import DAY, NOW, key, leaf

GOOD_NAMES = [
    "/a",
    "/acme/key/us-zone/customer-file-key",
    "/with space/and-dash_under.dot",
    "/ünïcödé/名前",
    "/..a/a../.a",
    "/" + "x" * (MAX_NAME_BYTES - 1),
]

BAD_NAMES = [
    ("", "start with '/'"),
    ("a/b", "start with '/'"),
    ("/", "empty segment"),
    ("/a/", "empty segment"),
    ("//a", "empty segment"),
    ("/a//b", "empty segment"),
    ("/a/./b", "'.' segment"),
    ("/a/../b", "'..' segment"),
    ("/..", "'..' segment"),
    ("/a/..", "'..' segment"),
    ("/a\x00b", "U+0000"),
    ("/a\nb", "U+000A"),
    ("/a\x7fb", "U+007F"),
    ("/a\x85b", "U+0085"),
    ("/a\u202eb", "U+202E"),  # right-to-left override
    ("/a\u200bb", "U+200B"),  # zero-width space
    ("/a\u2028b", "U+2028"),  # line separator
    ("/a\ud800b", "UTF-8"),  # lone surrogate: not encodable
    ("/" + "x" * MAX_NAME_BYTES, "over the"),
    ("/" + "é" * (MAX_NAME_BYTES // 2), "over the"),  # 1025 bytes in 513 characters
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name: str) -> None:
    assert check_name(name) == name
    assert ObjectId(name, 1).name == name


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
def test_bad_names(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        ObjectId(name, 1)


def test_name_type() -> None:
    with pytest.raises(TypeError):
        ObjectId(b"/a", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("epoch", [1, 2, MAX_EPOCH])
def test_good_epochs(epoch: int) -> None:
    assert ObjectId("/a", epoch).epoch == epoch


@pytest.mark.parametrize("epoch", [0, -1, -(2**31), MAX_EPOCH + 1, 2**63])
def test_bad_epochs(epoch: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        ObjectId("/a", epoch)


@pytest.mark.parametrize("epoch", [True, 1.0, "1", None])
def test_epoch_type(epoch: object) -> None:
    with pytest.raises(TypeError):
        ObjectId("/a", epoch)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "prefix", "under"),
    [
        ("/a/b", "/a", True),
        ("/a/b", "/a/", True),
        ("/a/b", "/", True),
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/b/", True),
        ("/a/b/c", "/a", True),
        ("/a/bc", "/a/b", False),
        ("/ab", "/a", False),
        ("/a", "/a/b", False),
        ("/b/a", "/a", False),
        # Prefixes that are not names cover nothing.
        ("/a/b", "", False),
        ("/a/b", "a", False),
        ("/a/b", "//", False),
        ("/a/b", "/a//", False),
        ("/a/b", "/a/../a", False),
        ("/a/b", "/a/.", False),
        ("/a\x00/b", "/a\x00", False),
    ],
)
def test_is_under(name: str, prefix: str, under: bool) -> None:
    if "\x00" in name:
        with pytest.raises(ValueError, match="U\\+0000"):
            ObjectId(name, 1)
        return
    assert ObjectId(name, 1).is_under(prefix) is under


def test_ids_order_and_str() -> None:
    assert sorted([ObjectId("/b", 1), ObjectId("/a", 2), ObjectId("/a", 1)]) == [
        ObjectId("/a", 1),
        ObjectId("/a", 2),
        ObjectId("/b", 1),
    ]
    assert str(ObjectId("/a/b", 7)) == "/a/b#7"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (Status.INACTIVE, Reason.INACTIVE),
        (Status.RETIRED, Reason.RETIRED),
        (Status.REVOKED, Reason.REVOKED),
    ],
)
def test_check_usable_status(status: Status, reason: Reason) -> None:
    obj = leaf(status=status)
    with pytest.raises(ObjectStateError) as info:
        obj.check_usable(NOW)
    assert info.value.reason is reason
    if status is Status.RETIRED:
        obj.check_usable(NOW, allow_retired=True)
    else:
        with pytest.raises(ObjectStateError):
            obj.check_usable(NOW, allow_retired=True)


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (NOW - DAY - timedelta(microseconds=1), Reason.NOT_YET_VALID),
        (NOW + DAY + timedelta(microseconds=1), Reason.EXPIRED),
        (NOW - DAY, None),
        (NOW + DAY, None),
        # The same instants in another zone.
        (
            (NOW + DAY + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-8))),
            Reason.EXPIRED,
        ),
        ((NOW + DAY).astimezone(timezone(timedelta(hours=5, minutes=30))), None),
    ],
)
def test_check_usable_window(now: datetime, reason: Reason | None) -> None:
    obj = key("/k")
    if reason is None:
        obj.check_usable(now)
        return
    with pytest.raises(ObjectStateError) as info:
        obj.check_usable(now)
    assert info.value.reason is reason


def test_check_usable_needs_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        key("/k").check_usable(NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("changes", "error", "why"),
    [
        ({"type": ""}, ValueError, "printable ASCII"),
        ({"type": "a b"}, ValueError, "printable ASCII"),
        ({"type": "x" * 65}, ValueError, "printable ASCII"),
        ({"type": "fïle"}, ValueError, "printable ASCII"),
        ({"type": 1}, TypeError, "str"),
        ({"status": "active"}, TypeError, "Status"),
        ({"not_before": NOW.replace(tzinfo=None)}, ValueError, "timezone-aware"),
        ({"not_after": "2026-01-01"}, TypeError, "datetime"),
        ({"not_before": NOW + DAY, "not_after": NOW}, ValueError, "after not_after"),
        ({"value": "text"}, TypeError, "bytes"),
        ({"value": b"x" * (1024 * 1024 + 1)}, ValueError, "over"),
        ({"id": ("/a", 1)}, TypeError, "ObjectId"),
    ],
)
def test_object_validators(changes: dict[str, Any], error: type[Exception], why: str) -> None:
    with pytest.raises(error, match=why):
        leaf(**changes)


def test_object_is_frozen_and_with_status_copies() -> None:
    obj = leaf()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        obj.status = Status.REVOKED  # type: ignore[misc]
    revoked = obj.with_status(Status.REVOKED)
    assert obj.status is Status.ACTIVE
    assert revoked.status is Status.REVOKED
    assert revoked.value == obj.value


def test_object_equality_covers_the_value() -> None:
    assert leaf() == leaf()
    assert leaf() != leaf(value=b"another value")
    assert hash(leaf()) == hash(leaf())


def test_is_key() -> None:
    assert key("/k").is_key
    assert not leaf().is_key
    assert not key("/k", value=b"x" * 16).is_key


def test_an_object_cannot_protect_itself() -> None:
    with pytest.raises(ValueError, match="itself"):
        ProtectedObject(ObjectId("/a", 1), ObjectId("/a", 1), b"blob")


def test_secret_object_positional_order() -> None:
    # The order the design names: id, type, status, not_before, not_after, value.
    obj = SecretObject(ObjectId("/a", 1), "file", Status.ACTIVE, None, None, b"v")
    assert (obj.type, obj.value) == ("file", b"v")


@pytest.mark.parametrize("code", range(0x100))
def test_every_latin1_character_by_its_category(code: int) -> None:
    # ASCII names take a fast path; both paths must refuse the same characters.
    import unicodedata

    ch = chr(code)
    forbidden = unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
    for name in (f"/a{ch}b", f"/é{ch}b"):  # the second is not ASCII
        if ch == "/":
            continue
        if forbidden:
            with pytest.raises(ValueError, match="forbidden character"):
                check_name(name)
        else:
            assert check_name(name) == name
