"""A running domain service follows the domain's guard: no restart before the next request.

The attack: the domain service read the guard once at start, so after an operator
removed a program's rule (``taonet domain policy --remove-program``) the service kept
signing certificates for that program until it was restarted (and a rule added was not
honoured either). Here a real service runs over real TLS on 127.0.0.1, the guard is
changed on disk with the real CLI or the domain API, and the very next certification
follows it; files that do not load (half-written, edited by hand, signed by another
key, put back from before) open nothing, and the service says so in its log and its
audit log.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from taonet import AuthorizationError, auth
from taonet.channel import ChannelIdentity, TaoStream, open_channel
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain
from taonet.provision import OP_CERTIFY
from taonet.wire import Envelope, Role, message_class, serialize
from taonet_services._domain_watch import DomainReloader, ReloadReport
from taonet_services.domain_service import AuditEvent, DomainService
from tests.cli.cli_helpers import isolated, ok, run
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.services.flood import exchange
from tests.services.test_domain_service import BAD, GOOD, Service

#: Seconds between the service's own looks at the files (the tests wait on its reports).
INTERVAL = 0.05


@pytest.fixture
async def svc(make_domain: MakeDomain, make_host: MakeHost) -> AsyncIterator[Service]:
    domain = make_domain(name="reload-test")
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD))
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD, reload_interval=INTERVAL) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield Service(domain, host, service, listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()


def guard_events(svc: Service) -> list[AuditEvent]:
    with svc.audit() as audit:
        return [e for e in audit.events() if e.kind == "guard"]


def signed_serial(svc: Service) -> int:
    return Domain.load(svc.domain.path).config_serial


async def certify_on(stream: TaoStream, svc: Service, program_hash: bytes) -> str:
    """A Certify request on an open channel: ``certificate`` or the refusal's code."""
    att, key = await svc.request(program_hash)
    body = message_class("DomainServiceRequest")(
        kind="certify", attestation=att, program_key=key.public_key_der()
    )
    envelope = Envelope(Role.CLIENT, body_limit=1 << 20)
    return await exchange(stream, envelope, OP_CERTIFY, serialize(body))


