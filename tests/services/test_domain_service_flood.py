"""Issue 8, item 3: an anonymous client must not fill the domain's disk with refusals.

Each test repeats the attack over real TCP and TLS against the real service: an
anonymous client at 127.0.0.2 sends certify requests claiming a huge speaker (see
``tests/services/flood.py``), while a legitimate client at 127.0.0.1 keeps asking
for certificates. The refusal limiter runs on an injected clock.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
import trio
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from taonet import auth
from taonet.attestation import MAX_DELEGATION_DEPTH, Attestation, attest
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain
from taonet.hosts import SoftHost
from taonet.provision import (
    ERROR_BAD_REQUEST,
    ERROR_INVALID_ATTESTATION,
    OP_GET_CRL,
    request_certificate,
)
from taonet.wire import message_class
from taonet_services.domain_service import AUDIT_FILE, AuditEvent, AuditLog, DomainService
from taonet_services.domain_service._audit import MAX_FIELD_CHARS, SUMMARY_CODE
from taonet_services.domain_service._limits import RefusalLimits
from taonet_services.domain_service._service import ERROR_RATE_LIMITED, MAX_REQUEST
from tests.conftest import PASSWORD
from tests.services.flood import audit_bytes, flood, flood_request

GOOD = b"\x61" * 32
ATTACKER = "127.0.0.2"
#: What one refusal row may hold at most: principal and reason at their bound, the
#: peer, the code and the detail JSON (an attestation hash).
MAX_ROW_CHARS = 2 * MAX_FIELD_CHARS + 256 + 64 + 200
#: Bytes one committed row may cost on disk: SQLite writes whole 4 KiB pages to
#: the WAL (table, indexes, sequence), a few per transaction.
MAX_ROW_DISK = 32 * 1024


class Clock:
    """The refusal limiter's monotonic clock; it moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Service:
    def __init__(
        self, domain: Domain, host: SoftHost, service: DomainService, port: int, clock: Clock
    ) -> None:
        self.domain, self.host, self.service, self.port, self.clock = (
            domain,
            host,
            service,
            port,
            clock,
        )
        self.audit_path = domain.path / AUDIT_FILE

    async def certify(self) -> int:
        """A legitimate client at 127.0.0.1 gets a certificate; returns its serial."""
        name = self.domain.program_name(GOOD, host=self.host.name)
        assert isinstance(name, auth.Prin)
        key = Signer.generate()
        att = await self.host.tao_for(name).attest(
            auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
        )
        program = await request_certificate(
            "127.0.0.1", self.port, self.domain.policy_cert, att, key.public_key_der()
        )
        assert program.principal == name
        return program.serial

    def events(self) -> list[AuditEvent]:
        with AuditLog.open(self.audit_path) as audit:
            return audit.events()


