"""``taonet domain policy``: removing programs and rules, and rules checked before they are kept.

Every edit is signed again with the policy key (domain.sig), so a removal made by
hand is refused at the next load, and one made with the command is accepted; a rule
the guard could never match, or one it already holds, is refused before the
password is asked for and leaves every file as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taonet import ConfigError
from taonet.domain import ACLGuard, Domain, measure_file
from tests.cli.cli_helpers import init_domain, policy, taonet_main


@pytest.fixture
def domain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, str]:
    return init_domain(capsys, tmp_path / "dom")


def program(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f"print({body!r})\n")
    return path


def files(d: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def rules(d: str) -> tuple[str, ...]:
    guard = Domain.load(d).guard
    assert isinstance(guard, ACLGuard)
    return tuple(str(rule) for rule in guard.rules)


def test_remove_program_by_file_and_by_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: tuple[str, str]
) -> None:
    d, pw = domain
    one, two = program(tmp_path, "one.py", "1"), program(tmp_path, "two.py", "2")
    assert policy(capsys, d, pw, "--add-program", str(one), "--add-program", str(two))[0] == 0
    serial = Domain.load(d).config_serial
    one_rule, two_rule = rules(d)
    assert measure_file(one).hex() in one_rule

    code, out, err = policy(capsys, d, pw, "--remove-program", str(one), "-o", "json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["removed"] == [one_rule]
    assert report["added"] == []
    assert report["rules"] == [two_rule]
    # Signed again: the loaded domain (which checks domain.sig) has the new rules.
    assert rules(d) == (two_rule,)
    assert Domain.load(d).config_serial > serial

    # A program file that is gone is removed by the hash --show prints.
    digest = measure_file(two).hex()
    two.unlink()
    code, out, err = policy(capsys, d, pw, "--remove-program", digest)
    assert (code, err) == (0, ""), err
    assert "1 -> 0 rules" in out
    assert rules(d) == ()


def test_removing_what_is_not_there_is_not_found_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: tuple[str, str]
) -> None:
    d, pw = domain
    kept = program(tmp_path, "kept.py", "kept")
    other = program(tmp_path, "other.py", "other")
    assert policy(capsys, d, pw, "--add-program", str(kept))[0] == 0
    before = files(d)
    for args, message in [
        (("--remove-program", str(other)), "no rule authorizes it"),
        (("--remove-program", str(tmp_path / "missing.py")), "no such file"),
        (("--remove-program", "ab" * 32), "no rule authorizes it"),
        (("--remove-rule", 'Authorized(key([0a]), "Read")'), "has no rule"),
        # One bad removal among good ones: nothing at all is changed.
        (("--remove-program", str(kept), "--retract", 'Authorized(key([0a]), "x")'), "no rule"),
    ]:
        code, out, err = policy(capsys, d, pw, *args)
        assert code == 3, (args, err)
        assert (out, err.count("\n")) == ("", 1)
        assert message in err, err
        assert files(d) == before


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("true", "is not an Authorized"),
        ('P(key([0a]), "Execute")', "is not an Authorized"),
        ('Authorized(key([0a]), "Read") and true', "is not an Authorized"),
        ("Authorized(key([0a]))", "needs a principal and an operation"),
        ('Authorized("someone", "Read")', "must be a principal"),
        ('Authorized(5, "Read")', "must be a principal"),
        ('Authorized(key([0a]), "")', "must be the operation"),
        ("Authorized(key([0a]), 5)", "must be the operation"),
        ('Authorized(key([0a]), "Read"', "is not a formula"),
    ],
)
def test_allow_refuses_what_the_guard_could_never_match(
    capsys: pytest.CaptureFixture[str], domain: tuple[str, str], rule: str, why: str
) -> None:
    d, pw = domain
    before = files(d)
    code, out, err = policy(capsys, d, pw, "--allow", rule)
    assert code == 2, err
    assert (out, err.count("\n")) == ("", 1)
    assert why in err, err
    assert files(d) == before


def test_allow_refuses_duplicates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: tuple[str, str]
) -> None:
    d, pw = domain
    rule = 'Authorized(key([0a0b]), "Read")'
    app = program(tmp_path, "app.py", "app")
    assert policy(capsys, d, pw, "--allow", rule, "--add-program", str(app))[0] == 0
    before = files(d)
    for args in [
        ("--allow", rule),
        ("--allow", 'Authorized( key([0A0B]) ,  "Read")'),  # the same rule, spelled otherwise
        ("--allow", 'Authorized(key([0c]), "Read")', "--allow", 'Authorized(key([0c]), "Read")'),
        ("--add-program", str(app)),
    ]:
        code, _, err = policy(capsys, d, pw, *args)
        assert code == 2, (args, err)
        assert "already" in err
        assert files(d) == before
    assert len(rules(d)) == 2
    # A principal tail with an extension is a well-formed rule (what --add-program writes).
    tail = 'Authorized(ext.Program([0102]), "Execute")'
    assert policy(capsys, d, pw, "--allow", tail)[0] == 0
    assert len(rules(d)) == 3


def test_a_removal_made_by_hand_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, domain: tuple[str, str]
) -> None:
    """The attacker's removal: copying an older, validly signed acls file back."""
    d, pw = domain
    app = program(tmp_path, "app.py", "app")
    old_acls = (Path(d) / "acls").read_bytes()
    assert policy(capsys, d, pw, "--add-program", str(app))[0] == 0
    (Path(d) / "acls").write_bytes(old_acls)
    with pytest.raises(ConfigError, match="acls"):
        Domain.load(d)
    code, _, err = taonet_main(capsys, "domain", "policy", "--domain", d, "--show")
    assert code == 1
    assert "acls" in err


def test_guards_without_rules_refuse_edits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d, pw = init_domain(capsys, tmp_path / "liberal", "--guard", "Liberal")
    code, _, err = policy(capsys, d, pw, "--remove-program", "ab" * 32)
    assert code == 2
    assert "Liberal guard, which has no rules" in err