async def test_a_program_whose_rule_the_cli_removes_is_refused_at_once(
    svc: Service, tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(PASSWORD + b"\n")
    with trio.fail_after(120):
        att, key = await svc.request(GOOD)
        assert (await svc.certify(att, key)).principal == svc.name(GOOD)
        # A client that keeps its channel open, as a server renewing its certificate.
        held = await open_channel(
            "127.0.0.1", svc.port, ChannelIdentity.anonymous(svc.domain.policy_cert)
        )
        async with held:
            assert await certify_on(held, svc, GOOD) == "certificate"
            # The operator removes the program's rule with the real CLI, the service running.
            ok(
                await run(
                    isolated(
                        "domain", "policy", "--domain", str(svc.domain.path),
                        "--remove-program", GOOD.hex(), "--password-file", str(pw),
                    )
                )
            )  # fmt: skip
            # The next request is refused: on a new channel (the old code signed it) ...
            att, key = await svc.request(GOOD)
            with pytest.raises(AuthorizationError, match="unauthorized"):
                await svc.certify(att, key)
            # ... and on the channel opened before the change.
            assert await certify_on(held, svc, GOOD) == "unauthorized"
        with svc.audit() as audit:
            refused = [e for e in audit.events() if e.kind == "refused"]
        assert [e.reason_code for e in refused] == ["unauthorized", "unauthorized"]
        assert refused[0].principal == str(svc.name(GOOD))
        # The operator sees when the new guard came into force, and which one it is.
        # (On a loaded machine a look between the CLI's two writes, rules then their
        # signature, may also be reported as refused: the service looks every 50 ms.)
        (event,) = [e for e in guard_events(svc) if e.reason_code == "reloaded"]
        assert event.detail["config_serial"] == signed_serial(svc)
        assert event.principal == str(Domain.load(svc.domain.path).guard.subprincipal())


async def test_an_added_rule_is_honoured_at_once(svc: Service) -> None:
    with trio.fail_after(60):
        att, key = await svc.request(BAD)
        with pytest.raises(AuthorizationError):
            await svc.certify(att, key)
        domain = Domain.load(svc.domain.path)
        assert isinstance(domain.guard, ACLGuard)
        domain.save_guard(domain.guard.with_rule(domain.program_rule(BAD)), domain.unlock(PASSWORD))
        att, key = await svc.request(BAD)
        assert (await svc.certify(att, key)).principal == svc.name(BAD)
        # The certificate is dated and bounded by the configuration in force.
        assert svc.service.domain.config_serial == domain.config_serial


async def test_a_corrupted_guard_file_keeps_the_last_good_guard_and_is_reported(
    svc: Service,
) -> None:
    acls = svc.domain.path / "acls"
    good_serial = signed_serial(svc)
    watch = svc.service.guard_watch
    with trio.fail_after(60), capture_logs() as logs:
        att, key = await svc.request(GOOD)
        await svc.certify(att, key)
        # Someone who can write the domain directory, but has no policy key, adds BAD's
        # rule by hand: the rule set signed by a key of their own.
        domain = Domain.load(svc.domain.path)
        assert isinstance(domain.guard, ACLGuard)
        forged = domain.guard.with_rule(domain.program_rule(BAD))
        before = watch.reports
        acls.write_bytes(forged.to_signed(Signer.generate()))
        att, key = await svc.request(BAD)
        with pytest.raises(AuthorizationError):
            await svc.certify(att, key)
        att, key = await svc.request(GOOD)
        assert (await svc.certify(att, key)).principal == svc.name(GOOD)  # last good guard
        await watch.wait_report(before)  # the service's own look, one interval later
        # Half-written: the operator's rules cut short.
        before = watch.reports
        acls.write_bytes(forged.to_signed(Signer.generate())[:100])
        att, key = await svc.request(GOOD)
        assert (await svc.certify(att, key)).principal == svc.name(GOOD)
        att, key = await svc.request(BAD)
        with pytest.raises(AuthorizationError):
            await svc.certify(att, key)
    events = guard_events(svc)
    assert [e.reason_code for e in events] == ["refused"]  # the second within the minute
    assert events[0].detail["config_serial"] == good_serial
    assert "stays in force" in (events[0].reason or "")
    refused = [e for e in logs if e["event"] == "domain_reload_refused"]
    assert len(refused) == 1
    assert refused[0]["log_level"] == "warning"
    assert len(refused[0]["error"]) <= 300


async def test_a_configuration_put_back_from_before_does_not_bring_a_rule_back(
    svc: Service, tmp_path: Path
) -> None:
    saved = tmp_path / "before"
    saved.mkdir()
    for name in ("domain.sig", "acls", "domain.toml"):
        shutil.copy2(svc.domain.path / name, saved / name)
    with trio.fail_after(60):
        domain = Domain.load(svc.domain.path)
        assert isinstance(domain.guard, ACLGuard)
        domain.save_guard(
            domain.guard.without_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD)
        )
        att, key = await svc.request(GOOD)
        with pytest.raises(AuthorizationError):
            await svc.certify(att, key)
        before = svc.service.guard_watch.reports
        # A backup of the files restored: signed by the policy key, but older.
        for name in ("domain.sig", "acls", "domain.toml"):
            shutil.copy(saved / name, svc.domain.path / name)
        att, key = await svc.request(GOOD)
        with pytest.raises(AuthorizationError):
            await svc.certify(att, key)
        await svc.service.guard_watch.wait_report(before)
    outcomes = [e.reason_code for e in guard_events(svc)]
    assert outcomes == ["reloaded", "refused"]


async def test_refusals_are_reported_a_bounded_number_of_times(make_domain: MakeDomain) -> None:
    """A file rewritten with garbage again and again: the first refusal is reported,
    the rest counted into one report when the run ends."""
    domain = make_domain(name="bounded")
    reports: list[ReloadReport] = []

    async def report(r: ReloadReport) -> None:
        reports.append(r)

    adopted: list[Domain] = []
    reloader = DomainReloader(
        domain, adopted.append, interval=0.0, report=report, report_every=3600
    )
    acls = domain.path / "acls"
    good = acls.read_bytes()
    with trio.fail_after(60):
        await reloader.fresh()  # the first look loads once: nothing changed
        assert (reports, adopted) == ([], [])
        for i in range(20):
            acls.write_bytes(b"garbage" * (i + 1))  # each of another size: a change
            await reloader.fresh()
        # The first failure might be a write in progress; the second is reported.
        assert [(r.outcome, r.events) for r in reports] == [("refused", 2)]
        acls.write_bytes(good)  # put back as it was
        await reloader.fresh()
    assert [(r.outcome, r.events) for r in reports] == [
        ("refused", 2),
        ("refused", 18),
        ("unchanged", 1),
    ]
    assert adopted == []
    assert all(len(r.error or "") <= 300 for r in reports)


