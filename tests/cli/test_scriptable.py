"""A CLI people can script: ``-o json``, exit statuses by kind, examples in every help,
and shell completion generated from the parser (fed to a real bash)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from taonet.cli._completion import bash_script, zsh_script
from taonet.cli._failures import EXIT_STATUS_TABLE, ExitStatus
from taonet.cli._help import walk
from taonet.cli._main import build_parser
from taonet.domain import Domain, measure_file
from tests.cli.cli_helpers import password_file, taonet_main
from tests.cli.test_domain_revocation import issue

VECTOR = "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA"
VECTOR_TEXT = "key([74657374206b6579]) speaksfor key([746573742074616f206b6579])"


@pytest.fixture
def domain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, str]:
    pw = str(password_file(tmp_path))
    d = str(tmp_path / "dom")
    code, out, err = taonet_main(
        capsys, "domain", "init", d, "--name", "scripted", "--password-file", pw, "-o", "json"
    )
    assert (code, err) == (0, ""), err
    created = json.loads(out)
    domain = Domain.load(d)
    assert created == {
        "domain": d,
        "name": "scripted",
        "policy_principal": str(domain.policy_principal),
        "guard": "ACL",
        "guard_principal": str(domain.guard.subprincipal()),
        "rules": [],
    }
    return d, pw


def json_of(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    """Run a command with ``-o json``: its one JSON document (nothing on stderr)."""
    code, out, err = taonet_main(capsys, *args, "-o", "json")
    assert (code, err) == (0, ""), err
    return json.loads(out)


# -- --output json ----------------------------------------------------------------


def test_auth_json(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {
        "text": VECTOR_TEXT,
        "binary_hex": bytes.fromhex(
            "0d01036b6579040874657374206b6579110001036b6579040c746573742074616f206b65791100"
        ).hex(),
        "binary_base64url": VECTOR,
    }
    assert json_of(capsys, "auth", "decode", VECTOR) == expected
    assert json_of(capsys, "auth", "encode", VECTOR_TEXT) == expected
    assert json_of(capsys, "auth", "parse", VECTOR_TEXT.replace(" ", "   ")) == expected


def test_policy_principal_and_show_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: tuple[str, str]
) -> None:
    d, pw = domain
    app = tmp_path / "app.py"
    app.write_text("print('app')\n")
    h = measure_file(app).hex()
    report = json_of(
        capsys, "domain", "policy", "--domain", d, "--add-program", str(app), "--password-file", pw
    )
    assert isinstance(report, dict)
    rule = f'Authorized(ext.Program([{h}]), "Execute")'
    assert report["added"] == [rule]
    assert report["removed"] == []
    assert report["rules"] == [rule]
    assert report["guard"] == "ACL"

    shown = json_of(capsys, "domain", "policy", "--domain", d, "--show")
    assert isinstance(shown, dict)
    assert shown["rules"] == [rule]
    assert shown["guard_principal"] == str(Domain.load(d).guard.subprincipal())
    assert "added" not in shown  # nothing changed

    named = json_of(
        capsys, "domain", "principal", "--domain", d, "--program", str(app), "--host", "key([01])"
    )
    policy_hash = Domain.load(d).policy_principal.key_hash.value.hex()  # type: ignore[union-attr]
    assert named == {
        "program": str(app),
        "program_sha256": h,
        "host": "key([01])",
        "principal": f"key([01]).Program([{h}]).PolicyKey([{policy_hash}])",
        "authorized": True,
    }
    other = tmp_path / "other.py"
    other.write_text("print('other')\n")
    unlisted = json_of(capsys, "domain", "principal", "--domain", d, "--program", str(other))
    assert isinstance(unlisted, dict)
    assert unlisted["authorized"] is False
    assert unlisted["host"] is None
    assert unlisted["principal"].startswith("ext.Program([")


def test_audit_and_revoke_json(capsys: pytest.CaptureFixture[str], domain: tuple[str, str]) -> None:
    d, pw = domain
    empty = json_of(capsys, "domain", "audit", "--domain", d)
    assert empty == {"domain": d, "audit_log": None, "events": []}

    serial = issue(d, principal="key([0a0b])")
    revoked = json_of(
        capsys, "domain", "revoke", hex(serial), "--reason", "lost\nlaptop", "--domain", d,
        "--password-file", pw,
    )  # fmt: skip
    assert revoked == {
        "serial": str(serial),  # up to 160 bits: a string, which jq cannot round
        "newly_revoked": True,
        "crl": str(Path(d) / "crl.der"),
        "crl_serials": 1,
    }
    log = json_of(capsys, "domain", "audit", "--domain", d)
    assert isinstance(log, dict)
    events = log["events"]
    assert [e["kind"] for e in events] == ["issued", "revoked"]
    assert {e["serial"] for e in events} == {str(serial)}
    assert events[0]["principal"] == "key([0a0b])"
    assert events[0]["detail"]["key_hash_hex"] == "ab" * 32
    assert events[1]["reason"] == "lost\nlaptop"  # JSON escapes it: no line forged
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", events[0]["time"])
    assert isinstance(events[0]["time_ns"], int)
    limited = json_of(capsys, "domain", "audit", "--domain", d, "--limit", "1")
    assert isinstance(limited, dict)
    assert [e["kind"] for e in limited["events"]] == ["revoked"]
    crl = json_of(capsys, "domain", "crl", "--domain", d, "--password-file", pw)
    assert crl == {"crl": str(Path(d) / "crl.der"), "crl_serials": 1, "crl_days": 7}


def test_domain_show_json(capsys: pytest.CaptureFixture[str], domain: tuple[str, str]) -> None:
    d, _ = domain
    loaded = Domain.load(d)
    assert json_of(capsys, "domain", "show", "--domain", d) == {
        "domain": d,
        "name": "scripted",
        "policy_principal": str(loaded.policy_principal),
        "guard": "ACL",
        "guard_principal": str(loaded.guard.subprincipal()),
        "rules": 0,
        "host_validity_days": 365,
        "program_validity_days": 30,
        "config_serial": loaded.config_serial,
        "crl": None,
        "audit_log": None,
    }
    code, out, _ = taonet_main(capsys, "domain", "show", "--domain", d)
    assert code == 0
    assert f"policy principal:       {loaded.policy_principal}" in out.splitlines()


# -- exit statuses -------------------------------------------------------------------


def test_exit_statuses_by_kind(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: tuple[str, str]
) -> None:
    d, _ = domain
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    # A host that died and left its socket: connecting is refused (ECONNREFUSED).
    stale = tmp_path / "stale"
    stale.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale / "admin.sock"))
    cases = [
        (("list", "--host", str(stale)), ExitStatus.UNAVAILABLE),
        (("domain", "audit", "--domain", str(tmp_path / "nope")), ExitStatus.NOT_FOUND),
        (("domain", "policy", "--show", "--domain", str(tmp_path)), ExitStatus.NOT_FOUND),
        (("domain", "audit", "--domain", d, "--limit", "-1"), ExitStatus.USAGE),
        (("domain", "audit", "--domain", d, "--output", "yaml"), ExitStatus.USAGE),
        (("no-such-command",), ExitStatus.USAGE),
        (
            ("domain", "crl", "--domain", d, "--password-file", str(password_file(wrong, "x"))),
            ExitStatus.REFUSED,
        ),
        (("domain", "crl", "--domain", d, "--password-file", str(tmp_path / "gone")),
         ExitStatus.NOT_FOUND),
        (("auth", "decode", "AAAA"), ExitStatus.ERROR),
        (("list", "--host", str(tmp_path)), ExitStatus.UNAVAILABLE),
        (("stop", "x", "--host", str(tmp_path)), ExitStatus.UNAVAILABLE),
        (("list", "--host", str(tmp_path / "nope")), ExitStatus.NOT_FOUND),
        (("run", "--host", str(tmp_path), str(tmp_path / "nope.py")), ExitStatus.NOT_FOUND),
        (("run", "--host", str(tmp_path), "no-such-command-h10"), ExitStatus.NOT_FOUND),
        (("run", "--host", str(tmp_path), "--entry", "x", d + "/domain.toml"), ExitStatus.USAGE),
    ]  # fmt: skip
    for args, status in cases:
        try:
            code, out, err = taonet_main(capsys, *args)
        except SystemExit as exc:  # argparse's usage errors leave main as SystemExit(2)
            code, out, err = int(str(exc.code)), *capsys.readouterr()
        assert code == status, (args, err)
        assert out == ""
        assert err.count("\n") == 1 or code == ExitStatus.USAGE, err
    assert EXIT_STATUS_TABLE in taonet_main_help()


def taonet_main_help() -> str:
    return build_parser().format_help()


def test_an_unexpected_failure_is_one_line_and_exit_70(tmp_path: Path) -> None:
    """A bug is still one line (exit 70); TAONET_TRACEBACK=1 shows where."""
    # No input reaches a bug on purpose: plant one in a command, in a real process.
    code = (
        "import sys, taonet.cli._auth_cmd as a\n"
        "def boom(args): raise RuntimeError('a bug\\nwith two lines')\n"
        "a._parse = boom\n"
        "from taonet.cli import main\n"
        "sys.exit(main(['auth', 'parse', 'true']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAONET_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 70, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("taonet: internal error: RuntimeError: a bug with two lines")
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60,
        env={**env, "TAONET_TRACEBACK": "1"},
    )  # fmt: skip
    assert shown.returncode == 70
    assert "Traceback" in shown.stderr
    assert "in boom" in shown.stderr


# -- help: an example for every command ------------------------------------------------


def test_every_command_has_an_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    parser = build_parser()
    seen = []
    for words, command in walk(parser):
        text = command.format_help()
        assert "\nExample:\n  taonet " in text, f"taonet {' '.join(words)} --help has no example"
        assert command.formatter_class is argparse.RawDescriptionHelpFormatter
        # Raw keeps the examples as written; the rest is still wrapped for a terminal.
        before_examples = text.split("\nExample:\n", 1)[0]
        assert max(map(len, before_examples.splitlines())) <= 100, words
        # Each example runs the command it documents.
        examples = text.split("\nExample:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert all(line.startswith("  taonet ") or line.startswith("  eval ") or
                   line.startswith('  "$') for line in examples), examples  # fmt: skip
        if words and words[0] != "completion":
            assert any(f"taonet {' '.join(words)}" in line for line in examples), (words, examples)
        seen.append(words)
    for words in [("domain", "policy"), ("list",), ("completion",), ("host", "show")]:
        assert words in seen
    assert len(seen) > 20


def test_help_documents_output_exit_statuses_and_environment() -> None:
    text = taonet_main_help()
    for needle in ("-o json", "exit status:", "  3    not found", "  5    unavailable",
                   "TAONET_LOG", "TAO_DOMAIN", "TAONET_TRACEBACK"):  # fmt: skip
        assert needle in text
    # Every status of the table is a member of ExitStatus, and the other way round.
    listed = {int(m) for m in re.findall(r"^  (\d+) ", EXIT_STATUS_TABLE, re.MULTILINE)}
    assert listed == {int(s) for s in ExitStatus}


def test_commands_that_print_data_take_output() -> None:
    parser = build_parser()
    for words, command in walk(parser):
        if words in {
            ("auth", "parse"), ("auth", "encode"), ("auth", "decode"), ("domain", "init"),
            ("domain", "policy"), ("domain", "principal"), ("domain", "audit"), ("domain", "show"),
            ("domain", "revoke"), ("domain", "crl"), ("domain", "directive"), ("host", "show"),
            ("host", "init"),
            ("list",), ("stop",), ("kill",),
        }:  # fmt: skip
            assert "--output" in command.format_help(), words


# -- shell completion -------------------------------------------------------------------


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers for ``taonet WORDS<TAB>`` (the last word being completed)."""
    line = " ".join(f"'{w}'" for w in ("taonet", *words))
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words)}\n"
        "_taonet\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert result.stderr == ""
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture
def bash_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, err = taonet_main(capsys, "completion", "bash")
    assert (code, err) == (0, "")
    assert out == bash_script(build_parser())
    path = tmp_path / "taonet.bash"
    path.write_text(out)
    return path


