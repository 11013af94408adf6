"""``taonet domain policy --add-manufacturer-ca/--remove-manufacturer-ca`` and
``taonet quote-service``: the CA list bound into the signed configuration, a tampered or
rolled-back list refused, the service
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
    # The file is plain PEM with comments, no signature of its own: domain.sig names it.
    path = domain / MANUFACTURER_CAS_FILE
    assert b"signature" not in path.read_bytes()
    assert Domain.load(domain).manufacturer_cas_pem == path.read_bytes()
    # Someone who can write the directory, without the policy key, adds a CA: refused.
    path.write_bytes(path.read_bytes() + _ca_pem(tmp_path, "Evil").read_bytes())
    with pytest.raises(ConfigError, match=r"manufacturer CA list .* but the policy key signed"):
        load_manufacturer_cas(domain, loaded.policy_verifier)
    result = await run(
        _argv("quote-service", "--domain", str(domain), "--password-file", pw), env=_env()
    )
    one_line_error(result, "manufacturer_cas.pem: refused", "but the policy key signed")


async def test_older_signed_ca_list_put_back_refused(tmp_path: Path) -> None:
    """The attack of s14/r6: a CA is removed; someone who can write the domain
    directory (no password) puts back the older CA list together with the older
    domain.sig that named it (every signature valid): the service refuses to start, one
    line, and so does every loading of the domain."""
    domain = await make_domain(tmp_path)
    pw = str(tmp_path / "pw")
    good, bad = _ca_pem(tmp_path, "Good Root"), _ca_pem(tmp_path, "Compromised Root")
    for change in (("--add-manufacturer-ca", str(good)), ("--add-manufacturer-ca", str(bad))):
        result = await run(
            _argv("domain", "policy", "--domain", str(domain), "--password-file", pw, *change),
            env=_env(),
        )
        assert result.returncode == 0, result
    old_cas = (domain / MANUFACTURER_CAS_FILE).read_bytes()
    old_sig = (domain / "domain.sig").read_bytes()
    serial = Domain.load(domain).config_serial
    result = await run(
        _argv(
            "domain", "policy", "--domain", str(domain), "--password-file", pw,
            "--remove-manufacturer-ca", str(bad),
        ),
        env=_env(),
    )  # fmt: skip
    assert result.returncode == 0, result
    assert Domain.load(domain).config_serial > serial  # the removal signed a new serial
    assert [c.subject.rfc4514_string() for c in load_manufacturer_cas(
        domain, Domain.load(domain).policy_verifier
    )] == ["CN=Good Root"]  # fmt: skip
    (domain / MANUFACTURER_CAS_FILE).write_bytes(old_cas)
    (domain / "domain.sig").write_bytes(old_sig)
    with pytest.raises(ConfigError, match="rolled back"):
        Domain.load(domain)
    result = await run(
        _argv("quote-service", "--domain", str(domain), "--password-file", pw), env=_env()
    )
    one_line_error(result, "domain configuration rolled back", f"serial {serial} is older")


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