async def test_a_half_written_change_is_not_reported_when_it_completes(
    make_domain: MakeDomain,
) -> None:
    """``save_guard`` writes the rules, then their signature: a look in between fails,
    but the operator is not told of a failure the next write mends."""
    domain = make_domain(name="halfway")
    assert isinstance(domain.guard, ACLGuard)
    reports: list[ReloadReport] = []

    async def report(r: ReloadReport) -> None:
        reports.append(r)

    adopted: list[Domain] = []
    reloader = DomainReloader(domain, adopted.append, interval=3600, report=report)
    with trio.fail_after(60):
        await reloader.fresh()
        signer = domain.unlock(PASSWORD)
        changed = domain.guard.with_rule(domain.program_rule(BAD))
        (domain.path / "acls").write_bytes(changed.to_signed(signer))  # the first write
        await reloader.fresh()
        assert (reports, adopted) == ([], [])
        domain.save_guard(changed, signer)  # the rules again, then domain.sig
        await reloader.fresh()
    assert [r.outcome for r in reports] == ["reloaded"]
    (new,) = adopted
    assert new.guard == changed
    assert new.config_serial == domain.config_serial


def same_size_change(domain: Domain, scratch: Path) -> dict[str, bytes]:
    """The files of a newer configuration (GOOD's rule swapped for BAD's) whose sizes
    equal those on disk now, made in a copy of the domain (signatures vary in length by
    a byte or two: signed again until they match)."""
    names = ("acls", "domain.sig", "domain.toml")
    sizes = {name: (domain.path / name).stat().st_size for name in names}
    signer = domain.unlock(PASSWORD)
    for attempt in range(200):
        copy = scratch / f"try{attempt}"
        shutil.copytree(domain.path, copy)
        other = Domain.load(copy)
        assert isinstance(other.guard, ACLGuard)
        guard = other.guard.without_rule(other.program_rule(GOOD))
        other.save_guard(guard.with_rule(other.program_rule(BAD)), signer)
        files = {name: (copy / name).read_bytes() for name in names}
        if all(len(files[name]) == sizes[name] for name in names):
            return files
    raise AssertionError("no same-size signature in 200 tries")


async def test_a_same_size_edit_in_place_is_caught_by_the_contents(
    make_domain: MakeDomain, tmp_path: Path
) -> None:
    """Files rewritten in place to the same size with their mtimes put back (``touch
    -d``, or an edit within the clock step of the last look) keep their stat; the
    periodic look compares the contents, and the newer configuration is put in force."""
    domain = make_domain(name="in-place")
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD))
    adopted: list[Domain] = []
    reloader = DomainReloader(domain, adopted.append, interval=3600)
    files = same_size_change(domain, tmp_path)
    with trio.fail_after(60):
        await reloader.tick()  # the first look loads once
        stamp = reloader.look()
        for name, data in files.items():
            path = domain.path / name
            st = path.stat()
            with path.open("r+b") as f:  # same inode
                f.write(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert reloader.look() == stamp  # the stat cannot tell
        await reloader.fresh()
        assert adopted == []
        await reloader.tick()
    (new,) = adopted
    assert new.config_serial == domain.config_serial + 1
    host = auth.key_principal(Signer.generate().public_key_der())
    bad, good = domain.program_name(BAD, host=host), domain.program_name(GOOD, host=host)
    assert isinstance(bad, auth.Prin)
    assert isinstance(good, auth.Prin)
    new.guard.check(bad, "Execute")
    with pytest.raises(AuthorizationError):
        new.guard.check(good, "Execute")
