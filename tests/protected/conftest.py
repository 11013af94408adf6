"""Shared objects for the protected-object tests: a root key, a middle key, a leaf."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import pytest

from taonet.protected import KEY_TYPE, ObjectId, SecretObject, Status

NOW: Final = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
DAY: Final = timedelta(days=1)


def key(name: str, epoch: int = 1, *, fill: int = 1, **changes: object) -> SecretObject:
    """An ACTIVE 32-byte key valid a day either side of NOW, value ``fill`` repeated."""
    fields: dict[str, object] = {
        "id": ObjectId(name, epoch),
        "type": KEY_TYPE,
        "status": Status.ACTIVE,
        "not_before": NOW - DAY,
        "not_after": NOW + DAY,
        "value": bytes([fill]) * 32,
    }
    fields.update(changes)
    return SecretObject(**fields)  # type: ignore[arg-type]


def leaf(
    name: str = "/acme/key/us-zone/file-key", epoch: int = 1, **changes: object
) -> SecretObject:
    """A 'file' object holding a short secret."""
    fields: dict[str, object] = {
        "id": ObjectId(name, epoch),
        "type": "file",
        "status": Status.ACTIVE,
        "not_before": None,
        "not_after": None,
        "value": b"the customer file key",
    }
    fields.update(changes)
    return SecretObject(**fields)  # type: ignore[arg-type]


@pytest.fixture
def root() -> SecretObject:
    return key("/server/master", fill=0xAA)
