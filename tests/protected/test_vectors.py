"""Golden vectors: messages as the original (Go) writes them, made by hand, and as taonet writes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest

from taonet import CodecError
from taonet.protected import (
    KEY_TYPE,
    Node,
    ObjectId,
    SecretObject,
    Status,
    associated_data,
    decode_node,
    decode_node_store,
    decode_object,
    decode_object_id,
    decode_object_store,
    decode_protected_object,
    decode_protected_object_store,
    encode_node,
    encode_object,
    encode_object_id,
    parse_time,
    unprotect,
)
from tests.vectors import protected_vectors
from tests.vectors.protected_vectors import HERE

GO: Final = json.loads((HERE / "protected_objects_go.json").read_text())
OURS: Final = json.loads((HERE / "protected_objects.json").read_text())
DECODERS: Final[dict[str, Callable[[bytes], Any]]] = {
    "object_id_message": decode_object_id,
    "object_message": decode_object,
    "node_message": decode_node,
    "protected_object_message": decode_protected_object,
    "object_store_message": decode_object_store,
    "node_store_message": decode_node_store,
    "protected_object_store_message": decode_protected_object_store,
}
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def go_time(t: dict[str, Any], *, round_up: bool) -> datetime:
    """What Go's (seconds, nanoseconds) is in microseconds, rounded as the codec rounds."""
    micros, rest = divmod(t["nanoseconds"], 1000)
    if rest and round_up:
        micros += 1
    return EPOCH + timedelta(seconds=t["unix_seconds"], microseconds=micros)


def entries(data: dict[str, Any], key: str) -> list[Any]:
    return [pytest.param(e, id=e["name"]) for e in data[key]]


def test_the_go_file_has_what_the_tests_need() -> None:
    texts = [t["text"] for e in GO["entries"] for t in e.get("times", {}).values()]
    assert any(re.search(r" m=\+\d+\.\d{9}$", t) for t in texts)  # a monotonic reading
    assert any(re.search(r" ([+-]\d{4}) \1$", t) for t in texts)  # an unnamed zone
    assert any(t.endswith(" -03") for t in texts)  # a numeric tzdata name
    assert any(re.search(r"\.\d{9} ", t) for t in texts)  # nanoseconds


@pytest.mark.parametrize("entry", entries(GO, "entries"))
def test_go_written_messages(entry: dict[str, Any]) -> None:
    data = bytes.fromhex(entry["hex"])
    decode = DECODERS[entry["message"]]
    if entry.get("error"):
        with pytest.raises(CodecError, match=entry["error"]):
            decode(data)
        return
    value = decode(data)
    expected = entry["object"]
    if entry["message"] == "object_message":
        assert isinstance(value, SecretObject)
        assert value.id == ObjectId(expected["name"], expected["epoch"])
        assert value.type == expected["type"]
        assert value.status is Status(expected["status"])
        assert value.value == bytes.fromhex(expected["value_hex"])
        times = entry["times"]
        for field in ("not_before", "not_after"):
            assert times[field]["text"].encode() in data  # Go's own text is in the message
        assert value.not_before == go_time(times["not_before"], round_up=True)
        assert value.not_after == go_time(times["not_after"], round_up=False)
        # taonet writes it back in RFC 3339, and reads that to the same object.
        assert decode_object(encode_object(value)) == value
    elif entry["message"] in ("node_message", "protected_object_message"):
        assert value.protected_id == ObjectId(*expected["protected"])
        assert value.protector_id == ObjectId(*expected["protector"])
        if "blob_hex" in expected:
            assert value.blob == bytes.fromhex(expected["blob_hex"])
    else:
        assert len(value) == expected["count"]


@pytest.mark.parametrize("entry", entries(OURS, "hand"))
def test_hand_made_messages(entry: dict[str, Any]) -> None:
    data = bytes.fromhex(entry["hex"])
    decode = DECODERS[entry["message"]]
    if entry["error"]:
        with pytest.raises(CodecError, match=re.escape(entry["error"])):
            decode(data)
        return
    value = decode(data)
    exp = entry["expected"]
    if entry["message"] == "object_id_message":
        assert value == ObjectId(exp["name"], exp["epoch"])
    elif entry["message"] == "node_message":
        protector = exp["protector"] and ObjectId(*exp["protector"])
        assert value == Node(ObjectId(*exp["protected"]), protector)
    else:
        assert value == SecretObject(
            ObjectId(exp["name"], exp["epoch"]),
            exp["type"],
            Status(exp["status"]),
            exp["not_before"] and parse_time(exp["not_before"]),
            exp["not_after"] and parse_time(exp["not_after"]),
            bytes.fromhex(exp["value_hex"]),
        )


def test_the_hand_made_file_is_what_the_recipe_makes() -> None:
    assert protected_vectors.hand() == OURS["hand"]


def test_taonet_written_bytes() -> None:
    ours = OURS["taonet"]
    key = SecretObject(
        ObjectId("/server/master", 1),
        KEY_TYPE,
        Status.ACTIVE,
        None,
        None,
        bytes.fromhex(ours["root_key_hex"]),
    )
    obj = SecretObject(
        ObjectId("/acme/key/us-zone/file-key", 3),
        "file",
        Status.ACTIVE,
        datetime(2026, 11, 28, 8, 0, tzinfo=UTC),
        datetime(2027, 11, 28, 8, 0, 0, 250000, tzinfo=UTC),
        b"the customer file key",
    )
    assert encode_object_id(obj.id).hex() == ours["object_id"]
    assert encode_object(obj).hex() == ours["object"]
    assert encode_node(Node(obj.id, key.id)).hex() == ours["node"]
    assert associated_data(obj.id, key.id).hex() == ours["associated_data"]
    # A blob sealed by an earlier run still opens (the nonce was random then).
    po = decode_protected_object(bytes.fromhex(ours["protected_object"]))
    assert unprotect(po, key) == obj
    regenerated = protected_vectors.taonet()
    assert {k: v for k, v in regenerated.items() if k != "protected_object"} == {
        k: v for k, v in ours.items() if k != "protected_object"
    }
