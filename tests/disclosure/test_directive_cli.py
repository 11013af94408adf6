"""``taonet domain directive``: the real command in a subprocess, as an operator (or an
attacker holding a directive file) runs it."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
import trio

from taonet import auth, certs
from taonet.crypto import Signer
from taonet.disclosure import DirectiveOp, decode_directive, sign_directive
from taonet.domain import Domain, sign_domain_crl
from taonet.files import atomic_write
from taonet.protected import ObjectId

from ..cli.cli_helpers import PASSWORD, Result, isolated, make_domain, ok, one_line_error, run

DELEGATE = "key([0a0b]).Program([0c0d])"
LIMIT = 240  # seconds for a whole test: a dozen commands of a second or two


async def directive(domain: Path, *args: str | Path) -> Result:
    return await run(isolated("domain", "directive", "--domain", str(domain), *map(str, args)))


async def show(domain: Path, path: Path, *args: str) -> Result:
    return await directive(domain, "--show", path, *args)


def unlock(domain: Path) -> tuple[Domain, Signer]:
    loaded = Domain.load(domain)
    return loaded, loaded.unlock(PASSWORD.encode())


def write(path: Path, raw: bytes) -> Path:
    atomic_write(path, raw, mode=0o644)
    return path


async def test_sign_then_show(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain = await make_domain(tmp_path)
        pw = tmp_path / "pw"
        out = tmp_path / "d.directive"
        signed = await directive(
            domain, "--op", "Read", "--to", DELEGATE, "--object", "/app/key:3",
            "--until", "12h", "-o", out, "-o", "json", "--password-file", pw,
        )  # fmt: skip
        document = json.loads(ok(signed))
        assert document["verified"] is True
        assert document["by_policy_key"] is True
        assert document["delegate"] == DELEGATE
        assert document["object"] == {"name": "/app/key", "epoch": 3}
        span = document["not_after_ns"] - document["not_before_ns"]
        assert 12 * 3600 * 10**9 < span <= (12 * 3600 + 301) * 10**9  # 12 h + 5 min skew
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        # What the file holds is the directive the document describes.
        raw = decode_directive(out.read_bytes())
        assert raw.op is DirectiveOp.READ
        assert raw.object_id == ObjectId("/app/key", 3)
        assert str(raw.delegate) == DELEGATE
        assert raw.not_after == document["not_after_ns"]

        text = ok(await show(domain, out))
        for needle in (
            "op:         Read",
            f"delegate:   {DELEGATE}",
            "object:     /app/key:3",
            "(the policy key)",
            "check:      valid in domain",
        ):
            assert needle in text, text
        shown = json.loads(ok(await show(domain, out, "-o", "json")))
        assert shown["delegator"] == document["delegator"] == shown["signer"]
        assert shown["reason"] is None


async def test_program_is_named_as_domain_principal_names_it(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain = await make_domain(tmp_path)
        program = tmp_path / "client_v2.py"
        program.write_text("print('version 2')\n")
        host = "key([5a5a])"
        out = tmp_path / "v2.directive"
        signed = await directive(
            domain, "--op", "Read", "--program", program, "--host", host,
            "--object", "/app/key:1", "-o", out, "-o", "json",
            "--password-file", tmp_path / "pw",
        )  # fmt: skip
        named = await run(
            isolated(
                "domain", "principal", "--domain", str(domain), "--program", str(program),
                "--host", host, "-o", "json",
            )
        )  # fmt: skip
        expected = json.loads(ok(named))["principal"]
        assert json.loads(ok(signed))["delegate"] == expected
        assert str(decode_directive(out.read_bytes()).delegate) == expected
        # A program directory, named by its manifest and entry as the host would run it.
        tree = tmp_path / "app_v2"
        tree.mkdir()
        (tree / "run.sh").write_text("#!/bin/sh\necho version 2\n")
        (tree / "data.txt").write_text("v2\n")
        signed = await directive(
            domain, "--op", "Read", "--program", tree, "--entry", "run.sh", "--host", host,
            "--object", "/app/key:1", "-o", tmp_path / "tree.directive", "-o", "json",
            "--password-file", tmp_path / "pw",
        )  # fmt: skip
        named = await run(
            isolated(
                "domain", "principal", "--domain", str(domain), "--program", str(tree),
                "--entry", "run.sh", "--host", host, "-o", "json",
            )
        )  # fmt: skip
        assert json.loads(ok(signed))["delegate"] == json.loads(ok(named))["principal"]
        assert json.loads(ok(signed))["delegate"] != expected
        # With no host given and none running, it says what to give.
        no_host = await directive(
            domain, "--op", "Read", "--program", program, "--object", "/app/key:1",
            "-o", tmp_path / "x", "--password-file", tmp_path / "pw",
        )  # fmt: skip
        one_line_error(no_host, "--host PRIN", returncode=2)
        assert not (tmp_path / "x").exists()


async def test_refuses_what_it_must_not_sign(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain = await make_domain(tmp_path)
        pw = tmp_path / "pw"
        out = tmp_path / "d"
        base = ("--op", "Read", "--to", DELEGATE, "--object", "/app/key:1", "-o", out)
        cases = [
            (("--until", "never"), "a directive must end", 2),
            (("--until", "0"), "a directive must end", 2),
            (("--until", "367d"), "at most 366 days", 2),
            (("--until", "2001-01-01T00:00:00Z"), "future", 2),
            (("--from", "2d", "--until", "1d"), "before --until", 2),
        ]
        for extra, message, code in cases:
            one_line_error(
                await directive(domain, *base, *extra, "--password-file", pw), message,
                returncode=code,
            )  # fmt: skip
        for args, message in [
            (("--op", "Read", "--to", DELEGATE, "--object", "/app/key", "-o", out), "NAME:EPOCH"),
            (("--op", "Read", "--to", DELEGATE, "--object", "/app/key:0", "-o", out), "epoch"),
            (("--op", "Read", "--to", "not a principal", "--object", "/a:1", "-o", out), "--to"),
            (("--op", "Read", "--to", DELEGATE, "--object", "/app/key:1"), "-o FILE"),
            (("--op", "Read", "--object", "/app/key:1", "-o", out), "--to or --program"),
            (("--show", out, "-o", tmp_path / "other"), "--show FILE takes none"),
            (("--op", "Read", "--to", DELEGATE, "--object", "/a:1", "-o", out, "-o", "y"), "-o"),
        ]:
            one_line_error(await directive(domain, *args), message, returncode=2)
        # A wrong password signs nothing.
        wrong = tmp_path / "wrong"
        wrong.write_text("not the password\n")
        one_line_error(await directive(domain, *base, "--password-file", wrong), returncode=4)
        assert not out.exists()
        # Not a directive at all: bad data (1); no such file: not found (3).
        junk = write(tmp_path / "junk", b"\x0a\x05hello")
        one_line_error(await show(domain, junk), "directive", returncode=1)
        one_line_error(await show(domain, tmp_path / "absent"), "no such file", returncode=3)


async def test_show_refuses_forged_expired_foreign_and_revoked(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain_dir = await make_domain(tmp_path)
        domain, policy = unlock(domain_dir)
        now = time.time_ns()
        oid = ObjectId("/app/key", 1)
        delegate = auth.parse_prin(DELEGATE)

        # Expired: the domain really signed it, an hour ago, for half an hour.
        expired = write(
            tmp_path / "expired",
            sign_directive(
                policy, op=DirectiveOp.READ, delegate=delegate, object_id=oid,
                not_before=now - 3600 * 10**9, not_after=now - 1800 * 10**9,
            ),
        )  # fmt: skip
        result = await show(domain_dir, expired, "-o", "json")
        one_line_error(result, "expired", returncode=4)
        assert json.loads(result.stdout)["reason"] == "expired"

        # Edited after signing: another delegate, same length.
        genuine = sign_directive(
            policy, op=DirectiveOp.READ, delegate=delegate, object_id=oid,
            not_before=now - 10**9, not_after=now + 3600 * 10**9,
        )  # fmt: skip
        ok(await show(domain_dir, write(tmp_path / "genuine", genuine)))
        other = auth.encode(auth.parse_prin("key([0a0b]).Program([0c0e])"))
        forged = write(tmp_path / "forged", genuine.replace(auth.encode(delegate), other))
        one_line_error(await show(domain_dir, forged), "signature", returncode=4)

        # Signed by another domain's policy key.
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        other_domain = await make_domain(other_dir)
        _, foreign_key = unlock(other_domain)
        foreign = write(
            tmp_path / "foreign",
            sign_directive(
                foreign_key, op=DirectiveOp.READ, delegate=delegate, object_id=oid,
                not_after=now + 3600 * 10**9,
            ),
        )  # fmt: skip
        ok(await show(other_domain, foreign))
        line = one_line_error(await show(domain_dir, foreign), returncode=4)
        assert "not this domain's policy key" in line

        # Signed by a program of this domain (with its certificate); then it is revoked.
        program_key = Signer.generate()
        owner = auth.parse_prin("key([0a0b]).Program([0102])")
        issued = certs.issue_program_certificate(
            policy, domain.policy_anchor, program_key.public_key_der(), owner, now_ns=now
        )
        by_program = write(
            tmp_path / "by-program",
            sign_directive(
                program_key, op=DirectiveOp.READ, delegate=delegate, object_id=oid,
                not_after=now + 3600 * 10**9, cert=issued.der,
            ),
        )  # fmt: skip
        before = json.loads(ok(await show(domain_dir, by_program, "-o", "json")))
        assert before["certificate_serial"] == str(issued.serial)
        assert before["by_policy_key"] is False
        assert before["delegator"] == str(owner)
        assert "it grants only what it owns" in ok(await show(domain_dir, by_program))
        crl, _ = sign_domain_crl(
            domain_dir, policy, domain.policy_anchor, {issued.serial: now}, now_ns=now
        )
        atomic_write(domain_dir / "crl.der", crl, mode=0o644)
        result = await show(domain_dir, by_program, "-o", "json")
        one_line_error(result, "revoked", returncode=4)
        assert json.loads(result.stdout)["reason"] == "revoked"


@pytest.mark.parametrize("op", ["Write", "Own"])
async def test_every_operation_by_name(tmp_path: Path, op: str) -> None:
    with trio.fail_after(LIMIT):
        domain = await make_domain(tmp_path)
        out = tmp_path / "d"
        ok(
            await directive(
                domain, "--op", op, "--to", DELEGATE, "--object", "/k:2", "-o", out,
                "--password-file", tmp_path / "pw",
            )
        )  # fmt: skip
        assert decode_directive(out.read_bytes()).op.value == op
        # argparse's own refusal: its usage, then the error, exit 2.
        refused = await directive(domain, "--op", "Execute", "--to", DELEGATE, "--object", "/k:2")
        assert refused.returncode == 2
        assert "invalid choice: 'Execute'" in refused.stderr
