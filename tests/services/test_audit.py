"""The domain service's audit log: append-only, 160-bit serials, revocation, errors."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from taonet import ConfigError
from taonet_services.domain_service._audit import (
    MAX_FIELD_CHARS,
    MAX_PEER_CHARS,
    SCHEMA_VERSION,
    SUMMARY_CODE,
    AuditEvent,
    AuditLog,
    IssuedCertificate,
    bounded,
    format_events,
)

KEY_HASH = "ab" * 32
ATTESTATION = "cd" * 32
T0 = 1_700_000_000_123_456_789


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 1_000_000_000
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite"


@pytest.fixture
def log(path: Path) -> Iterator[AuditLog]:
    with AuditLog.open(path, clock=FakeClock()) as opened:
        yield opened


def issue(log: AuditLog, serial: int, principal: str = "key(prog)") -> int:
    return log.record_issued(
        serial=serial,
        principal=principal,
        key_hash_hex=KEY_HASH,
        not_before_ns=T0,
        not_after_ns=T0 + 10**9,
        peer="127.0.0.1:4000",
        attestation_sha256_hex=ATTESTATION,
    )


def test_record_and_read_back(log: AuditLog) -> None:
    first = issue(log, 7)
    second = log.record_refused(
        principal="key(other)",
        reason_code="guard_denied",
        reason="not authorized to execute",
        peer="127.0.0.1:4001",
        attestation_sha256_hex=None,
    )
    third = log.record_refused(
        principal=None,
        reason_code="bad_attestation",
        reason="signature does not verify",
        peer="127.0.0.1:4002",
        attestation_sha256_hex=ATTESTATION.upper(),
    )
    assert first < second < third
    events = log.events()
    assert [e.id for e in events] == [first, second, third]
    assert events[0] == AuditEvent(
        id=first,
        time_ns=T0 + 10**9,
        kind="issued",
        serial=7,
        principal="key(prog)",
        reason_code=None,
        reason=None,
        peer="127.0.0.1:4000",
        detail={
            "key_hash_hex": KEY_HASH,
            "not_before_ns": T0,
            "not_after_ns": T0 + 10**9,
            "attestation_sha256_hex": ATTESTATION,
        },
    )
    assert events[1].kind == "refused"
    assert events[1].serial is None
    assert events[1].reason_code == "guard_denied"
    assert events[1].detail == {}
    assert events[2].principal is None
    assert events[2].detail == {"attestation_sha256_hex": ATTESTATION}
    assert log.issued(7) == events[0]
    assert log.issued(8) is None
    assert log.events(since_id=first) == events[1:]
    assert log.events(limit=1, since_id=first) == events[1:2]
    assert log.events(limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        log.events(limit=-1)


def test_events_are_immutable_values(log: AuditLog) -> None:
    issue(log, 1)
    (event,) = log.events()
    with pytest.raises(TypeError):
        event.detail["key_hash_hex"] = "00"  # type: ignore[index]
    assert hash(event) == hash(log.events()[0])


@pytest.mark.parametrize("serial", [0, 2**63, 2**64 + 1, 2**160 - 1])
def test_large_serials(log: AuditLog, serial: int) -> None:
    issue(log, serial)
    issue(log, serial - 1 if serial else 1)  # a neighbour must not be confused with it
    assert log.issued(serial) is not None
    assert log.issued(serial).serial == serial  # type: ignore[union-attr]
    assert log.revoke(serial, reason="key compromise")
    assert log.is_revoked(serial)
    assert not log.is_revoked(serial - 1 if serial else 1)
    assert log.revoked_serials() == frozenset({serial})


@pytest.mark.parametrize(("serial", "error"), [(-1, ValueError), (2**160, ValueError)])
def test_out_of_range_serials_are_refused(log: AuditLog, serial: int, error: type) -> None:
    with pytest.raises(error, match="serial"):
        issue(log, serial)
    with pytest.raises(TypeError):
        log.is_revoked(True)
    assert log.events() == []


def test_bad_hex_is_refused(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="key_hash_hex"):
        log.record_issued(
            serial=1,
            principal="p",
            key_hash_hex="not hex",
            not_before_ns=0,
            not_after_ns=1,
            peer="x",
            attestation_sha256_hex=ATTESTATION,
        )
    assert log.events() == []


def test_issuing_a_serial_twice_is_refused(log: AuditLog) -> None:
    issue(log, 5)
    with pytest.raises(ConfigError, match="serial 5 was already issued"):
        issue(log, 5)
    assert len(log.events()) == 1


def test_revoke_twice(log: AuditLog) -> None:
    issue(log, 42, principal="key(revokee)")
    assert not log.is_revoked(42)
    assert log.revoke(42, reason="key compromise") is True
    assert log.revoke(42, reason="again") is False
    assert log.is_revoked(42)
    revocations = [e for e in log.events() if e.kind == "revoked"]
    assert len(revocations) == 1
    assert revocations[0].serial == 42
    assert revocations[0].reason == "key compromise"
    assert revocations[0].principal == "key(revokee)"


def test_revoke_unknown_serial(log: AuditLog) -> None:
    issue(log, 1)
    with pytest.raises(ConfigError, match="no certificate with serial 2 was issued"):
        log.revoke(2, reason="typo")
    assert log.revoked_serials() == frozenset()
    assert len(log.events()) == 1


def test_persistence_across_reopen(path: Path) -> None:
    with AuditLog.open(path) as log:
        issue(log, 2**150)
        issue(log, 3)
        log.revoke(2**150, reason="rotated")
        before = log.events()
    with AuditLog.open(path) as log:
        assert log.events() == before
        assert log.revoked_serials() == frozenset({2**150})
        next_id = issue(log, 4)
        assert next_id > before[-1].id


def test_wal_mode_and_schema_version(path: Path) -> None:
    AuditLog.open(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET details = '{}'",
        "UPDATE audit_entries SET subject = 'forged' WHERE kind = 'cert_revoked'",
        "DELETE FROM audit_entries",
        "DELETE FROM audit_entries WHERE kind = 'cert_revoked'",
    ],
)
def test_append_only_triggers(path: Path, statement: str) -> None:
    with AuditLog.open(path) as log:
        issue(log, 1)
        log.revoke(1, reason="test")
        before = log.events()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
        conn.rollback()
    finally:
        conn.close()
    with AuditLog.open(path) as log:
        assert log.events() == before
        assert log.is_revoked(1)
        log.store.verify_sync()


def test_raw_insert_must_respect_the_schema(path: Path) -> None:
    AuditLog.open(path).close()
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO domain_certs (serial, issued_seq) VALUES ('0x10', 1)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO audit_entries (seq, time_ns) VALUES (1, 1)")
    finally:
        conn.close()


@pytest.mark.parametrize("version", [3, 99, -1])
def test_unknown_schema_version(path: Path, version: int) -> None:
    AuditLog.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    with pytest.raises(ConfigError, match=f"schema version {version} is not supported"):
        AuditLog.open(path)


def test_other_sqlite_database_is_refused(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="not a taonet audit log"):
        AuditLog.open(path)


@pytest.mark.parametrize(
    "garbage", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_corrupt_file(path: Path, garbage: bytes) -> None:
    path.write_bytes(garbage)
    with pytest.raises(ConfigError, match=r"audit\.sqlite: cannot open"):
        AuditLog.open(path)


def test_unopenable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        AuditLog.open(tmp_path / "missing-dir" / "audit.sqlite")


def test_closed_log_raises_config_error(path: Path) -> None:
    log = AuditLog.open(path)
    log.close()
    log.close()
    with pytest.raises(ConfigError, match="closed"):
        log.events()
    with pytest.raises(ConfigError, match="closed"):
        issue(log, 1)


def test_used_from_several_threads(path: Path) -> None:
    with AuditLog.open(path) as log:
        errors: list[BaseException] = []

        def work(base: int) -> None:
            try:
                for i in range(20):
                    issue(log, base + i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(1000 * n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert len(log.events()) == 80


def test_format_events(log: AuditLog) -> None:
    issue(log, 2**159, principal="key(prog)")
    log.record_refused(
        principal=None,
        reason_code="guard_denied",
        reason="not authorized\nfake line",
        peer="10.0.0.1:5",
        attestation_sha256_hex=None,
    )
    log.revoke(2**159, reason="key compromise")
    lines = format_events(log.events())
    big = "730750818665451459101842416358141509827966271488"
    assert str(2**159) == big
    assert lines == [
        f"2023-11-14T22:13:21.123456Z #1 issued  serial={big}"
        " principal=key(prog) peer=127.0.0.1:4000 reason=-",
        "2023-11-14T22:13:22.123456Z #2 refused serial=- principal=- peer=10.0.0.1:5"
        " reason=guard_denied: not authorized\\nfake line",
        f"2023-11-14T22:13:23.123456Z #3 revoked serial={big}"
        " principal=key(prog) peer=- reason=key compromise",
    ]
    assert all("\n" not in line for line in lines)
    assert format_events([]) == []


@pytest.mark.parametrize("limit", [MAX_FIELD_CHARS, MAX_PEER_CHARS, 120])
def test_bounded_cuts_with_length_and_hash(limit: int) -> None:
    assert bounded("short", limit) == "short"
    assert bounded("x" * limit, limit) == "x" * limit
    huge = 'key([00]).Program("' + "A" * 120_000 + '")'
    cut = bounded(huge, limit)
    assert len(cut) == limit
    assert huge.startswith(cut[: cut.index("...[cut: ")])
    match = re.search(r"\.\.\.\[cut: (\d+) chars, sha256 ([0-9a-f]{64})\]$", cut)
    assert match, cut
    assert int(match.group(1)) == len(huge)
    assert match.group(2) == hashlib.sha256(huge.encode()).hexdigest()
    # Values that differ only past the cut still differ once cut.
    assert bounded(huge + "B", limit) != cut
    assert len(bounded("é" * 5000, limit)) == limit
    assert bounded("\ud800" * 5000, limit)  # a lone surrogate does not make it raise


def test_refusals_are_recorded_within_bounds(path: Path, log: AuditLog) -> None:
    huge = "A" * 200_000
    log.record_refused(
        principal=huge,
        reason_code="c" * 10_000,
        reason=huge + " is not authorized",
        peer="p" * 10_000,
        attestation_sha256_hex=ATTESTATION,
    )
    (event,) = log.events()
    assert event.principal == bounded(huge)
    assert event.reason == bounded(huge + " is not authorized")
    assert event.peer == bounded("p" * 10_000, MAX_PEER_CHARS)
    assert len(event.reason_code or "") <= 64
    conn = sqlite3.connect(path)
    try:
        (row_chars,) = conn.execute(
            "SELECT length(actor) + length(subject) + length(details) FROM audit_entries"
        ).fetchone()
    finally:
        conn.close()
    assert row_chars <= 2 * MAX_FIELD_CHARS + MAX_PEER_CHARS + 64 + 200


def test_issued_certificates_are_recorded_in_full(log: AuditLog) -> None:
    long_name = "key([00])." + ".".join(f'Ext{i}("{"n" * 90}")' for i in range(40))
    assert len(long_name) > 2 * MAX_FIELD_CHARS
    issue(log, 9, principal=long_name)
    assert log.issued(9).principal == long_name  # type: ignore[union-attr]


def test_refusal_summaries(log: AuditLog) -> None:
    codes = {"rate_limited": 390, "invalid_attestation": 10}
    event_id = log.record_refusal_summary(
        peer="192.0.2.7", codes=codes, first_ns=T0, last_ns=T0 + 5 * 10**9
    )
    (event,) = log.events()
    assert event.id == event_id
    assert (event.kind, event.serial, event.principal) == ("refused", None, None)
    assert (event.reason_code, event.peer) == (SUMMARY_CODE, "192.0.2.7")
    assert event.detail == {
        "count": 400,
        "codes": codes,
        "first_ns": T0,
        "last_ns": T0 + 5 * 10**9,
    }
    assert event.reason == (
        "400 refusals counted, not recorded one by one: rate_limited 390, invalid_attestation 10"
    )
    (line,) = format_events([event])
    assert "refused serial=- principal=- peer=192.0.2.7 reason=summarized: 400 refusals" in line


def test_refusal_summaries_are_bounded(log: AuditLog) -> None:
    codes = {f"code{i}-" + "x" * 500: i + 1 for i in range(100)}
    log.record_refusal_summary(peer="*" * 1000, codes=codes, first_ns=T0, last_ns=T0)
    (event,) = log.events()
    assert event.detail["count"] == sum(range(1, 101))
    assert len(event.detail["codes"]) == 16
    assert sum(event.detail["codes"].values()) == sum(range(1, 101))
    assert all(len(code) <= 64 for code in event.detail["codes"])
    assert len(event.peer) == MAX_PEER_CHARS
    assert len(event.reason or "") == MAX_FIELD_CHARS
    with pytest.raises(ValueError, match="at least one"):
        log.record_refusal_summary(peer="x", codes={}, first_ns=T0, last_ns=T0)
    with pytest.raises(ValueError, match="positive"):
        log.record_refusal_summary(peer="x", codes={"a": 0}, first_ns=T0, last_ns=T0)


def issued_certificate(serial: int, principal: str = "key(prog)") -> IssuedCertificate:
    return IssuedCertificate(
        serial=serial,
        principal=principal,
        key_hash_hex=KEY_HASH,
        not_before_ns=T0,
        not_after_ns=T0 + 10**9,
        peer="127.0.0.1:4000",
        attestation_sha256_hex=ATTESTATION,
    )


def test_a_batch_of_issued_certificates_is_one_transaction(log: AuditLog) -> None:
    """Each certificate of a batch is recorded (with its own event id) but a serial
    already recorded, or twice in the batch, which alone is refused."""
    issue(log, 5)
    results = log.record_issued_many([issued_certificate(s, f"key(p{s})") for s in (6, 5, 7, 6, 8)])
    assert isinstance(results[1], ConfigError)
    assert "serial 5 was already issued" in str(results[1])
    assert isinstance(results[3], ConfigError)
    assert "serial 6 was already issued" in str(results[3])
    ids = [results[0], results[2], results[4]]
    assert all(isinstance(i, int) for i in ids)
    events = log.events()
    assert [e.serial for e in events] == [5, 6, 7, 8]
    assert [e.id for e in events[1:]] == ids
    assert [e.principal for e in events] == ["key(prog)", "key(p6)", "key(p7)", "key(p8)"]
    assert log.record_issued_many([]) == []


def test_a_batch_with_a_bad_field_is_refused_before_it_is_written(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="attestation_sha256_hex"):
        attrs.evolve(issued_certificate(2), attestation_sha256_hex="zz")
    with pytest.raises(ValueError, match="serial"):
        issued_certificate(1 << 160)
    assert log.events() == []
