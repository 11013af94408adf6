"""Fixtures for the certificate tests: the Go and OpenSSL tools that read what taonet issues.

In CI (``CI=true``) a missing ``go`` or ``openssl`` fails the tests that need it;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_SOURCE = Path(__file__).with_name("x509check.go")


def require_tool(name: str, install: str) -> str:
    """The tool's path; in CI its absence fails the test, elsewhere it skips it."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed ({install}): cannot check certificates with it"
        if os.environ.get("CI", "").lower() in {"true", "1", "yes"}:
            pytest.fail(f"CI must have {name}: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def x509check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x509check.go built once per session, with its Go caches in a temporary directory."""
    go = require_tool("go", "apt-get install golang-go; make system-deps does")
    work = tmp_path_factory.mktemp("go-x509check")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "GOCACHE": str(work / "cache"),
        "GOPATH": str(work / "gopath"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    binary = work / "x509check"
    result = subprocess.run(
        [go, "build", "-o", str(binary), str(GO_SOURCE)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"go build failed:\n{result.stderr[-4000:]}"
    return binary


@pytest.fixture
def openssl() -> str:
    return require_tool("openssl", "apt-get install openssl")