async def start(
    nursery: trio.Nursery, make_domain: Any, make_host: Any, limits: RefusalLimits, **kw: Any
) -> Service:
    domain = make_domain(name="flood-test", **kw)
    if isinstance(domain.guard, ACLGuard):
        domain.save_guard(
            domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD)
        )
    host = make_host(domain)
    clock = Clock()
    service = DomainService.open(domain.path, PASSWORD, limits=limits, monotonic=clock)

    async def serve(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with service:  # closes its audit log when the nursery stops it
            await service.serve(0, task_status=task_status)

    listeners = await nursery.start(serve)
    return Service(domain, host, service, listeners[0].socket.getsockname()[1], clock)


@pytest.fixture
async def svc(make_domain, make_host) -> AsyncIterator[Service]:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        yield await start(nursery, make_domain, make_host, RefusalLimits())
        nursery.cancel_scope.cancel()


def full_refusals(events: Sequence[AuditEvent]) -> list[AuditEvent]:
    return [e for e in events if e.kind == "refused" and e.reason_code != SUMMARY_CODE]


def summarized(events: Sequence[AuditEvent]) -> int:
    return sum(
        int(e.detail["count"])
        for e in events
        if e.kind == "refused" and e.reason_code == SUMMARY_CODE
    )


def row_chars(event: AuditEvent) -> int:
    return sum(
        len(value or "") for value in (event.principal, event.reason, event.reason_code, event.peer)
    ) + len(str(dict(event.detail)))


REFUSAL_EVENTS = {"cert_refused", "bad_request", "refusals_summarized"}


def assert_logs_bounded(logs: Sequence[Mapping[str, Any]], *, refusals: int) -> None:
    """At most ``refusals`` refusal lines, and no logged value past the field bound."""
    lines = [entry for entry in logs if entry["event"] in REFUSAL_EVENTS]
    assert len(lines) <= refusals, [entry["event"] for entry in lines]
    for entry in logs:
        for value in entry.values():
            assert len(str(value)) <= MAX_FIELD_CHARS + 200, entry["event"]


async def test_the_reported_flood_no_longer_fills_the_disk(svc: Service) -> None:
    """The review's attack: 400 refused requests of 120 kB, while a program gets served."""
    payload = flood_request(120_000)
    assert len(payload) > MAX_REQUEST
    before = audit_bytes(svc.audit_path)
    serials: list[int] = []
    with trio.fail_after(120), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            answers: dict[str, int] = {}

            async def attack() -> None:
                answers.update(await flood(svc.port, svc.domain.policy_cert, payload, 400))
                done.set()

            nursery.start_soon(attack)
            while not done.is_set():  # at least once: the attack has not started yet
                serials.append(await svc.certify())
        during = len(serials)
        for _ in range(3):
            serials.append(await svc.certify())
        await svc.service.write_refusal_summaries(all_now=True)
    growth = audit_bytes(svc.audit_path) - before
    events = svc.events()
    # Every oversized request was refused on the body length its frame announced,
    # never read: an envelope error of kind CodecError, recorded as a bad request.
    assert set(answers) <= {"CodecError", "closed"}, answers
    assert answers.get("CodecError", 0) > 0
    full = full_refusals(events)
    limits = svc.service.limiter.limits
    assert len(full) <= limits.client_burst
    assert all(e.reason_code == ERROR_BAD_REQUEST and ATTACKER in e.peer for e in full)
    assert all(row_chars(e) <= MAX_ROW_CHARS for e in events)
    # One summary row holds the rest; nothing refused went unrecorded.
    assert len(full) + summarized(events) >= answers["CodecError"]
    rows = len(events)
    assert rows <= limits.client_burst + 1 + len(serials)
    # Before the fix this flood added about 51 MB (400 rows of 127 kB).
    assert growth <= rows * MAX_ROW_DISK, (growth, rows)
    # The program was served during and after the flood, every certificate recorded.
    assert during >= 1
    issued = {e.serial: e for e in events if e.kind == "issued"}
    assert set(serials) == set(issued)
    name = str(svc.domain.program_name(GOOD, host=svc.host.name))
    assert all(e.principal == name for e in issued.values())
    assert_logs_bounded(logs, refusals=limits.client_burst + 1)


async def test_a_flood_at_the_size_limit_is_cut_and_summarized(svc: Service) -> None:
    """The attacker adapts: requests just under the limit, each a signed attestation."""
    payload = flood_request(MAX_REQUEST - 200)
    assert len(payload) <= MAX_REQUEST
    request = message_class("DomainServiceRequest")()
    request.ParseFromString(payload)
    claimed = str(Attestation.from_bytes(bytes(request.attestation)).statement().speaker)
    assert len(claimed) > 10_000
    before = audit_bytes(svc.audit_path)
    with trio.fail_after(120), capture_logs() as logs:
        answers = await flood(svc.port, svc.domain.policy_cert, payload, 400)
        serial = await svc.certify()
        await svc.service.write_refusal_summaries(all_now=True)
    growth = audit_bytes(svc.audit_path) - before
    events = svc.events()
    limits = svc.service.limiter.limits
    assert answers[ERROR_INVALID_ATTESTATION] == limits.client_burst
    assert answers[ERROR_RATE_LIMITED] == 400 - limits.client_burst - answers.get("closed", 0)
    full = full_refusals(events)
    assert len(full) == limits.client_burst
    digest = hashlib.sha256(claimed.encode()).hexdigest()
    for event in full:
        # Cut, but the operator can still match the full claimed name by its hash.
        assert event.principal is not None
        assert len(event.principal) == MAX_FIELD_CHARS
        assert claimed.startswith(event.principal[: event.principal.index("...[cut: ")])
        assert event.principal.endswith(f"...[cut: {len(claimed)} chars, sha256 {digest}]")
        assert len(event.reason or "") <= MAX_FIELD_CHARS
        assert row_chars(event) <= MAX_ROW_CHARS
    (summary,) = [e for e in events if e.reason_code == SUMMARY_CODE]
    assert summary.peer == ATTACKER
    assert summary.detail["count"] == answers[ERROR_RATE_LIMITED]
    assert summary.detail["codes"] == {ERROR_RATE_LIMITED: answers[ERROR_RATE_LIMITED]}
    rows = len(events)
    assert rows == limits.client_burst + 2  # the refusals, the summary, the certificate
    assert growth <= rows * MAX_ROW_DISK, (growth, rows)
    assert [e.serial for e in events if e.kind == "issued"] == [serial]
    assert_logs_bounded(logs, refusals=limits.client_burst + 1)
    cut = [entry for entry in logs if entry["event"] == "cert_refused"]
    assert len(cut) == limits.client_burst
    assert all(digest in entry["principal"] for entry in cut)


async def test_refusals_recover_with_time_and_are_summarized_per_interval(  # type: ignore[no-untyped-def]
    make_domain,
    make_host,
) -> None:
    limits = RefusalLimits(client_burst=3, client_rate=0.5, summary_interval=60.0)
    payload = flood_request(4000)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, make_domain, make_host, limits)
            answers = await flood(svc.port, svc.domain.policy_cert, payload, 5)
            assert answers == {ERROR_INVALID_ATTESTATION: 3, ERROR_RATE_LIMITED: 1, "closed": 1}
            # Rate limited, it may still fetch the CRL.
            crl = message_class("DomainServiceRequest")(kind="crl").SerializeToString()
            assert await flood(svc.port, svc.domain.policy_cert, crl, 2, op=OP_GET_CRL) == {
                "crl": 2
            }
            svc.clock.now += 1.9  # not yet one refusal's worth
            assert await flood(svc.port, svc.domain.policy_cert, payload, 1) == {
                ERROR_RATE_LIMITED: 1
            }
            svc.clock.now += 0.2
            assert await flood(svc.port, svc.domain.policy_cert, payload, 1) == {
                ERROR_INVALID_ATTESTATION: 1
            }
            assert summarized(svc.events()) == 0  # the interval is not over
            svc.clock.now += 60.0
            # The next refusal writes the summary of the interval that ended.
            assert await flood(svc.port, svc.domain.policy_cert, payload, 1) == {
                ERROR_INVALID_ATTESTATION: 1
            }
            events = svc.events()
            assert len(full_refusals(events)) == 5
            (summary,) = [e for e in events if e.reason_code == SUMMARY_CODE]
            assert summary.detail["codes"] == {ERROR_RATE_LIMITED: 2}
            assert summary.detail["first_ns"] <= summary.detail["last_ns"] <= time.time_ns()
            # 60 s refilled the bucket (3, one used above); what is still pending when
            # the service stops is written then.
            assert await flood(svc.port, svc.domain.policy_cert, payload, 4) == {
                ERROR_INVALID_ATTESTATION: 2,
                ERROR_RATE_LIMITED: 1,
                "closed": 1,
            }
            nursery.cancel_scope.cancel()
    events = svc.events()
    assert [e.detail["count"] for e in events if e.reason_code == SUMMARY_CODE] == [2, 1]
    assert len(full_refusals(events)) == 7


