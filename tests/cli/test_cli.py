"""The taonet command: auth and domain subcommands, errors as one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from taonet.domain import Domain, measure_file
from tests.cli.cli_helpers import password_file, taonet_main

VECTOR = "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA"
VECTOR_TEXT = "key([74657374206b6579]) speaksfor key([746573742074616f206b6579])"


def test_auth_parse_encode_decode(capsys: pytest.CaptureFixture[str]) -> None:
    assert taonet_main(capsys, "auth", "parse", VECTOR_TEXT.replace(" ", "  ")) == (
        0,
        VECTOR_TEXT + "\n",
        "",
    )
    assert taonet_main(capsys, "auth", "encode", VECTOR_TEXT) == (0, VECTOR + "\n", "")
    assert taonet_main(capsys, "auth", "decode", VECTOR) == (0, VECTOR_TEXT + "\n", "")


@pytest.mark.parametrize(
    "args",
    [
        ("auth", "parse", "key(["),
        ("auth", "encode", "P and"),
        ("auth", "decode", "not base64!"),
        ("auth", "decode", VECTOR[:-4]),
        ("auth", "decode", VECTOR + "AA"),
    ],
)
def test_auth_errors_are_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    code, out, err = taonet_main(capsys, *args)
    assert code == 1  # bad data
    assert out == ""
    assert err.startswith("taonet: error: ")
    assert err.count("\n") == 1


def test_domain_init_policy_principal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pw = str(password_file(tmp_path))
    d = str(tmp_path / "dom")
    code, out, err = taonet_main(
        capsys, "domain", "init", d, "--name", "cli-test", "--password-file", pw
    )
    assert (code, err) == (0, ""), err
    assert "policy key:  key([" in out

    program = tmp_path / "app.py"
    program.write_text("print('hello')\n")
    code, out, err = taonet_main(
        capsys,
        "domain",
        "policy",
        "--domain",
        d,
        "--add-program",
        str(program),
        "--allow",
        'Authorized(key([0a0b]),  "Read")',
        "--password-file",
        pw,
    )
    assert (code, err) == (0, "")
    assert "0 -> 2 rules" in out

    code, out, _ = taonet_main(capsys, "domain", "policy", "--domain", d, "--show")
    h = measure_file(program).hex()
    assert out.splitlines() == [
        f'Authorized(ext.Program([{h}]), "Execute")',
        'Authorized(key([0a0b]), "Read")',
    ]

    code, out, _ = taonet_main(
        capsys,
        "domain",
        "policy",
        "--domain",
        d,
        "--retract",
        'Authorized(key([0a0b]), "Read")',
        "--password-file",
        pw,
    )
    assert code == 0
    assert len(Domain.load(d).guard.rules) == 1  # type: ignore[attr-defined]

    code, out, _ = taonet_main(
        capsys, "domain", "principal", "--domain", d, "--program", str(program)
    )
    policy_hash = Domain.load(d).policy_principal.key_hash.value.hex()  # type: ignore[union-attr]
    assert out.strip() == f"ext.Program([{h}]).PolicyKey([{policy_hash}])"
    code, out, _ = taonet_main(
        capsys,
        "domain",
        "principal",
        "--domain",
        d,
        "--program",
        str(program),
        "--host",
        "key([0102])",
    )
    assert out.strip() == f"key([0102]).Program([{h}]).PolicyKey([{policy_hash}])"


def test_domain_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TAO_DOMAIN", raising=False)
    pw = str(password_file(tmp_path))
    d = str(tmp_path / "dom")
    assert taonet_main(capsys, "domain", "init", d, "--password-file", pw)[0] == 0
    cases = [
        (("domain", "init", d, "--password-file", pw), "already holds a domain", 1),
        (("domain", "policy", "--show"), "no domain", 2),
        (
            ("domain", "policy", "--domain", d, "--allow", "Authorized(", "--password-file", pw),
            "not a formula",
            2,
        ),
        (
            ("domain", "policy", "--domain", d, "--retract", "true", "--password-file", pw),
            "no rule",
            3,
        ),
        (
            (
                "domain",
                "policy",
                "--domain",
                d,
                "--allow",
                'Authorized(key([0a]), "Read")',
                "--password-file",
                str(password_file(tmp_path, "wrong")),
            ),
            "password",
            4,
        ),
        (
            (
                "domain",
                "policy",
                "--domain",
                d,
                "--add-program",
                str(tmp_path / "missing"),
                "--password-file",
                pw,
            ),
            "no such file",
            3,
        ),
        (
            ("domain", "principal", "--domain", str(tmp_path), "--program", pw),
            "not a domain directory",
            3,
        ),
        (
            ("domain", "principal", "--domain", str(tmp_path / "gone"), "--program", pw),
            "no domain at",
            3,
        ),
    ]
    for args, message, status in cases:
        code, _out, err = taonet_main(capsys, *args)
        assert code == status, (args, err)
        assert message in err, (args, err)
        assert err.count("\n") == 1
    # A failed change left the rules as they were.
    assert Domain.load(d).guard.rules == ()  # type: ignore[attr-defined]


def test_domain_from_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = str(password_file(tmp_path))
    d = tmp_path / "dom"
    assert (
        taonet_main(capsys, "domain", "init", str(d), "--guard", "Liberal", "--password-file", pw)[
            0
        ]
        == 0
    )
    monkeypatch.setenv("TAO_DOMAIN", str(d))
    assert taonet_main(capsys, "domain", "policy", "--show")[1] == "Liberal guard (no rules)\n"


def test_password_needs_a_terminal_or_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))  # noqa: SIM115
    code, _, err = taonet_main(capsys, "domain", "init", str(tmp_path / "d"))
    sys.stdin.close()
    assert code == 2  # usage: say --password-file
    assert "--password-file" in err


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "taonet"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "taonet"]
    ok = subprocess.run(
        [*command, "auth", "decode", VECTOR],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ok.returncode, ok.stdout) == (0, VECTOR_TEXT + "\n")
    bad = subprocess.run(
        [*command, "auth", "decode", "AAAA"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith("taonet: error:")


def test_domain_service_arguments(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taonet.cli._service_cmd import parse_listen

    assert parse_listen("127.0.0.1:8124") == ("127.0.0.1", 8124)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9") == ("127.0.0.1", 9)
    assert parse_listen("[::1]:443") == ("::1", 443)
    assert parse_listen("[2001:db8::7]:65535") == ("2001:db8::7", 65535)
    assert parse_listen("localhost:0") == ("localhost", 0)
    monkeypatch.delenv("TAO_DOMAIN", raising=False)
    here = str(tmp_path)
    for args, message in [
        (("domain-service",), "no domain"),
        (("domain-service", "--domain", here, "--listen", "nope"), "HOST:PORT"),
        (("domain-service", "--domain", here, "--listen", "h:99999"), "port 99999 is out of range"),
        (
            ("domain-service", "--domain", here, "--listen", "localhost:99999"),
            "port 99999 is out of range (0 to 65535)",
        ),
        (("domain-service", "--domain", here, "--listen", "[::1]:65536"), "out of range"),
        (("domain-service", "--domain", here, "--listen", "::1:443"), "[::1]:8124"),
        (("domain-service", "--domain", here, "--listen", "[::1]443"), "[ADDRESS]:PORT"),
        (("domain-service", "--domain", here, "--listen", "[]:443"), "no address"),
        (("domain-service", "--domain", here, "--listen", "h:x1"), "is not a number"),
        (("domain-service", "--domain", here, "--listen", "h:\u0661"), "is not a number"),
    ]:
        code, _, err = taonet_main(capsys, *args)
        assert code == 2
        assert message in err
