"""``loadtests/tpm_bench.py --quick`` against the session's swtpm: it runs to the end and
its last line is one JSON object with every figure, each a positive number. Speed is
reported by the benchmark, never asserted here: no thresholds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "loadtests" / "tpm_bench.py"

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


def test_quick_run_reports_every_figure_as_a_positive_number(swtpm_tcti: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--tcti", swtpm_tcti],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    with_keylime = importlib.util.find_spec("keylime") is not None
    assert set(figures) == FIGURES | (KEYLIME_FIGURES if with_keylime else set())
    if not with_keylime:
        assert "pip install --no-deps keylime" in run.stderr
    for name, value in figures.items():
        assert type(value) in (int, float), (name, value)
        assert value > 0, (name, value)