async def test_many_addresses_are_bounded_in_total(  # type: ignore[no-untyped-def]
    make_domain,
    make_host,
) -> None:
    limits = RefusalLimits(client_burst=2, total_burst=10, max_clients=8, max_summaries=3)
    payload = flood_request(MAX_REQUEST - 200)
    addresses = [f"127.0.1.{i}" for i in range(1, 31)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, make_domain, make_host, limits)
            answered = 0
            for address in addresses:
                answers = await flood(
                    svc.port, svc.domain.policy_cert, payload, 4, local_address=address
                )
                answered += sum(n for code, n in answers.items() if code != "closed")
                assert len(svc.service.limiter) <= limits.max_clients
            serial = await svc.certify()
            nursery.cancel_scope.cancel()
    events = svc.events()
    assert len(full_refusals(events)) == limits.total_burst
    summaries = [e for e in events if e.reason_code == SUMMARY_CODE]
    assert len(summaries) <= limits.max_summaries + 1
    assert summaries[-1].peer == "*"
    assert len(full_refusals(events)) + summarized(events) == answered
    assert [e.serial for e in events if e.kind == "issued"] == [serial]


def name_of_size(base: auth.Prin, size: int, tag: str) -> auth.Prin:
    """``base`` extended by one ``tag("xx...")`` so that its binary encoding has ``size`` bytes."""
    for n in range(size, 0, -1):
        name = base.extend(auth.SubPrin((auth.PrinExt(tag, (auth.Str("x" * n),)),)))
        if len(auth.encode(name)) <= size:
            return name
    raise AssertionError("base is already too long")


