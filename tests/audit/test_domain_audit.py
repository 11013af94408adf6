"""The domain service's audit chain: the running service signs it; old logs carry over."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import trio

from taonet import AuthorizationError, ConfigError
from taonet.cli import main
from taonet.domain import ACLGuard
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.services.test_domain_service import BAD, GOOD, Service
from tests.sqlite_helpers import sqlite_connection

# The first layout of audit.sqlite (user_version 1), as taonet wrote it before the chain.
OLD_SCHEMA = (
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ns INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('issued', 'refused', 'revoked')),
        serial TEXT CHECK (serial IS NULL OR (serial <> '' AND serial NOT GLOB '*[^0-9]*')),
        principal TEXT,
        reason_code TEXT,
        reason TEXT,
        peer TEXT NOT NULL,
        detail TEXT NOT NULL,
        CHECK ((kind = 'refused') = (serial IS NULL))
    )
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be deleted'); END
    """,
)
T0 = 1_700_000_000_000_000_000
OLD_ROWS = [
    (
        T0 + 1,
        "issued",
        str(2**159),
        "key(prog)",
        None,
        None,
        "127.0.0.1:4000",
        {
            "key_hash_hex": "ab" * 32,
            "not_before_ns": T0,
            "not_after_ns": T0 + 10,
            "attestation_sha256_hex": "cd" * 32,
        },
    ),
    (T0 + 2, "refused", None, None, "unauthorized", "not allowed", "10.0.0.1:5", {}),
    (
        T0 + 3,
        "refused",
        None,
        None,
        "summarized",
        "12 refusals counted",
        "10.0.0.1",
        {"count": 12, "codes": {"rate_limited": 12}, "first_ns": T0, "last_ns": T0 + 3},
    ),
    (
        T0 + 4,
        "issued",
        "7",
        "key(other)",
        None,
        None,
        "127.0.0.1:4001",
        {
            "key_hash_hex": "ef" * 32,
            "not_before_ns": T0,
            "not_after_ns": T0 + 10,
            "attestation_sha256_hex": "01" * 32,
        },
    ),
    (T0 + 5, "revoked", str(2**159), "key(prog)", None, "key compromise", "", {}),
]


def old_log(path: Path) -> None:
    with sqlite_connection(path) as conn:
        for statement in OLD_SCHEMA:
            conn.execute(statement)
        for time_ns, kind, serial, principal, code, reason, peer, detail in OLD_ROWS:
            conn.execute(
                "INSERT INTO events (time_ns, kind, serial, principal, reason_code, reason,"
                " peer, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time_ns, kind, serial, principal, code, reason, peer, json.dumps(detail)),
            )
        conn.execute("PRAGMA user_version = 1")


def test_a_log_of_the_first_layout_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    old_log(path)
    with AuditLog.open(path) as log:
        events = log.events()
        assert [
            (e.time_ns, e.kind, e.serial, e.principal, e.reason_code, e.reason, e.peer)
            for e in events
        ] == [
            (t, k, None if s is None else int(s), p, c, r, peer)
            for t, k, s, p, c, r, peer, _ in OLD_ROWS
        ]
        assert [dict(e.detail) for e in events] == [d for *_, d in OLD_ROWS]
        assert log.revoked_serials() == {2**159}
        assert log.issued(7) == events[3]
        summary = log.store.verify_sync()
        assert summary.entries == len(OLD_ROWS) + 1  # and the carry-over marker
        # It goes on as a chain: the next entry links to the carried-over ones.
        log.revoke(7, reason="test")
        assert log.revoked_serials() == {2**159, 7}
        (marker,) = [
            e
            for e in log.store.db.transaction_sync(log.store.entries_in)
            if e.kind == "audit_carried_over"
        ]
        assert marker.details["events"] == str(len(OLD_ROWS))
    with sqlite_connection(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "events" not in tables
    # Opening again does not carry anything over twice.
    with AuditLog.open(path) as log:
        assert len(log.events()) == len(OLD_ROWS) + 1


def test_a_broken_log_of_the_first_layout_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    old_log(path)
    with sqlite_connection(path) as conn:
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("UPDATE events SET detail = 'not json' WHERE id = 2")
    with pytest.raises(ConfigError, match="event 2 of the old layout is malformed"):
        AuditLog.open(path)
    with sqlite_connection(path) as conn:  # rolled back: the old table is all still there
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(OLD_ROWS)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


async def test_the_running_service_signs_its_log_with_the_policy_key(
    make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = make_domain(name="audit-test")
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD))
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            svc = Service(domain, host, service, listeners[0].socket.getsockname()[1])
            with trio.fail_after(30):
                for _ in range(2):
                    await svc.certify(*await svc.request())
                att, key = await svc.request(BAD)
                with pytest.raises(AuthorizationError, match="unauthorized"):
                    await svc.certify(att, key)
            nursery.cancel_scope.cancel()
    # Closed: the shutdown checkpoint covers all three entries; the policy key signed it.
    status = await trio.to_thread.run_sync(main, ["audit", "verify", "--domain", str(domain.path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "3 entries, 1 checkpoints" in out
    assert "signed up to entry 3, checked against the domain's policy key" in out
    with sqlite_connection(domain.path / AUDIT_FILE) as conn:
        (signer,) = conn.execute("SELECT signer FROM audit_checkpoints").fetchone()
    assert signer == str(domain.policy_principal)
