"""Make the golden vectors of taonet.protected (run from the repository root):

    .venv/bin/python -m tests.vectors.protected_vectors

writes ``tests/vectors/protected_objects.json``:

* ``hand``: protected_objects messages built here byte by byte from the proto2 field
  layout of the original's protected_objects.proto (tag = number << 3 | wire type;
  strings, bytes and messages length-delimited; obj_epoch a varint), with what each
  decodes to or the error it must raise. Independent of any protobuf library.
* ``taonet``: what taonet writes for fixed values (encode must give these bytes
  exactly), the associated data of a protected object, and a protected object sealed
  under a fixed key (the nonce is random: the test checks that the stored blob still
  opens to the stored object).

The Go-written vectors are in ``protected_objects_go.json``, made by
``protected_go/main.go`` (see there). Regenerate only for a deliberate format change.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from taonet.protected import (
    KEY_TYPE,
    Node,
    ObjectId,
    SecretObject,
    Status,
    associated_data,
    encode_node,
    encode_object,
    encode_object_id,
    encode_protected_object,
    protect,
)

HERE: Final = Path(__file__).parent
PATH: Final = HERE / "protected_objects.json"
ROOT_KEY: Final = bytes(range(32))


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
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value % 2**64)


def oid(name: bytes, epoch: int | None = 1) -> bytes:
    return ld(1, name) + (b"" if epoch is None else vi(2, epoch))


def _obj(**fields: bytes) -> bytes:
    out = ld(1, oid(fields.pop("name", b"/a"), 1))
    for number, key in (
        (2, "type"),
        (3, "status"),
        (4, "not_before"),
        (5, "not_after"),
        (6, "value"),
    ):
        if key in fields:
            out += ld(number, fields[key])
    return out


def hand() -> list[dict[str, Any]]:
    ok = {"type": b"file", "status": b"active", "value": b"v"}
    k3 = {"name": "/acme/k", "epoch": 3}
    a1 = {"name": "/a", "epoch": 1, "type": "file", "status": "active", "value_hex": "76"}
    good: list[tuple[str, str, bytes, dict[str, Any]]] = [
        ("id", "object_id_message", oid(b"/acme/k", 3), k3),
        ("id_epoch_first", "object_id_message", vi(2, 3) + ld(1, b"/acme/k"), k3),
        ("id_repeated_last_wins", "object_id_message", oid(b"/x", 9) + oid(b"/acme/k", 3), k3),
        ("id_unknown_field_skipped", "object_id_message", oid(b"/acme/k", 3) + ld(15, b"x"), k3),
        (
            "object_rfc3339",
            "object_message",
            _obj(
                **ok,
                not_before=b"2026-11-28T08:00:00Z",
                not_after=b"2027-11-28T08:00:00.25+01:00",
            ),
            {
                **a1,
                "not_before": "2026-11-28T08:00:00Z",
                "not_after": "2027-11-28T07:00:00.25Z",
            },
        ),
        (
            "object_no_times",
            "object_message",
            _obj(**ok),
            {**a1, "not_before": None, "not_after": None},
        ),
        (
            "node_no_protector",
            "node_message",
            ld(1, oid(b"/acme/k")),
            {"protected": ["/acme/k", 1], "protector": None},
        ),
    ]
    bad: list[tuple[str, str, bytes, str]] = [
        ("id_no_epoch", "object_id_message", oid(b"/acme/k", None), "no epoch"),
        ("id_epoch_zero", "object_id_message", oid(b"/acme/k", 0), "outside"),
        ("id_epoch_negative", "object_id_message", oid(b"/acme/k", -5), "outside"),
        ("id_epoch_above_int32", "object_id_message", oid(b"/acme/k", 2**31), "outside"),
        ("id_epoch_2_32_plus_1", "object_id_message", oid(b"/acme/k", 2**32 + 1), "outside"),
        ("id_dotdot", "object_id_message", oid(b"/acme/../etc"), "'..' segment"),
        ("id_dot", "object_id_message", oid(b"/acme/./k"), "'.' segment"),
        ("id_empty_segment", "object_id_message", oid(b"/acme//k"), "empty segment"),
        ("id_trailing_slash", "object_id_message", oid(b"/acme/"), "empty segment"),
        ("id_relative", "object_id_message", oid(b"acme/k"), "start with"),
        ("id_nul", "object_id_message", oid(b"/acme/k\x00.txt"), "U+0000"),
        ("id_overlong", "object_id_message", oid(b"/" + b"k" * 1024), "over the"),
        ("id_not_utf8", "object_id_message", oid(b"/acme/\xc3\x28"), "not valid UTF-8"),
        ("id_missing_name", "object_id_message", vi(2, 1), "missing required"),
        ("id_truncated", "object_id_message", oid(b"/acme/k", 3)[:-3], "malformed"),
        ("object_no_status", "object_message", _obj(type=b"file", value=b"v"), "required"),
        (
            "object_unknown_status",
            "object_message",
            _obj(type=b"file", status=b"deleted"),
            "unknown status",
        ),
        ("object_bad_time", "object_message", _obj(**ok, not_after=b"2026-11-28"), "neither"),
        (
            "protected_object_no_blob",
            "protected_object_message",
            ld(1, oid(b"/a")) + ld(2, oid(b"/k")),
            "required",
        ),
    ]
    return [
        {"name": n, "message": m, "hex": data.hex(), "error": None, "expected": exp}
        for n, m, data, exp in good
    ] + [
        {"name": n, "message": m, "hex": data.hex(), "error": err, "expected": None}
        for n, m, data, err in bad
    ]


def taonet() -> dict[str, Any]:
    key = SecretObject(ObjectId("/server/master", 1), KEY_TYPE, Status.ACTIVE, None, None, ROOT_KEY)
    obj = SecretObject(
        ObjectId("/acme/key/us-zone/file-key", 3),
        "file",
        Status.ACTIVE,
        datetime(2026, 11, 28, 8, 0, tzinfo=UTC),
        datetime(2027, 11, 28, 8, 0, 0, 250000, tzinfo=UTC),
        b"the customer file key",
    )
    po = protect(obj, key)
    return {
        "object_id": encode_object_id(obj.id).hex(),
        "object": encode_object(obj).hex(),
        "node": encode_node(Node(obj.id, key.id)).hex(),
        "associated_data": associated_data(obj.id, key.id).hex(),
        "root_key_hex": ROOT_KEY.hex(),
        "protected_object": encode_protected_object(po).hex(),
    }


def main() -> None:
    data = {
        "description": (
            "taonet.protected vectors (tests/vectors/protected_vectors.py): 'hand' are "
            "protected_objects messages built byte by byte from the proto2 field layout "
            "with their expected error (null: decodes); 'taonet' are the bytes taonet "
            "writes for fixed values and a protected object sealed under root_key_hex"
        ),
        "hand": hand(),
        "taonet": taonet(),
    }
    PATH.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