async def test_the_largest_real_request_fits(make_domain) -> None:  # type: ignore[no-untyped-def]
    """An attestation through the deepest delegation chain, with names at the Linux
    host's 1024-byte cap at every level, is still certified; one byte over the limit
    is refused on the body length its frame announces."""
    from taonet.hosts.linux._host import MAX_NAME_BYTES

    domain: Domain = make_domain(guard="Liberal")
    policy = domain.unlock(PASSWORD)
    host = Signer.generate()
    key, name = host, auth.key_principal(host.public_key_der())
    delegation: Attestation | None = None
    endorsement: bytes | None = domain.certify_host(policy, host.public_key_der())
    now = time.time_ns()
    for level in range(MAX_DELEGATION_DEPTH):
        name = name_of_size(name, MAX_NAME_BYTES - 24 * (MAX_DELEGATION_DEPTH - level), f"L{level}")
        next_key = Signer.generate()
        delegation = attest(
            key,
            auth.Speaksfor(auth.key_principal(next_key.public_key_der()), name),
            speaker=name,
            now_ns=now,
            delegation=delegation,
            root_endorsement=endorsement,
        )
        key, endorsement = next_key, None
    program = name_of_size(name, MAX_NAME_BYTES, "Program")
    program_key = Signer.generate()
    att = attest(
        key,
        auth.Speaksfor(auth.key_principal(program_key.public_key_der()), program),
        speaker=program,
        now_ns=now,
        delegation=delegation,
    )
    size = len(
        message_class("DomainServiceRequest")(
            kind="certify", attestation=att.to_bytes(), program_key=program_key.public_key_der()
        ).SerializeToString()
    )
    assert 18_000 < size <= MAX_REQUEST - 2048  # room left for a TPM quote at the root
    with trio.fail_after(60), DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            certificate = await request_certificate(
                "127.0.0.1", port, domain.policy_cert, att, program_key.public_key_der()
            )
            assert certificate.principal == program
            over = b"\x0a" + b"\x00" * MAX_REQUEST  # one byte too many; never parsed
            answers = await flood(port, domain.policy_cert, over, 1)
            assert answers == {"CodecError": 1}
            nursery.cancel_scope.cancel()
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        issued = audit.issued(certificate.serial)
        refused = full_refusals(audit.events())
    assert issued is not None
    assert issued.principal == str(program)  # issued certificates are recorded in full
    assert len(str(program)) > MAX_FIELD_CHARS
    (refusal,) = refused
    assert re.search(rf"{MAX_REQUEST + 1}\b.*{MAX_REQUEST}", refusal.reason or ""), refusal


async def test_a_refusal_summary_is_not_filed_under_another_connection(  # type: ignore[no-untyped-def]
    make_domain,
    make_host,
) -> None:
    """The summary of an attacker's refusals, written when another client's refusal
    finds it due, names the attacker as ``client`` and carries no connection context
    (``conn_id``, ``remote``, ``peer``): filed under the innocent client's connection,
    an operator filtering or banning by ``remote`` would blame it."""
    limits = RefusalLimits(client_burst=2, client_rate=0.001, summary_interval=60.0)
    payload = flood_request(4000)
    attacker, victim = "127.0.0.2", "127.0.0.1"
    with trio.fail_after(60), capture_logs(processors=[merge_contextvars]) as logs:
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, make_domain, make_host, limits)
            await flood(svc.port, svc.domain.policy_cert, payload, 4, local_address=attacker)
            svc.clock.now += 61.0
            # The victim's own refusal writes the attacker's summary that is due.
            await flood(svc.port, svc.domain.policy_cert, payload, 1, local_address=victim)
            nursery.cancel_scope.cancel()
    summaries = [entry for entry in logs if entry["event"] == "refusals_summarized"]
    assert [entry["client"] for entry in summaries][:1] == [attacker]
    for entry in summaries:
        assert not {"conn_id", "remote", "peer"} & entry.keys(), entry
    # The victim's own refusal is still filed under its connection.
    (own,) = [e for e in logs if e["event"] == "cert_refused" and victim in e.get("remote", "")]
    assert "conn_id" in own
