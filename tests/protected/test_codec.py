"""Codecs of the protected_objects messages: round trips, arbitrary bytes, hand-made attacks."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from taonet import CodecError
from taonet.protected import (
    MAX_NAME_BYTES,
    Node,
    ObjectId,
    ProtectedObject,
    SecretObject,
    Status,
    decode_node,
    decode_node_store,
    decode_object,
    decode_object_id,
    decode_object_store,
    decode_protected_object,
    decode_protected_object_store,
    encode_node,
    encode_node_store,
    encode_object,
    encode_object_id,
    encode_object_store,
    encode_protected_object,
    encode_protected_object_store,
    format_time,
    parse_time,
)
from tests.protected.strategies import ids, nodes, objects, protected_objects, times

DECODERS: list[Callable[[bytes], Any]] = [
    decode_object_id,
    decode_object,
    decode_node,
    decode_protected_object,
    decode_object_store,
    decode_node_store,
    decode_protected_object_store,
]


# -- hand-made protobuf ---------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field: int, value: int) -> bytes:
    """A varint field (negative int32 as Go writes it: 10 bytes, two's complement)."""
    return varint(field << 3) + varint(value % 2**64)


def id_bytes(name: bytes, epoch: int | None = 1) -> bytes:
    return ld(1, name) + (b"" if epoch is None else vi(2, epoch))


def object_bytes(
    name: bytes = b"/a",
    epoch: int | None = 1,
    *,
    type_: bytes | None = b"file",
    status: bytes | None = b"active",
    not_before: bytes | None = None,
    not_after: bytes | None = None,
    value: bytes | None = b"v",
) -> bytes:
    out = ld(1, id_bytes(name, epoch))
    for number, field in ((2, type_), (3, status), (4, not_before), (5, not_after), (6, value)):
        if field is not None:
            out += ld(number, field)
    return out


# -- round trips ----------------------------------------------------------------------


@given(ids)
def test_object_id_round_trip(oid: ObjectId) -> None:
    data = encode_object_id(oid)
    assert decode_object_id(data) == oid
    assert data == id_bytes(oid.name.encode(), oid.epoch)  # the proto2 layout, by hand


@given(objects())
def test_object_round_trip(obj: SecretObject) -> None:
    assert decode_object(encode_object(obj)) == obj


@given(nodes)
def test_node_round_trip(node: Node) -> None:
    assert decode_node(encode_node(node)) == node


@given(protected_objects)
def test_protected_object_round_trip(po: ProtectedObject) -> None:
    data = encode_protected_object(po)
    assert decode_protected_object(data) == po
    expected = (
        ld(1, id_bytes(po.protected_id.name.encode(), po.protected_id.epoch))
        + ld(2, id_bytes(po.protector_id.name.encode(), po.protector_id.epoch))
        + ld(3, po.blob)
    )
    assert data == expected


@given(
    st.lists(objects(), max_size=5),
    st.lists(nodes, max_size=5),
    st.lists(protected_objects, max_size=5),
)
def test_store_round_trips(
    objs: list[SecretObject], ns: list[Node], pos: list[ProtectedObject]
) -> None:
    assert decode_object_store(encode_object_store(objs)) == tuple(objs)
    assert decode_node_store(encode_node_store(ns)) == tuple(ns)
    assert decode_protected_object_store(encode_protected_object_store(pos)) == tuple(pos)


def test_object_fields_by_hand() -> None:
    obj = SecretObject(
        ObjectId("/a", 1),
        "file",
        Status.ACTIVE,
        datetime(2026, 1, 2, 3, 4, 5, 600000, UTC),
        None,
        b"v",
    )
    assert encode_object(obj) == object_bytes(not_before=b"2026-01-02T03:04:05.6Z")


# -- arbitrary bytes ------------------------------------------------------------------


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@given(data=st.binary(max_size=300))
@example(data=b"\x0a\x80\x80\x80\x80\x10")  # a length far past the end
@example(data=b"\x0a\x00")  # an empty name
@example(data=b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")  # an overlong varint
def test_arbitrary_bytes_raise_codec_error_only(
    decode: Callable[[bytes], Any], data: bytes
) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


@given(objects(), st.data())
def test_mutated_objects_raise_codec_error_only(obj: SecretObject, data: st.DataObject) -> None:
    raw = bytearray(encode_object(obj))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CodecError):
        decode_object(bytes(raw))


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("data", ["text", None, 7, [1]])
def test_non_bytes_raise_codec_error(decode: Callable[[Any], Any], data: object) -> None:
    with pytest.raises(CodecError, match="expected bytes"):
        decode(data)


# -- hand-made attacks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (b"/a/../b", "'..' segment"),
        (b"/a/./b", "'.' segment"),
        (b"/a//b", "empty segment"),
        (b"/a/", "empty segment"),
        (b"", "start with"),
        (b"a", "start with"),
        (b"/a\x00b", "U+0000"),
        (b"/a\x1bb", "U+001B"),
        (b"/" + b"x" * MAX_NAME_BYTES, "over the"),
        (b"/\xff\xfe", "not valid UTF-8"),
        (b"/\xc0\xaf", "not valid UTF-8"),  # overlong '/'
        (b"/\xed\xa0\x80", "not valid UTF-8"),  # an encoded surrogate
        (b"/a\xe2\x80", "not valid UTF-8"),  # truncated sequence
    ],
)
def test_bad_names_in_the_proto(name: bytes, why: str) -> None:
    for decode, data in (
        (decode_object_id, id_bytes(name)),
        (decode_object, object_bytes(name)),
        (decode_node, ld(1, id_bytes(name))),
        (decode_protected_object, ld(1, id_bytes(b"/ok")) + ld(2, id_bytes(name)) + ld(3, b"b")),
    ):
        with pytest.raises(CodecError, match=re.escape(why)):
            decode(data)


