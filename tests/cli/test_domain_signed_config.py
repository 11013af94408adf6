"""`taonet domain policy` and `domain-service` on a domain whose domain.toml was edited.

The attack: someone who can write to the domain directory sets ``guard = "Liberal"``
in ``domain.toml``, or puts back an earlier ``acls`` and ``domain.sig`` the policy key
signed (a retracted rule in force again). The CLI must refuse the domain (one line,
exit 2) instead of reporting it as chosen, the domain service must not start, and only
the policy key (``--resign`` with its password) can accept the edit.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from taonet import ConfigError
from taonet.cli import main
from taonet.domain import Domain, LiberalGuard
from tests.cli.cli_helpers import password_file, plain, run, taonet_main


def init_domain(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[str, str]:
    pw = str(password_file(tmp_path))
    d = str(tmp_path / "dom")
    code, _, err = taonet_main(capsys, "domain", "init", d, "--password-file", pw, *args)
    assert (code, err) == (0, ""), err
    return d, pw


def set_guard(d: str, old: str, new: str) -> None:
    toml = Path(d) / "domain.toml"
    text = toml.read_text()
    assert f'guard = "{old}"' in text
    toml.write_text(text.replace(f'guard = "{old}"', f'guard = "{new}"'))


def test_changing_a_hand_edited_domain_is_refused_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d, pw = init_domain(capsys, tmp_path)
    set_guard(d, "ACL", "Conservative")
    before = {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}
    code, _, err = taonet_main(
        capsys, "domain", "policy", "--domain", d, "--allow", "true", "--password-file", pw
    )
    assert code == 1  # a broken configuration
    assert "domain.guard is 'Conservative'" in err
    assert {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()} == before


def test_every_policy_change_resigns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d, pw = init_domain(capsys, tmp_path)
    program = tmp_path / "app.py"
    program.write_text("print('hello')\n")
    serials = [Domain.load(d).config_serial]
    for change in (
        ("--add-program", str(program)),
        ("--allow", 'Authorized(key([0a0b]), "Read")'),
        ("--retract", 'Authorized(key([0a0b]), "Read")'),
    ):
        code, _, err = taonet_main(
            capsys, "domain", "policy", "--domain", d, *change, "--password-file", pw
        )
        assert (code, err) == (0, "")
        serials.append(Domain.load(d).config_serial)
    assert serials == [1, 2, 3, 4]


def test_resign_accepts_an_intended_edit_with_the_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d, pw = init_domain(capsys, tmp_path)
    set_guard(d, "ACL", "Liberal")
    (tmp_path / "other").mkdir()
    wrong = str(password_file(tmp_path / "other", "wrong"))
    code, _, err = taonet_main(
        capsys, "domain", "policy", "--domain", d, "--resign", "--password-file", wrong
    )
    assert code == 4  # refused: wrong password
    assert err.count("\n") == 1
    with pytest.raises(ConfigError, match=r"domain\.guard is 'Liberal'"):
        Domain.load(d)

    code, out, err = taonet_main(
        capsys, "domain", "policy", "--domain", d, "--resign", "--show", "--password-file", pw
    )
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0].startswith("signed the configuration of ")
    assert lines[0].endswith("(serial 2)")
    assert "  domain.guard is 'Liberal' but the policy key signed 'ACL'" in lines
    assert lines[-1] == "Liberal guard (no rules)"
    assert isinstance(Domain.load(d).guard, LiberalGuard)

    code, out, _ = taonet_main(
        capsys, "domain", "policy", "--domain", d, "--resign", "--password-file", pw
    )
    assert code == 0
    assert out.splitlines()[1:] == ["  no change from the previous signature"]


def test_resign_takes_no_other_changes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d, pw = init_domain(capsys, tmp_path)
    code, _, err = taonet_main(
        capsys,
        "domain",
        "policy",
        "--domain",
        d,
        "--resign",
        "--allow",
        "true",
        "--password-file",
        pw,
    )
    assert code == 2
    assert "--resign takes no" in err


def test_a_domain_from_an_earlier_taonet_is_refused_until_resigned(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d, pw = init_domain(capsys, tmp_path, "--guard", "Liberal")
    (Path(d) / "domain.sig").unlink()
    code, _, err = taonet_main(capsys, "domain", "policy", "--domain", d, "--show")
    assert code == 1  # a broken configuration
    assert "no domain.sig" in err
    assert f"taonet domain policy --domain {d} --resign" in err
    assert main(["domain", "policy", "--domain", d, "--resign", "--password-file", pw]) == 0
    assert "no earlier signature" in capsys.readouterr().out
    assert (
        taonet_main(capsys, "domain", "policy", "--domain", d, "--show")[1]
        == "Liberal guard (no rules)\n"
    )


RULE = 'Authorized(key([0a0b]), "Read")'


def allowed_then_retracted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, str]:
    """A domain whose operator allowed RULE (serial 2), then retracted it (serial 3), and
    whose acls and domain.sig of serial 2 an attacker has put back."""
    d, pw = init_domain(capsys, tmp_path)
    policy = ("domain", "policy", "--domain", d, "--password-file", pw)
    assert taonet_main(capsys, *policy, "--allow", RULE)[0] == 0
    allowed = {n: (Path(d) / n).read_bytes() for n in ("acls", "domain.sig")}
    assert taonet_main(capsys, *policy, "--retract", RULE)[0] == 0
    for name, data in allowed.items():
        (Path(d) / name).write_bytes(data)
    return d, pw


def test_resign_after_a_rollback_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d, pw = allowed_then_retracted(capsys, tmp_path)
    code, out, err = taonet_main(
        capsys, "domain", "policy", "--domain", d, "--resign", "--password-file", pw
    )
    assert (code, err) == (0, ""), err
    assert out.splitlines() == [
        f"signed the configuration of {d} (serial 4)",
        "  the earlier signature (serial 2) is older than serial 3 signed before: the "
        "domain's files had been rolled back",
    ]
    assert Domain.load(d).config_serial == 4


def hand_edited(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, str]:
    """A domain whose domain.toml someone set to the Liberal guard behind the policy key."""
    d, pw = init_domain(capsys, tmp_path)
    set_guard(d, "ACL", "Liberal")
    return d, pw


@attrs.frozen
class Tampered:
    """A domain tampered with one way, and what the CLI and the service must say of it."""

    d: str
    pw: str
    #: What `domain policy --show` must say: the refusal, and the hint towards --resign.
    refusal: str
    hint: str
    #: What the domain service must say.
    service_refusal: str


@pytest.fixture(params=["hand-edited-guard", "rolled-back"])
def tampered(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Tampered:
    if request.param == "hand-edited-guard":
        d, pw = hand_edited(capsys, tmp_path)
        refusal = "domain.guard is 'Liberal' but the policy key signed 'ACL'"
        return Tampered(d, pw, refusal, "--resign", refusal)
    d, pw = allowed_then_retracted(capsys, tmp_path)
    return Tampered(
        d,
        pw,
        "domain configuration rolled back: serial 2 is older than 3 seen before",
        f"taonet domain policy --domain {d} --resign",
        "rolled back: serial 2 is older than 3",
    )


async def test_show_refuses_a_tampered_domain_in_a_real_process(tampered: Tampered) -> None:
    result = await run(plain("domain", "policy", "--domain", tampered.d, "--show"))
    assert result.returncode == 1  # a broken configuration
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith("taonet: error: ")
    assert err.count("\n") == 1
    assert tampered.refusal in err
    assert tampered.hint in err


async def test_the_domain_service_does_not_start_for_a_tampered_domain(tampered: Tampered) -> None:
    result = await run(
        plain(
            *("domain-service", "--domain", tampered.d, "--listen", "127.0.0.1:0"),
            *("--password-file", tampered.pw),
        )
    )
    assert result.returncode != 0
    err = result.stderr
    assert "Traceback" not in err
    assert tampered.service_refusal in err
