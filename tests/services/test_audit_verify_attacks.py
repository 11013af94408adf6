"""``taonet audit verify``: the outside review's attacks on the verifier (A4), repeated.

Each test does what an attacker with write access to a real secret server's database
does (``sqlite3``), then runs the real command: a forged entry appended after the
last checkpoint to excuse a rollback (F1), a check run with no trusted signer over a
chain rewritten and re-signed by another key (F8), another program's certificate
offered as the server's (F7), rows whose columns hold values of other types (F9),
rows with BLOB names that made the paging loop forever (F10).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from taonet.audit import GENESIS, AuditEntry, decode_details, encode_details, sign_checkpoint
from taonet.crypto import Signer
from taonet.secrets import connect
from taonet_services.secret_server import CERT_FILE
from tests.conftest import MakeDomain, MakeHost
from tests.secrets.world import World, secret_world
from tests.services.test_audit_against_rows import (
    OWNER,
    copy_of,
    put_back,
    server_key,
    sql,
    verify,
)

REFUSED = 4
USAGE = 2


def document(out: str) -> Any:
    return json.loads(out[out.index("{\n") :])


def forge_entry(path: Path, *, kind: str, subject: str, details: dict[str, str]) -> int:
    """Append an entry at the chain's head that links (entry hashes use no key)."""
    with sql(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        seq, head, cps, tns = conn.execute(
            "SELECT seq, entry_hash, checkpoint_seq, time_ns FROM audit_entries"
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        entry = AuditEntry(
            seq=seq + 1,
            time_ns=tns + 1,
            kind=kind,
            actor="forged",
            subject=subject,
            outcome="ok",
            details=details,
            prev_hash=bytes(head),
            checkpoint_seq=cps,
        )
        conn.execute(
            "INSERT INTO audit_entries (seq, time_ns, kind, actor, subject, outcome, details,"
            " prev_hash, entry_hash, checkpoint_seq) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                entry.seq,
                entry.time_ns,
                entry.kind,
                entry.actor,
                entry.subject,
                entry.outcome,
                encode_details(entry.details),
                entry.prev_hash,
                entry.hash,
                entry.checkpoint_seq,
            ),
        )
        conn.execute("COMMIT")
    return entry.seq


def rewrite_chain(path: Path, signer: Signer, tags: dict[str, str]) -> None:
    """Rewrite the whole chain: the ``tag`` of each subject in ``tags`` replaced, every
    hash recomputed, every checkpoint signed again with ``signer``."""
    with sql(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        entries = conn.execute(
            "SELECT seq, time_ns, kind, actor, subject, outcome, details, checkpoint_seq"
            " FROM audit_entries ORDER BY seq"
        ).fetchall()
        prev, hashes = GENESIS, {}
        for seq, tns, kind, actor, subject, outcome, details, cps in entries:
            fields = decode_details(details)
            if subject in tags and "tag" in fields:
                fields["tag"] = tags[subject]
            entry = AuditEntry(
                seq=seq,
                time_ns=tns,
                kind=kind,
                actor=actor,
                subject=subject,
                outcome=outcome,
                details=fields,
                checkpoint_seq=cps,
                prev_hash=prev,
            )
            prev = hashes[seq] = entry.hash
            conn.execute(
                "UPDATE audit_entries SET details = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
                (encode_details(entry.details), entry.prev_hash, entry.hash, seq),
            )
        for cid, seq, tns in conn.execute(
            "SELECT id, seq, time_ns FROM audit_checkpoints"
        ).fetchall():
            cp = sign_checkpoint(signer, seq=seq, head_hash=hashes[seq], time_ns=tns)
            conn.execute(
                "UPDATE audit_checkpoints SET head_hash = ?, signer = ?, signer_key = ?,"
                " signature = ? WHERE id = ?",
                (cp.head_hash, cp.signer, cp.signer_key, cp.signature, cid),
            )
        conn.execute("COMMIT")


async def payroll_world(world: World, base: Path) -> tuple[Path, Path, Any]:
    """v1 written then v2 (read once); the database, the server's key, a copy of v1."""
    async with connect(world.address, await world.identity("owner")) as store:
        await store.create("/app/payroll", b"v1")
        db = world.domain.path / "secrets.db"
        v1 = copy_of(db, "/app/payroll")
        await store.write("/app/payroll", b"v2")
        await store.create("/app/gone", b"g")
        assert (await store.read("/app/payroll")).value == b"v2"
    return db, server_key(world, base), v1


async def test_a_forged_entry_after_the_last_checkpoint_excuses_no_rollback(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, key, v1 = await payroll_world(world, tmp_path)
        # The server stopped and signed its last checkpoint: the whole log is covered.
        trust = ("--db", str(db), "--key", str(key), "--against-rows")
        status, out, err = await verify(capsys, *trust)
        assert (status, err) == (0, ""), out
        # The attack: a 'secret_written' naming v1's tag appended (it links), v1 put
        # back; and /app/gone deleted by hand, with a 'secret_deleted' forged for it.
        forged = forge_entry(
            db,
            kind="secret_written",
            subject="/app/payroll#1",
            details={"peer": "x", "tag": bytes(v1[0][2]).hex()},
        )
        put_back(db, "/app/payroll", v1)
        with sql(db) as conn:
            conn.execute("DELETE FROM secret_objects WHERE name = '/app/gone'")
            conn.execute("DELETE FROM secret_names WHERE name = '/app/gone'")
        deleted = forge_entry(
            db, kind="secret_deleted", subject="/app/gone", details={"epochs": "1"}
        )
        status, out, err = await verify(capsys, *trust, "-o", "json")
        assert status == REFUSED, out
        rows = document(out)["rows"]
        assert {(m["kind"], m["name"], m["seq"]) for m in rows["reported"]} == {
            ("unverifiable", "/app/payroll", forged),
            ("unverifiable", "/app/gone", deleted),
        }
        assert "after the last trusted checkpoint" in rows["reported"][0]["detail"]
        assert "rows do not match the chain: 2 mismatches (first: unverifiable" in err


async def test_against_rows_needs_a_trusted_signer(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, key, v1 = await payroll_world(world, tmp_path)
        # The attack: v1 put back, the chain rewritten to say v1 was the last write and
        # every hash recomputed, every checkpoint signed again with the attacker's key.
        put_back(db, "/app/payroll", v1)
        old_tag = bytes(v1[0][2]).hex()
        rewrite_chain(db, Signer.generate(), {"/app/payroll#1": old_tag})
        capsys.readouterr()  # the server's log
        # Without a trusted signer the check is not run: one line, exit 2.
        status, out, err = await verify(capsys, "--db", str(db), "--against-rows")
        assert (status, out) == (USAGE, "")
        assert err.startswith("taonet: error: --against-rows needs the secret server's"), err
        assert "--cert STATE/secret-server.crt" in err
        assert len(err.splitlines()) == 1
        # With the server's key, the rewritten chain is refused.
        status, out, err = await verify(
            capsys, "--db", str(db), "--key", str(key), "--against-rows"
        )
        assert status == REFUSED
        assert "not a trusted key" in err


async def test_another_programs_certificate_is_not_the_servers(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, _, v1 = await payroll_world(world, tmp_path)
            owner = await world.identity("owner")
            assert owner.certificate is not None
            assert owner.signer is not None
            server_cert = world.base / "server" / CERT_FILE
            # The server's own certificate: trusted, and its principal always printed.
            assert world.running is not None
            await world.running.server.audit.checkpoint()  # signs the head, if not yet
            capsys.readouterr()
            status, out, err = await verify(
                capsys,
                "--domain",
                str(world.domain.path),
                "--db",
                str(db),
                "--cert",
                str(server_cert),
                "--against-rows",
            )
            assert (status, err) == (0, ""), out
            with sql(db) as conn:
                ((principal,),) = conn.execute("SELECT principal FROM secret_master").fetchall()
            assert f"checked against the program certificate of {principal} (--cert)" in out
            status, out, _ = await verify(
                capsys,
                "--domain",
                str(world.domain.path),
                "--db",
                str(db),
                "--cert",
                str(server_cert),
                "-o",
                "json",
            )
            assert status == 0
            assert document(out)["trusted_servers"] == [
                {"cert": str(server_cert), "principal": principal}
            ]
            client = tmp_path / "owner.crt"
            client.write_bytes(
                x509.load_der_x509_certificate(owner.certificate.der).public_bytes(
                    serialization.Encoding.PEM
                )
            )
        d = str(world.domain.path)
        capsys.readouterr()  # the server's log
        # The attack: v1 put back, the chain rewritten and signed again with the
        # client's key (any program of the domain has a certificate that verifies),
        # and that certificate offered as the server's.
        put_back(db, "/app/payroll", v1)
        rewrite_chain(db, owner.signer, {"/app/payroll#1": bytes(v1[0][2]).hex()})
        status, out, err = await verify(
            capsys, "--domain", d, "--db", str(db), "--cert", str(client), "--against-rows"
        )
        assert (status, out) == (REFUSED, "")
        assert f"--cert {client}: " in err
        assert "is not a secret server of" in err
        assert "secret_master" in err
        assert len(err.splitlines()) == 1


CRAFTED = {
    "text tag": "UPDATE secret_objects SET tag = 'not a blob' WHERE name = '/app/payroll'",
    "text protector epoch": (
        "UPDATE secret_objects SET protector_epoch = 'x' WHERE name = '/app/payroll'"
    ),
    "empty tag": "UPDATE secret_objects SET tag = x'' WHERE name = '/app/payroll'",
    "real epoch": (
        "INSERT INTO secret_objects SELECT name, 99999999999999999999, protector_name,"
        " protector_epoch, tag, blob, mac FROM secret_objects WHERE name = '/app/payroll'"
    ),
}


async def test_rows_of_other_types_are_reported_not_a_crash(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, key, _ = await payroll_world(world, tmp_path)
        for what, edit in CRAFTED.items():
            copy = tmp_path / f"{what}.db"
            shutil.copyfile(db, copy)
            with sql(copy) as conn:
                conn.execute(edit)
            status, out, err = await verify(
                capsys, "--db", str(copy), "--key", str(key), "--against-rows", "-o", "json"
            )
            assert status == REFUSED, (what, err)
            assert "Traceback" not in err
            rows = document(out)["rows"]
            assert rows["by_kind"]["corrupt_row"] == 1, (what, rows)
            (bad,) = [m for m in rows["reported"] if m["kind"] == "corrupt_row"]
            assert bad["name"] == "/app/payroll", what


async def test_a_thousand_blob_names_do_not_make_verify_page_forever(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, key, _ = await payroll_world(world, tmp_path)
        with sql(db) as conn:
            conn.execute("BEGIN")
            for i in range(1001):  # more than a page (1,000): paged on str(name) they looped
                conn.execute(
                    "INSERT INTO secret_objects SELECT ?, epoch, protector_name,"
                    " protector_epoch, tag, blob, mac FROM secret_objects"
                    " WHERE name = '/app/payroll'",
                    (b"/x/%d" % i,),
                )
            conn.execute("COMMIT")
        # A real process, so that a verify that loops is stopped by the bound.
        argv = [sys.executable, "-m", "taonet", "audit", "verify", "--db", str(db)]
        done = await trio.run_process(
            [*argv, "--key", str(key), "--against-rows", "-o", "json"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == REFUSED, done.stderr[-500:]
    rows = document(done.stdout.decode())["rows"]
    assert rows["by_kind"]["corrupt_row"] == 1001
    assert rows["rows"] == 1001 + 2  # /app/payroll and /app/gone are held as usual
    assert rows["by_kind"]["rolled_back"] == 0
    shown = [m for m in rows["reported"] if m["kind"] == "corrupt_row"]
    assert len(shown) == 100
    assert shown[0]["name"].startswith("b'/x/")
