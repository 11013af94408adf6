"""`taonet secret-server` says what is wrong in one line and a non-zero exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, MakeDomain, MakeHost


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taonet", "secret-server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    ("extra", "status", "says"),
    [
        ((), 2, "--soft-host"),  # not hosted and no --soft-host: no Tao to run on
        (("--listen", "nope"), 2, "--listen"),
        (("--domain-service", "127.0.0.1:99999"), 2, "--domain-service '127.0.0.1:99999'"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, make_domain: MakeDomain, extra: tuple[str, ...], status: int, says: str
) -> None:
    domain = make_domain()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = run("--domain", str(domain.path), "--state", str(tmp_path / "s"), *extra, env=env)
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taonet: error:")
    assert says in lines[0]
    assert "Traceback" not in result.stderr


def test_a_domain_service_that_is_not_there(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    domain = make_domain()
    make_host(domain)
    password = tmp_path / "pw"
    password.write_bytes(PASSWORD + b"\n")
    result = run(
        *("--domain", str(domain.path), "--state", str(tmp_path / "s")),
        *("--soft-host", str(tmp_path / "host0"), "--password-file", str(password)),
        *("--domain-service", "127.0.0.1:1", "--listen", "127.0.0.1:0"),
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("taonet: error:")]
    assert len(errors) == 1, result.stderr
    assert "127.0.0.1:1" in errors[0]
    assert "Traceback" not in result.stderr
