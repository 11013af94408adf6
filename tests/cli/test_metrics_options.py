"""``--metrics`` and ``--metrics-public`` of ``taonet domain-service`` and ``taonet
secret-server``: an address off loopback refused unless said public, a malformed one,
a port in use, prometheus-client missing: each one line and the right exit status."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.cli_helpers import clean_env, isolated, make_domain, one_line_error, run


@pytest.fixture
async def domain(tmp_path: Path) -> Path:
    return await make_domain(tmp_path)


def service_argv(domain: Path, *metrics: str) -> list[str]:
    return isolated(
        *("domain-service", "--domain", str(domain), "--listen", "127.0.0.1:0"),
        *("--password-file", str(domain.parent / "pw"), *metrics),
    )


def secret_server_argv(domain: Path, *metrics: str) -> list[str]:
    return isolated(
        *("secret-server", "--domain", str(domain), "--state", str(domain.parent / "state")),
        *("--soft-host", str(domain.parent / "no-such-host"), *metrics),
    )


@pytest.mark.parametrize("address", ["0.0.0.0:9100", "[::]:9100", "192.0.2.1:9100", ":x"])
@pytest.mark.parametrize("argv", [service_argv, secret_server_argv])
async def test_metrics_off_loopback_is_a_usage_error(
    domain: Path, address: str, argv: object
) -> None:
    assert callable(argv)
    result = await run(argv(domain, "--metrics", address), env=clean_env())
    if address == ":x":
        one_line_error(result, "--metrics", "not a number", returncode=2)
    else:
        one_line_error(result, "not a loopback address", "--metrics-public", returncode=2)


@pytest.mark.parametrize("argv", [service_argv, secret_server_argv])
async def test_metrics_public_needs_metrics(domain: Path, argv: Callable[..., list[str]]) -> None:
    result = await run(argv(domain, "--metrics-public"), env=clean_env())
    one_line_error(result, "--metrics-public needs --metrics", returncode=2)


async def test_metrics_public_may_listen_off_loopback(domain: Path) -> None:
    """Said public, 0.0.0.0 is taken: it fails only on the port in use (of this test)."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run(
            service_argv(domain, "--metrics", f"0.0.0.0:{port}", "--metrics-public"),
            env=clean_env(),
        )
    one_line_error(result, f"cannot listen on --metrics 0.0.0.0:{port}", "in use")


async def test_metrics_without_prometheus_client(domain: Path) -> None:
    # prometheus_client made unimportable, as where the extra is not installed.
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from taonet.cli._main import _entry\n"
        f"sys.argv = ['taonet', *{service_argv(domain, '--metrics', '127.0.0.1:0')[4:]!r}]\n"
        "_entry()\n"
    )
    result = await run([sys.executable, "-I", "-c", code], env=clean_env())
    one_line_error(result, "prometheus-client", "pip install 'taonet[metrics]'")
