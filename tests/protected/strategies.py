"""Hypothesis strategies for protected-object values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from taonet.protected import (
    KEY_TYPE,
    MAX_EPOCH,
    Node,
    ObjectId,
    ProtectedObject,
    SecretObject,
    Status,
)

segments = st.text(
    alphabet=st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="/"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
names = st.lists(segments, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))
epochs = st.one_of(st.integers(1, 5), st.integers(1, MAX_EPOCH))
ids = st.builds(ObjectId, names, epochs)
zones = st.one_of(
    st.just(UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
)
times = st.builds(
    lambda dt, tz: dt.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1)),
    zones,
)
types = st.one_of(
    st.sampled_from([KEY_TYPE, "file"]),
    st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=64),
)


@st.composite
def objects(draw: st.DrawFn, *, oid: st.SearchStrategy[ObjectId] = ids) -> SecretObject:
    a, b = draw(st.none() | times), draw(st.none() | times)
    if a is not None and b is not None and a > b:
        a, b = b, a
    return SecretObject(
        draw(oid), draw(types), draw(st.sampled_from(Status)), a, b, draw(st.binary(max_size=100))
    )


@st.composite
def id_pairs(draw: st.DrawFn) -> tuple[ObjectId, ObjectId]:
    a = draw(ids)
    b = draw(ids.filter(lambda x: x != a))
    return a, b


nodes = st.builds(Node, ids, st.none() | ids)
protected_objects = id_pairs().flatmap(
    lambda p: st.builds(ProtectedObject, st.just(p[0]), st.just(p[1]), st.binary(max_size=200))
)