def test_bash_completion_in_a_real_bash(bash_completion: Path) -> None:
    assert complete(bash_completion, "do") == ["domain", "domain-service"]
    assert complete(bash_completion, "domain", "") == [
        "init", "policy", "show", "principal", "audit", "revoke", "crl", "directive", "-h",
        "--help",
    ]  # fmt: skip
    assert complete(bash_completion, "domain", "directive", "--op", "") == [
        "Read", "Write", "Create", "Delete", "Own",
    ]  # fmt: skip
    assert complete(bash_completion, "domain", "po") == ["policy"]
    assert complete(bash_completion, "domain", "policy", "--re") == [
        "--remove-program", "--retract", "--remove-rule", "--remove-host", "--resign",
        "--remove-manufacturer-ca",
    ]  # fmt: skip
    assert complete(bash_completion, "domain", "init", "--guard", "") == [
        "ACL", "Liberal", "Conservative",
    ]  # fmt: skip
    assert complete(bash_completion, "list", "-o", "j") == ["json"]
    assert complete(bash_completion, "completion", "") == ["bash", "zsh", "-h", "--help"]
    # An option's value that happens to be a command's name is not taken for one.
    assert complete(bash_completion, "domain", "audit", "--domain", "policy", "--li") == ["--limit"]


def test_bash_completion_of_a_file_option(bash_completion: Path, tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("")
    offered = complete(bash_completion, "domain", "policy", "--add-program", f"{tmp_path}/ser")
    assert offered == [f"{tmp_path}/server.py"]


def test_zsh_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = taonet_main(capsys, "completion", "zsh")
    assert code == 0
    assert out == zsh_script(build_parser())
    assert out.startswith("#compdef taonet\n")
    assert "'domain policy') compadd -- " in out
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed: its script is checked only for its shape")
    path = tmp_path / "_taonet"
    path.write_text(out)
    subprocess.run([zsh, "-n", str(path)], check=True, timeout=60)

    def offered(*words: str) -> list[str]:
        """What _taonet hands compadd for ``taonet WORDS`` (zsh then filters by prefix)."""
        program = (
            'compdef() { :; }; compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }\n'
            "_files() { print FILES; }\n"
            f"source {path}\n"
            f"words=({' '.join(repr(w) for w in ('taonet', *words))}); CURRENT={len(words) + 1}\n"
            "_taonet\n"
        )
        result = subprocess.run(
            [zsh, "-f", "-c", program], capture_output=True, text=True, timeout=60, check=True
        )
        assert result.stderr == ""
        return result.stdout.split()

    assert {"domain", "domain-service", "list", "completion"} <= set(offered("do"))
    assert offered("domain", "") == [
        "init", "policy", "show", "principal", "audit", "revoke", "crl", "directive", "-h",
        "--help",
    ]  # fmt: skip
    assert offered("domain", "init", "--guard", "") == ["ACL", "Liberal", "Conservative"]
    assert offered("domain", "policy", "--add-program", "") == ["FILES"]
