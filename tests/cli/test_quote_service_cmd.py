"""``taonet domain policy --add-manufacturer-ca/--remove-manufacturer-ca`` and
``taonet quote-service``: the signed CA list, a tampered list refused, the service
started and stopped in a real process, one-line errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from taonet import ConfigError
from taonet.domain import Domain
from taonet.quoteservice import MANUFACTURER_CAS_FILE, load_manufacturer_cas
from tests.cli.cli_helpers import clean_env, make_domain, one_line_error, run, taonet_main
from tests.cli.test_start_stop_logging import terminate
from tests.tpm2_helpers import ca_pem

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    """A clean environment that runs this tree's taonet (not the installed one)."""
    env = clean_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("", "services", "examples"))
    return env


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "taonet", *args]


def _ca_pem(tmp_path: Path, name: str, *, ca: bool = True) -> Path:
    path = tmp_path / f"{name}.pem"
    path.write_bytes(ca_pem(name, ca=ca))
    return path


async def test_manufacturer_ca_list_is_signed_and_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = await make_domain(tmp_path)
    pw = str(tmp_path / "pw")
    root, inter = _ca_pem(tmp_path, "Vendor Root"), _ca_pem(tmp_path, "Vendor EK CA")
    both = tmp_path / "both.pem"
    both.write_bytes(root.read_bytes() + inter.read_bytes())
    code, out, _ = taonet_main(
        capsys, "domain", "policy", "--domain", str(domain),
        "--add-manufacturer-ca", str(both), "--password-file", pw,
    )  # fmt: skip
    assert code == 0
    assert "manufacturer CA added: CN=Vendor Root" in out
    assert "manufacturer CA added: CN=Vendor EK CA" in out
    loaded = Domain.load(domain)
    assert len(load_manufacturer_cas(domain, loaded.policy_verifier)) == 2
    code, out, _ = taonet_main(
        capsys, "domain", "policy", "--domain", str(domain),
        "--remove-manufacturer-ca", str(inter), "--password-file", pw,
    )  # fmt: skip
    assert code == 0
    assert "manufacturer CA removed: CN=Vendor EK CA" in out
    code, out, _ = taonet_main(capsys, "domain", "policy", "--domain", str(domain), "--show")
    assert "manufacturer CA: CN=Vendor Root" in out
    assert "Vendor EK CA" not in out
    # Someone who can write the directory, without the policy key, adds a CA: refused.
    path = domain / MANUFACTURER_CAS_FILE
    path.write_bytes(path.read_bytes() + _ca_pem(tmp_path, "Evil").read_bytes())
    with pytest.raises(ConfigError, match="not signed by this domain's policy key"):
        load_manufacturer_cas(domain, loaded.policy_verifier)
    result = await run(
        _argv("quote-service", "--domain", str(domain), "--password-file", pw), env=_env()
    )
    one_line_error(result, "not signed by this domain's policy key")


async def test_not_a_ca_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = await make_domain(tmp_path)
    leaf = _ca_pem(tmp_path, "Just a leaf", ca=False)
    code, _, err = taonet_main(
        capsys, "domain", "policy", "--domain", str(domain),
        "--add-manufacturer-ca", str(leaf), "--password-file", str(tmp_path / "pw"),
    )  # fmt: skip
    assert code != 0
    assert err.count("\n") == 1
    assert "is not a CA certificate" in err


async def test_quote_service_starts_and_stops(tmp_path: Path) -> None:
    domain = await make_domain(tmp_path)
    pw = str(tmp_path / "pw")
    # Without a manufacturer CA there is nothing it could certify: one line, no service.
    result = await run(
        _argv("quote-service", "--domain", str(domain), "--password-file", pw), env=_env()
    )
    one_line_error(result, "lists no TPM manufacturer CA", "--add-manufacturer-ca")
    result = await run(
        _argv(
            "domain", "policy", "--domain", str(domain), "--password-file", pw,
            "--add-manufacturer-ca", str(_ca_pem(tmp_path, "Vendor Root")),
        ),
        env=_env(),
    )  # fmt: skip
    assert result.returncode == 0, result
    argv = _argv(
        "quote-service", "--domain", str(domain), "--listen", "127.0.0.1:0", "--password-file", pw
    )
    status, out, err = await terminate(argv, _env(TAONET_LOG="info"), "listening on")
    assert status == 0, (out.seen, err.seen)
    assert ".QuoteService()" in out.seen[0]
    assert "(1 manufacturer CA(s))" in out.seen[0]
    assert any("quote_service_started" in line for line in err.seen)
    assert out.seen[-1] == "quote service stopped (SIGTERM)"
    assert not any("Traceback" in line for line in err.seen)
