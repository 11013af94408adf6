"""In CI the TPM tests must run: swtpm, its setup tools and tpm2-pytss are installed
(``make test``'s system-deps and TEST_EXTRAS). Elsewhere this says what is missing."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.tpm2_fixtures import INSTALL_LINE, in_ci


@pytest.mark.parametrize("tool", ["swtpm", "swtpm_setup", "swtpm_localca"])
def test_swtpm_tool_present_in_ci(tool: str) -> None:
    if shutil.which(tool) is None:
        if in_ci():
            pytest.fail(f"CI has no {tool} on PATH. {INSTALL_LINE}")
        pytest.skip(f"no {tool} on PATH. {INSTALL_LINE}")


def test_tpm2_pytss_present_in_ci() -> None:
    if importlib.util.find_spec("tpm2_pytss") is None:
        if in_ci():
            pytest.fail(f"CI has no tpm2-pytss. {INSTALL_LINE}")
        pytest.skip(f"no tpm2-pytss. {INSTALL_LINE}")
    # It imports (libtss2 found at run time), and with the swtpm TCTI loadable.
    from tpm2_pytss import TCTILdr

    import taonet.hosts.tpm2  # noqa: F401

    assert TCTILdr.is_available("swtpm")
