"""TPM 2.0 host tests: they run against real swtpm TPMs.

The fixtures live in ``tests/tpm2_fixtures.py`` (registered for the whole suite by
``tests/conftest.py``, so tests under ``tests/services`` or ``tests/cli`` can use them
too): ``swtpm`` / ``swtpm_tcti`` / ``swtpm_ca_pems`` (one TPM per session) and
``fresh_swtpm`` (a TPM of the test's own, for tests that restart or disturb it). Without
swtpm or tpm2-pytss they skip, and fail when CI=true.
"""

from __future__ import annotations

from tests.tpm2_fixtures import INSTALL_LINE, in_ci, missing_tpm2, tpm2_or_skip

__all__ = ["INSTALL_LINE", "in_ci", "missing_tpm2", "tpm2_or_skip"]
