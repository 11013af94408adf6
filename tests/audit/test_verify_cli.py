"""``taonet audit verify`` against logs an attacker edited, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cryptography.hazmat.primitives import serialization

from taonet.audit import GENESIS, sign_checkpoint
from taonet.cli import main
from taonet.crypto import Signer
from taonet_services.domain_service import AuditLog
from taonet_services.storage import AuditStore, Database
from tests.conftest import PASSWORD, MakeDomain
from tests.sqlite_helpers import sqlite_connection

REFUSED = 4
KEY = Signer.generate()
OTHER = Signer.generate()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["audit", "verify", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def issue(log: AuditLog, serial: int) -> None:
    log.record_issued(
        serial=serial,
        principal=f"key([{serial:02x}]).Program([aa])",
        key_hash_hex="ab" * 32,
        not_before_ns=1,
        not_after_ns=2,
        peer="127.0.0.1:1",
        attestation_sha256_hex="cd" * 32,
    )


@pytest.fixture
def domain_log(make_domain: MakeDomain) -> Path:
    """A domain whose audit log has 150 entries: checkpoints at 100 and, on close, 150."""
    domain = make_domain()
    with AuditLog.open(domain.path / "audit.sqlite", signer=domain.unlock(PASSWORD)) as log:
        for serial in range(1, 141):
            issue(log, serial)
        for i in range(5):
            log.record_refused(
                principal=None,
                reason_code="unauthorized",
                reason=f"no {i}",
                peer="10.0.0.9:1",
                attestation_sha256_hex=None,
            )
        log.record_refusal_summary(
            peer="10.0.0.9", codes={"rate_limited": 9}, first_ns=1, last_ns=2
        )
        for serial in (3, 4, 5, 6):
            log.revoke(serial, reason="compromised")
    return domain.path


def sqlite_tamper(path: Path, *statements: str) -> None:
    """What someone who can write the file does: drop the accident guards, then edit."""
    with sqlite_connection(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_entries_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_entries_no_delete")
        for statement in statements:
            conn.execute(statement)


def test_a_domain_log_verifies_against_the_policy_key(
    domain_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--domain", str(domain_log))
    assert status == 0, err
    assert "150 entries, 2 checkpoints" in out
    assert "signed up to entry 150, checked against the domain's policy key" in out
    status, out, _ = run(capsys, "--domain", str(domain_log), "-o", "json")
    document = json.loads(out)
    assert document["entries"] == document["head_seq"] == document["last_checkpoint_seq"] == 150
    assert document["trusted"] is True
    assert document["unsigned_entries"] == 0


@pytest.mark.parametrize(
    ("statement", "seq", "why"),
    [
        (
            "UPDATE audit_entries SET details = replace(details, '\"8\"', '\"9\"') WHERE seq = 8",
            8,
            "edited",
        ),
        ("UPDATE audit_entries SET outcome = 'ok' WHERE seq = 141", 141, "edited"),
        ("UPDATE audit_entries SET time_ns = 1 WHERE seq = 60", 60, "edited"),
        ("DELETE FROM audit_entries WHERE seq = 70", 70, "removed"),
        ("DELETE FROM audit_entries WHERE seq >= 120", 120, "were removed"),
        ("UPDATE audit_entries SET seq = -1 WHERE seq = 20", 20, "removed"),
    ],
)
def test_a_tampered_domain_log_fails_and_says_where(
    domain_log: Path,
    capsys: pytest.CaptureFixture[str],
    statement: str,
    seq: int,
    why: str,
) -> None:
    sqlite_tamper(domain_log / "audit.sqlite", statement)
    status, out, err = run(capsys, "--domain", str(domain_log))
    assert status == REFUSED, (out, err)
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("taonet: error: audit log ")
    assert f"entr{'ies' if 'were' in why else 'y'} {seq}" in line
    assert why in line


def test_reordered_rows_fail(domain_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite_tamper(
        domain_log / "audit.sqlite",
        "UPDATE audit_entries SET seq = -1 WHERE seq = 30",
        "UPDATE audit_entries SET seq = 30 WHERE seq = 31",
        "UPDATE audit_entries SET seq = 31 WHERE seq = -1",
    )
    status, _, err = run(capsys, "--domain", str(domain_log))
    assert status == REFUSED
    assert "entry 30 was written after the entry now at 31" in err


def _rewrite(path: Path, *, edit_seq: int, signer: Signer, sign_at: tuple[int, ...]) -> None:
    """Edit one entry, recompute every later hash, re-sign checkpoints with ``signer``."""

    async def rewrite() -> None:
        db = await Database.open(path)
        try:
            entries = await AuditStore(db).entries()

            def forge(cur: Any) -> None:
                prev = GENESIS
                for entry in entries:
                    actor = "forger" if entry.seq == edit_seq else entry.actor
                    changed = attrs.evolve(entry, actor=actor, prev_hash=prev)
                    cur.execute(
                        "UPDATE audit_entries SET actor = ?, prev_hash = ?, entry_hash = ?"
                        " WHERE seq = ?",
                        (changed.actor, prev, changed.hash, entry.seq),
                    )
                    prev = changed.hash
                    if entry.seq in sign_at:
                        cp = sign_checkpoint(signer, seq=entry.seq, head_hash=prev, time_ns=1)
                        cur.execute(
                            "UPDATE audit_checkpoints SET head_hash = ?, time_ns = ?, signer = ?,"
                            " signer_key = ?, signature = ? WHERE seq = ?",
                            (
                                cp.head_hash,
                                cp.time_ns,
                                cp.signer,
                                cp.signer_key,
                                cp.signature,
                                cp.seq,
                            ),
                        )

            await db.transaction(forge)
        finally:
            await db.aclose()

    sqlite_tamper(path)  # the triggers go first
    trio.run(rewrite)


def test_checkpoints_forged_with_another_key_fail(
    domain_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The forger rewrites entry 10 and every later hash, then signs the checkpoints itself.
    path = domain_log / "audit.sqlite"
    _rewrite(path, edit_seq=10, signer=OTHER, sign_at=(100, 150))
    status, _, err = run(capsys, "--domain", str(domain_log))
    assert status == REFUSED
    assert "checkpoint 100 is signed by key(" in err
    assert "not a trusted key" in err
    # Without a trusted key the forgery is self-consistent: the output says it proves little.
    status, out, err = run(capsys, "--db", str(path))
    assert status == 0, err
    assert "not trusted" in out


def test_a_removed_checkpoint_fails(domain_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Entries 101 to 150 were written after checkpoint 100 and say so.
    sqlite_tamper(domain_log / "audit.sqlite", "DELETE FROM audit_checkpoints WHERE seq = 100")
    status, _, err = run(capsys, "--domain", str(domain_log))
    assert status == REFUSED
    assert "entry 101 was written after checkpoint 100, which is missing" in err


def test_what_cannot_be_seen_after_the_last_named_checkpoint(
    domain_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The limit: the newest checkpoint (no entry names it yet) can be removed, and then
    # the entries after the one before it edited. Verify says how far signatures reach.
    path = domain_log / "audit.sqlite"
    sqlite_tamper(path, "DELETE FROM audit_checkpoints WHERE seq = 150")
    _rewrite(path, edit_seq=120, signer=OTHER, sign_at=())
    status, out, _ = run(capsys, "--domain", str(domain_log))
    assert status == 0
    assert "signed up to entry 100" in out
    assert "entries 101 to 150 are after the last checkpoint: linked, not yet signed" in out


def test_missing_and_unknown_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "--db", str(tmp_path / "none.sqlite"))
    assert status == 3
    assert "no audit log at" in err
    assert not (tmp_path / "none.sqlite").exists()
    other = tmp_path / "other.sqlite"
    with sqlite_connection(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    status, _, err = run(capsys, "--db", str(other))
    assert status == 3
    assert "no audit chain in" in err
    status, _, err = run(capsys)
    assert status == 2


# The same on PostgreSQL.


@pytest.fixture
def pg_chain(postgres_url: str, tmp_path: Path) -> tuple[str, Path]:
    """40 entries on PostgreSQL signed every 10 by a server key; the key's PEM file."""

    async def fill() -> None:
        db = await Database.open(postgres_url)
        try:
            store = await AuditStore.open(db, signer=KEY, checkpoint_every=10)
            for i in range(40):
                await store.append(
                    kind="secret_read", actor="key([01])", subject=f"/s/{i}", outcome="ok"
                )
        finally:
            await db.aclose()

    trio.run(fill)
    pem = tmp_path / "server.pub"
    pem.write_bytes(
        KEY.verifier().public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return postgres_url, pem


def pg_tamper(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement.encode())


def test_postgres_log_verifies(
    pg_chain: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, pem = pg_chain
    status, out, err = run(capsys, "--db", url, "--key", str(pem))
    assert status == 0, err
    assert "40 entries, 4 checkpoints" in out
    assert "checked against key 1 (--key)" in out
    other = pem.parent / "other.pub"
    other.write_bytes(OTHER.public_key_der())
    status, _, err = run(capsys, "--db", url, "--key", str(other))
    assert status == REFUSED
    assert "not a trusted key" in err


@pytest.mark.parametrize(
    ("statement", "seq", "why"),
    [
        ("UPDATE audit_entries SET subject = '/s/x' WHERE seq = 12", 12, "edited"),
        ('UPDATE audit_entries SET details = \'{"a":"b"}\' WHERE seq = 3', 3, "edited"),
        ("DELETE FROM audit_entries WHERE seq = 25", 25, "removed"),
        ("DELETE FROM audit_entries WHERE seq > 33", 34, "were removed"),
    ],
)
def test_a_tampered_postgres_log_fails(
    pg_chain: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    statement: str,
    seq: int,
    why: str,
) -> None:
    url, pem = pg_chain
    pg_tamper(url, statement)
    status, _, err = run(capsys, "--db", url, "--key", str(pem))
    assert status == REFUSED, err
    assert f"entr{'ies' if 'were' in why else 'y'} {seq}" in err
    assert why in err
