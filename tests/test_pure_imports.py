"""The pure core imports without trio (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "taonet",
    "taonet.auth",
    "taonet.crypto",
    "taonet.attestation",
    "taonet.attestation.tpm2",
    "taonet.wire",
    "taonet.certs",
    "taonet.domain",
    "taonet.audit",
    "taonet.protected",
    "taonet.disclosure",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_does_not_import_trio(module: str) -> None:
    code = f"import sys, {module}; assert 'trio' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_check_notices_trio() -> None:
    # The check above can fail: an interpreter that did import trio is caught.
    code = "import sys, trio, taonet; assert 'trio' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