@pytest.mark.parametrize(
    ("epoch", "why"),
    [
        (None, "no epoch"),
        (0, "epoch 0 "),
        (-1, "outside"),  # Go's int32 -1: ten bytes
        (-(2**31), "outside"),
        (2**31, "outside"),
        (2**32 + 1, "outside"),  # an int32 reader would cut this down to 1
        (2**64 - 1, "outside"),
    ],
)
def test_bad_epochs_in_the_proto(epoch: int | None, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        decode_object_id(id_bytes(b"/a", epoch))
    with pytest.raises(CodecError, match=why):
        decode_object(object_bytes(epoch=epoch))


def test_largest_epoch() -> None:
    assert decode_object_id(id_bytes(b"/a", 2**31 - 1)) == ObjectId("/a", 2**31 - 1)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"type_": None}, "required"),
        ({"status": None}, "required"),
        ({"status": b"Active"}, "unknown status"),
        ({"status": b"destroyed"}, "unknown status"),
        ({"status": b"\xff"}, "UTF-8"),
        ({"type_": b""}, "printable"),
        ({"type_": b"a\x00"}, "printable"),
        ({"not_before": b"yesterday"}, "neither"),
        ({"not_after": b"\xff"}, "UTF-8"),
        ({"not_before": b"2026-01-02T00:00:00Z", "not_after": b"2026-01-01T00:00:00Z"}, "after"),
        ({"value": b"x" * (1024 * 1024 + 1)}, "over"),
    ],
)
def test_bad_object_fields(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(CodecError, match=why):
        decode_object(object_bytes(**fields))


def test_missing_id() -> None:
    with pytest.raises(CodecError, match="required"):
        decode_object(ld(2, b"file"))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (ld(1, id_bytes(b"/a")) + ld(3, b"blob"), "required"),
        (ld(1, id_bytes(b"/a")) + ld(2, id_bytes(b"/k")), "required"),
        (ld(1, id_bytes(b"/a")) + ld(2, id_bytes(b"/a")) + ld(3, b"b"), "itself"),
        (ld(2, id_bytes(b"/k")) + ld(3, b"b"), "required"),
    ],
)
def test_bad_protected_objects(data: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        decode_protected_object(data)


def test_oversized_inputs_are_refused_before_parsing() -> None:
    with pytest.raises(CodecError, match="limit"):
        decode_object_id(b"\x00" * 5000)
    with pytest.raises(CodecError, match="limit"):
        decode_object(b"\x00" * (1024 * 1024 + 8193))


def test_a_store_with_one_bad_entry() -> None:
    good = ld(1, object_bytes())
    bad = ld(1, object_bytes(b"/a/../b"))
    assert len(decode_object_store(good + good)) == 2
    with pytest.raises(CodecError):
        decode_object_store(good + bad)


# -- times ----------------------------------------------------------------------------


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Go's Time.String(): named zones, the monotonic reading, unnamed zones.
        ("2016-03-01 10:20:30.123456789 -0800 PST", _utc(2016, 3, 1, 18, 20, 30, 123456)),
        ("2016-03-01 10:20:30 +0000 UTC", _utc(2016, 3, 1, 10, 20, 30)),
        ("2016-03-01 10:20:30.5 +0000 UTC m=+0.012400000", _utc(2016, 3, 1, 10, 20, 30, 500000)),
        ("2016-03-01 10:20:30.5 +0000 UTC m=-3.000000001", _utc(2016, 3, 1, 10, 20, 30, 500000)),
        ("2016-03-01 10:20:30 +0530 +0530", _utc(2016, 3, 1, 4, 50, 30)),
        ("2016-03-01 10:20:30 -0300 -03", _utc(2016, 3, 1, 13, 20, 30)),
        ("2016-03-01 10:20:30 +0100 CET m=+31536000.000000001", _utc(2016, 3, 1, 9, 20, 30)),
        ("0001-01-01 00:00:00 +0000 UTC", _utc(1, 1, 1)),  # Go's zero time
        # RFC 3339.
        ("2026-11-28T08:38:11Z", _utc(2026, 11, 28, 8, 38, 11)),
        ("2026-11-28T08:38:11.5+01:00", _utc(2026, 11, 28, 7, 38, 11, 500000)),
        ("2026-11-28t08:38:11.000000001z", _utc(2026, 11, 28, 8, 38, 11)),
        ("2026-11-28T08:38:11-00:30", _utc(2026, 11, 28, 9, 8, 11)),
    ],
)
def test_time_layouts(text: str, expected: datetime) -> None:
    value = parse_time(text)
    assert value == expected
    assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2016-03-01",
        "2016-03-01 10:20:30 -0800",  # no zone name
        "2016-03-01 10:20:30 PST",  # no offset
        "2016-03-01 10:20:30 +0530 +0531",  # the unnamed zone disagrees with the offset
        "2016-03-01 10:20:30 -0300 +03",
        "2016-03-01 10:20:30.1234567890 +0000 UTC",  # ten digits
        "2016-03-01 10:20:30 +0000 UTC m=+abc",
        "2016-03-01 10:20:30 +0000 UTC trailing",
        "2016-02-30 10:20:30 +0000 UTC",
        "2016-03-01 24:00:00 +0000 UTC",
        "2016-03-01 10:20:30 +2400 X",
        "2016-03-01 10:20:30 +0060 X",
        "0001-01-01 00:00:00 +0100 X",  # before year 1 in UTC
        "9999-12-31 23:00:00 -0100 X",  # after year 9999 in UTC
        "2026-11-28T08:38:11",  # RFC 3339 needs a zone
        "2026-11-28T08:38:11+0100",
        "\uff12\uff10\uff12\uff16-11-28T08:38:11Z",  # fullwidth digits (\d without re.ASCII)
        "2016-03-01 10:20:30 +0000 UTC m=+\u0661.0",  # an Arabic-Indic digit
        "2026-11-28T08:38:11Z" + " " * 100,
    ],
)
def test_bad_times(text: str) -> None:
    with pytest.raises(CodecError):
        parse_time(text)


