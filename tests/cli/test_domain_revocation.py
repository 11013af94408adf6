"""``taonet domain audit|revoke|crl``: the audit log, revocation and the domain's CRL."""

from __future__ import annotations

import secrets
import stat
import time
from pathlib import Path

import pytest

from taonet import AuthenticationError, certs
from taonet.cli._domain_cmd import audit_path, crl_path
from taonet.domain import Domain
from taonet_services.domain_service._audit import AuditLog
from tests.cli.cli_helpers import password_file, taonet_main

DAY = 24 * 3600 * 10**9


@pytest.fixture
def pw(tmp_path: Path) -> str:
    return str(password_file(tmp_path))


@pytest.fixture
def dom(tmp_path: Path, pw: str, capsys: pytest.CaptureFixture[str]) -> str:
    d = str(tmp_path / "dom")
    code, _, err = taonet_main(
        capsys, "domain", "init", d, "--name", "revocation", "--password-file", pw
    )
    assert (code, err) == (0, ""), err
    return d


def issue(domain_dir: str, principal: str = "key([0102])") -> int:
    """Record a certificate as the domain service would; returns its serial."""
    serial = secrets.randbits(159) | 1 << 158
    with AuditLog.open(audit_path(Path(domain_dir))) as log:
        log.record_issued(
            serial=serial,
            principal=principal,
            key_hash_hex="ab" * 32,
            not_before_ns=time.time_ns(),
            not_after_ns=time.time_ns() + DAY,
            peer="127.0.0.1:4000",
            attestation_sha256_hex="cd" * 32,
        )
    return serial


def read_crl(domain_dir: str, *, now_ns: int | None = None) -> certs.RevocationList:
    domain = Domain.load(domain_dir)
    der = crl_path(Path(domain_dir)).read_bytes()
    return certs.verify_crl(domain.policy_anchor, der, now_ns=now_ns or time.time_ns())


def assert_one_line_error(code: int, out: str, err: str, *, status: int = 2) -> None:
    """One ``taonet: error:`` line and ``status`` (2 usage, 3 not found, 4 refused)."""
    assert code == status, err
    assert out == ""
    assert err.startswith("taonet: error: ")
    assert err.count("\n") == 1


def test_revoke_writes_a_crl_and_audit_shows_it(
    capsys: pytest.CaptureFixture[str], dom: str, pw: str
) -> None:
    first, second, kept = issue(dom, "key([01])"), issue(dom, "key([02])"), issue(dom)

    code, out, err = taonet_main(
        capsys, "domain", "revoke", str(first), "--reason", "key leaked", "--domain", dom,
        "--password-file", pw,
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out == f"revoked serial {first}; CRL now lists 1 serial(s)\n"
    crl = read_crl(dom)
    assert first in crl
    assert second not in crl
    assert kept not in crl
    path = crl_path(Path(dom))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    # 0x-hex serials work too; the CRL lists both, dated when they were revoked.
    code, out, err = taonet_main(
        capsys, "domain", "revoke", hex(second), "--reason", "host retired", "--domain", dom,
        "--password-file", pw,
    )  # fmt: skip
    assert (code, err) == (0, ""), err
    assert out == f"revoked serial {second}; CRL now lists 2 serial(s)\n"
    crl = read_crl(dom)
    assert crl.serials == {first, second}
    assert crl.next_update_ns - crl.this_update_ns == 7 * DAY + 300 * 10**9  # 5 min backdated

    code, out, err = taonet_main(capsys, "domain", "audit", "--domain", dom)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 5
    assert [line.split()[2] for line in lines] == ["issued"] * 3 + ["revoked"] * 2
    assert f"serial={first}" in lines[3]
    assert "reason=key leaked" in lines[3]
    assert "principal=key([02])" in lines[4]
    assert "reason=host retired" in lines[4]

    code, out, _ = taonet_main(capsys, "domain", "audit", "--domain", dom, "--limit", "2")
    assert (code, out.splitlines()) == (0, lines[-2:])


def test_revoking_twice_is_reported_not_an_error(
    capsys: pytest.CaptureFixture[str], dom: str, pw: str
) -> None:
    serial = issue(dom)
    args = ("domain", "revoke", str(serial), "--reason", "gone", "--domain", dom)
    assert taonet_main(capsys, *args, "--password-file", pw)[0] == 0
    code, out, err = taonet_main(capsys, *args, "--password-file", pw)
    assert (code, err) == (0, "")
    assert out == f"serial {serial} was already revoked; CRL now lists 1 serial(s)\n"
    assert read_crl(dom).serials == {serial}
    with AuditLog.open(audit_path(Path(dom))) as log:
        assert [e.kind for e in log.events()] == ["issued", "revoked"]


def test_unknown_serial_is_one_line_exit_3(
    capsys: pytest.CaptureFixture[str], dom: str, pw: str
) -> None:
    issue(dom)
    code, out, err = taonet_main(
        capsys, "domain", "revoke", "12345", "--reason", "x", "--domain", dom, "--password-file", pw
    )
    assert_one_line_error(code, out, err, status=3)
    assert "no certificate with serial 12345" in err
    assert not crl_path(Path(dom)).exists()


def test_wrong_password_is_one_line_exit_4_and_records_nothing(
    capsys: pytest.CaptureFixture[str], dom: str, tmp_path: Path
) -> None:
    serial = issue(dom)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    code, out, err = taonet_main(
        capsys, "domain", "revoke", str(serial), "--reason", "x", "--domain", dom,
        "--password-file", str(wrong),
    )  # fmt: skip
    assert_one_line_error(code, out, err, status=4)
    with AuditLog.open(audit_path(Path(dom))) as log:
        assert not log.is_revoked(serial)
    assert not crl_path(Path(dom)).exists()
    assert_one_line_error(
        *taonet_main(capsys, "domain", "crl", "--domain", dom, "--password-file", str(wrong)),
        status=4,
    )


@pytest.mark.parametrize(
    ("serial", "message"),
    [
        ("12ab", "not a decimal or 0x-hex"),
        ("-5", "not a decimal or 0x-hex"),
        ("0x", "not a decimal or 0x-hex"),
        ("0", "out of range"),
        (str(1 << 159), "out of range"),
    ],
)
def test_bad_serials_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], dom: str, pw: str, serial: str, message: str
) -> None:
    issue(dom)
    code, out, err = taonet_main(
        capsys, "domain", "revoke", "--reason", "x", "--domain", dom, "--password-file", pw,
        "--", serial,
    )  # fmt: skip
    assert_one_line_error(code, out, err)
    assert message in err


