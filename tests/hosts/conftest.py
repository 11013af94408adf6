"""Fixtures shared by the host tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import MakeHost

if TYPE_CHECKING:
    from taonet.hosts import SoftHost


@pytest.fixture
def host(make_host: MakeHost) -> SoftHost:
    """A fresh soft host on disk, certified by no domain (a module may define its own)."""
    return make_host()