def test_sub_microsecond_digits_never_widen_the_window() -> None:
    text = "2016-03-01 10:20:30.123456001 +0000 UTC"
    assert parse_time(text) == _utc(2016, 3, 1, 10, 20, 30, 123456)
    assert parse_time(text, round_up=True) == _utc(2016, 3, 1, 10, 20, 30, 123457)
    obj = decode_object(
        object_bytes(not_before=text.encode(), not_after=text.encode().replace(b"30.", b"40."))
    )
    assert obj.not_before == _utc(2016, 3, 1, 10, 20, 30, 123457)
    assert obj.not_after == _utc(2016, 3, 1, 10, 20, 40, 123456)


@given(times)
def test_format_parse_round_trip(value: datetime) -> None:
    text = format_time(value)
    assert text.endswith("Z")
    assert parse_time(text) == value


def test_format_time() -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    assert format_time(datetime(2026, 1, 2, 8, 0, tzinfo=tz)) == "2026-01-02T02:30:00Z"
    assert format_time(_utc(2026, 1, 2, 3, 4, 5, 120000)) == "2026-01-02T03:04:05.12Z"
    assert format_time(_utc(5, 1, 2)) == "0005-01-02T00:00:00Z"


@given(ids, ids)
def test_associated_data_is_the_node_message(a: ObjectId, b: ObjectId) -> None:
    # associated_data encodes the node by hand, for speed; it must stay these bytes.
    from taonet.protected import AAD_CONTEXT, associated_data

    assert associated_data(a, b) == AAD_CONTEXT + encode_node(Node(a, b))
