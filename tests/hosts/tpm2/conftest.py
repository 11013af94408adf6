"""TPM 2.0 host tests: they run against real swtpm TPMs.

The fixtures live in ``tests/tpm2_fixtures.py`` (registered for the whole suite by
``tests/conftest.py``, so tests under ``tests/services`` or ``tests/cli`` can use them
too): ``swtpm`` / ``swtpm_tcti`` / ``swtpm_ca_pems`` (one TPM per session) and
``fresh_swtpm`` (a TPM of the test's own, for tests that restart or disturb it). Without
swtpm or tpm2-pytss they skip, and fail when CI=true.

``host`` here (in place of ``tests/hosts/conftest.py``'s soft host): a Tpm2Host on the
session's swtpm, in ``tmp_path / "tpmhost"``, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.hosts.tpm2.tpm2_host_helpers import opened_host
from tests.tpm2_fixtures import INSTALL_LINE, in_ci, missing_tpm2, tpm2_or_skip

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Tpm2Host

__all__ = ["INSTALL_LINE", "in_ci", "missing_tpm2", "tpm2_or_skip"]


@pytest.fixture
async def host(tmp_path: Path, swtpm_tcti: str) -> AsyncIterator[Tpm2Host]:
    """A Tpm2Host on the session's swtpm in ``tmp_path / "tpmhost"``, closed after the test."""
    async with opened_host(tmp_path / "tpmhost", swtpm_tcti) as h:
        yield h
