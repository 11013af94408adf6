"""taonet domain directive against review A5's F7 and F8, run as the real CLI.

F7: ``--show`` said "policy key or program" from fields as written: a policy
directive carrying the (unsigned) policy certificate was shown as a program's, and a
forgery naming the policy key as its speaker as the policy key's. F8: ``--from``
before 1970 or before year 1 passed every check and crashed after the password.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import trio

from taonet import auth
from taonet.crypto import DIRECTIVE_CONTEXT, Signer
from taonet.disclosure import DirectiveOp, sign_directive
from taonet.disclosure._schema import message_class, parse, serialize
from taonet.protected import ObjectId, encode_object_id

from ..cli.cli_helpers import make_domain, ok, one_line_error
from .test_directive_cli import DELEGATE, LIMIT, directive, show, unlock, write

HOUR = 3600 * 10**9


async def test_show_says_policy_key_only_for_a_verified_policy_directive(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain_dir = await make_domain(tmp_path)
        domain, policy = unlock(domain_dir)
        now = time.time_ns()
        raw = sign_directive(
            policy, op=DirectiveOp.READ, delegate=auth.parse_prin(DELEGATE),
            object_id=ObjectId("/app/key", 1), not_before=now - HOUR, not_after=now + HOUR,
        )  # fmt: skip
        # Anyone holding it can attach the policy certificate (it is not signed).
        msg = parse("directive_message", raw, limit=1 << 20, what="directive")
        msg.cert = domain.policy_cert
        with_cert = write(tmp_path / "with-cert", serialize(msg))
        shown = json.loads(ok(await show(domain_dir, with_cert, "-o", "json")))
        assert shown["verified"] is True
        assert shown["by_policy_key"] is True
        assert "(the policy key)" in ok(await show(domain_dir, with_cert))

        # A forgery: its statement names the policy key as speaker, another key signs.
        forger = Signer.generate()
        statement = auth.encode(
            auth.Says(
                domain.policy_principal,
                auth.Pred(
                    "Read",
                    (auth.parse_prin(DELEGATE), auth.Bytes(encode_object_id(ObjectId("/a", 1)))),
                ),
                time=now - HOUR,
                expiration=now + HOUR,
            )
        )
        forged = message_class("directive_message")(
            type=1,
            serialized_statement=statement,
            signer=auth.encode(auth.key_principal(forger.public_key_der())),
            signature=forger.sign(statement, DIRECTIVE_CONTEXT),
        )
        path = write(tmp_path / "forged", serialize(forged))
        result = await show(domain_dir, path, "-o", "json")
        assert result.returncode == 4
        shown = json.loads(result.stdout)
        assert shown["verified"] is False
        assert shown["by_policy_key"] is False
        text = await show(domain_dir, path)
        assert text.returncode == 4
        assert "(the policy key)" not in text.stdout


async def test_from_out_of_range_is_refused_before_the_password(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain = await make_domain(tmp_path)
        out = tmp_path / "d"
        never = tmp_path / "no-such-password-file"  # reached, it would fail otherwise
        base = ("--op", "Read", "--to", DELEGATE, "--object", "/app/key:1", "-o", out)
        for start in (
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "1969-12-31T23:59:59.5Z",
            "1900-01-01",
        ):
            result = await directive(domain, *base, "--from", start, "--password-file", never)
            one_line_error(result, "--from", returncode=2)
        assert not out.exists()


async def test_from_is_exact_to_the_microsecond(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        domain = await make_domain(tmp_path)
        moment = dt.datetime.now(dt.UTC).replace(microsecond=123457) - dt.timedelta(hours=1)
        since = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        expected = (since.days * 86400 + since.seconds) * 10**9 + 123457 * 1000
        signed = await directive(
            domain, "--op", "Read", "--to", DELEGATE, "--object", "/app/key:1",
            "--from", moment.isoformat(), "-o", tmp_path / "d", "-o", "json",
            "--password-file", tmp_path / "pw",
        )  # fmt: skip
        assert json.loads(ok(signed))["not_before_ns"] == expected