def test_revoke_without_an_audit_log(capsys: pytest.CaptureFixture[str], dom: str, pw: str) -> None:
    code, out, err = taonet_main(
        capsys, "domain", "revoke", "7", "--reason", "x", "--domain", dom, "--password-file", pw
    )
    assert_one_line_error(code, out, err, status=3)
    assert not audit_path(Path(dom)).exists()


def test_audit_without_a_log(capsys: pytest.CaptureFixture[str], dom: str) -> None:
    assert taonet_main(capsys, "domain", "audit", "--domain", dom) == (
        0,
        "no audit log yet (the domain service has not run)\n",
        "",
    )
    assert not audit_path(Path(dom)).exists()
    assert_one_line_error(*taonet_main(capsys, "domain", "audit", "--domain", dom, "--limit", "0"))


def test_audit_of_a_missing_domain_is_not_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Once exit 0 with "no audit log yet": a typo in --domain looked like a quiet domain.
    for where in (tmp_path / "no-such-domain", tmp_path):
        for extra in ((), ("-o", "json")):
            code, out, err = taonet_main(capsys, "domain", "audit", "--domain", str(where), *extra)
            assert_one_line_error(code, out, err, status=3)
            assert str(where) in err


def test_crl_regenerates_the_list(capsys: pytest.CaptureFixture[str], dom: str, pw: str) -> None:
    # Without an audit log: an empty, signed list.
    code, out, err = taonet_main(capsys, "domain", "crl", "--domain", dom, "--password-file", pw)
    assert (code, err) == (0, "")
    assert "CRL now lists 0 serial(s)" in out
    assert read_crl(dom).serials == frozenset()

    serial = issue(dom)
    with AuditLog.open(audit_path(Path(dom))) as log:
        log.revoke(serial, reason="revoked by the service")
    code, out, err = taonet_main(
        capsys, "domain", "crl", "--domain", dom, "--password-file", pw, "--crl-days", "30"
    )
    assert (code, err) == (0, "")
    assert "CRL now lists 1 serial(s)" in out
    crl = read_crl(dom, now_ns=time.time_ns() + 29 * DAY)
    assert serial in crl
    with pytest.raises(AuthenticationError, match="out of date"):
        read_crl(dom, now_ns=time.time_ns() + 31 * DAY)
