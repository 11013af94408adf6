"""``loadtests/tpm_bench.py --quick`` against the session's swtpm: it runs to the end and
its last line is one JSON object with every figure, each a positive number; without
Keylime it says how to install it and reports the other figures. Speed is reported by
the benchmark, never asserted here: no thresholds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "loadtests" / "tpm_bench.py"
KEYLIME_INSTALL = "pip install --no-deps keylime==7.14.3 pyyaml pyasn1 pyasn1-modules"

#: Figures the benchmark always reports.
FIGURES = {
    "raw_verify_per_s",
    "quote_verify_per_s",
    "validate_tpm2_per_s",
    "quote_verify_ratio_vs_raw_verify",
    "validate_tpm2_ratio_vs_raw_verify",
    "attest_ms",
    "tpm2_pytss_attest_ms",
    "attest_ratio_vs_tpm2_pytss",
    "attest_cpu_ms",
    "tpm2_pytss_attest_cpu_ms",
    "seal_ms",
    "tpm2_pytss_seal_ms",
    "seal_ratio_vs_tpm2_pytss",
    "seal_cpu_ms",
    "tpm2_pytss_seal_cpu_ms",
    "unseal_ms",
    "tpm2_pytss_unseal_ms",
    "unseal_ratio_vs_tpm2_pytss",
    "unseal_cpu_ms",
    "tpm2_pytss_unseal_cpu_ms",
    "rounds",
    "ops_per_batch",
    "seconds_per_slice",
}
#: Figures against Keylime, reported when Keylime is installed (it is only for benchmarks).
KEYLIME_FIGURES = {
    "keylime_per_s",
    "quote_verify_ratio_vs_keylime",
    "validate_tpm2_ratio_vs_keylime",
}


def _quick_run(tcti: str, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*map(str, pythonpath), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--tcti", tcti],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT, env=env,
    )  # fmt: skip


def _figures(run: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert run.returncode == 0, run.stderr[-3000:]
    figures: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    for name, value in figures.items():
        assert type(value) in (int, float), (name, value)
        assert isinstance(value, int | float)
        assert value > 0, (name, value)
    return figures


def test_quick_run_reports_every_figure_as_a_positive_number(swtpm_tcti: str) -> None:
    run = _quick_run(swtpm_tcti, [])
    figures = _figures(run)
    with_keylime = importlib.util.find_spec("keylime") is not None
    assert set(figures) == FIGURES | (KEYLIME_FIGURES if with_keylime else set())
    if not with_keylime:
        assert KEYLIME_INSTALL in run.stderr


def test_without_keylime_it_says_how_to_install_it_and_reports_the_rest(
    swtpm_tcti: str, tmp_path: Path
) -> None:
    if importlib.util.find_spec("keylime") is None:
        pytest.skip("Keylime is not installed: the test above runs without it")
    # A sitecustomize that makes `import keylime` fail, as where it is not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['keylime'] = None\n")
    run = _quick_run(swtpm_tcti, [tmp_path])
    assert set(_figures(run)) == FIGURES
    assert KEYLIME_INSTALL in run.stderr
