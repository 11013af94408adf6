"""The domain service against an outside review's attacks on revocation, for real:
a real service on 127.0.0.1, real certificates, real anonymous floods.

* F3: anonymous clients holding every connection must not keep a revocation from
  a certified server (a share of the connections and watches is theirs only);
* F7: more than 8 certified servers behind one address each get a watch;
* F1: a service whose audit log was restored from a backup refuses to start, says
  how to recover, and once accepted still lists what the domain revoked;
* F2: cRLNumbers keep growing when the service's clock steps back, across restarts.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from taonet import ConfigError, ProtocolError, TaoError, auth, certs
from taonet.channel import ChannelIdentity, open_channel
from taonet.crypto import Signer
from taonet.domain import Domain, RevocationRecord
from taonet.hosts import SoftHost
from taonet.provision import (
    ERROR_TOO_MANY_WATCHES,
    DomainServiceError,
    RevocationWatcher,
    encode_crl_number,
    request_certificate,
    watch_crl,
)
from taonet.wire import NEED_DATA, Envelope, Role, message_class, serialize
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.services.test_crl_watch import until

CAP = 16


async def certify(domain: Domain, host: SoftHost, port: int, tag: int) -> ChannelIdentity:
    """A program certificate from the running service (recorded in its audit log)."""
    name = domain.program_name(bytes([tag]) * 32, host=host.name)
    assert isinstance(name, auth.Prin)
    key = Signer.generate()
    att = await host.tao_for(name).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
    )
    program = await request_certificate(
        "127.0.0.1", port, domain.policy_cert, att, key.public_key_der()
    )
    return ChannelIdentity(domain.policy_cert, signer=key, certificate=program.der)


def serial_of(identity: ChannelIdentity) -> int:
    assert identity.certificate is not None
    return identity.certificate.serial


def revoke(domain: Domain, serial: int) -> None:
    """What ``taonet domain revoke`` does to the log (another writer than the service)."""
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        audit.revoke(serial, reason="key lost")


# F3 ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_an_anonymous_flood_does_not_keep_a_revocation_from_a_certified_server(
    make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """CAP busy anonymous channels (and more knocking) against a cap of CAP connections:
    on the old service they held every slot and no server could fetch or watch the CRL."""
    domain = make_domain(name="flood", guard="Liberal")
    host = make_host(domain)
    body = serialize(message_class("DomainServiceRequest")(kind="crl"))
    anonymous = ChannelIdentity.anonymous(domain.policy_cert)
    with DomainService.open(domain.path, PASSWORD, max_connections=CAP) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            server_id = await certify(domain, host, port, 1)
            mallory = await certify(domain, host, port, 2)
            held = 0
            most_anonymous = 0
            flood_full = trio.Event()

            async def attacker() -> None:
                # Connects, asks for the CRL every second (well inside every idle and
                # eviction threshold), and reconnects at once whenever it is cut.
                nonlocal held, most_anonymous
                while True:
                    try:
                        stream = await open_channel("127.0.0.1", port, anonymous)
                    except (TaoError, trio.BrokenResourceError, OSError):
                        await trio.sleep(0.05)
                        continue
                    held += 1
                    most_anonymous = max(most_anonymous, service.shares.anonymous)
                    if held >= 2 * CAP:
                        flood_full.set()
                    envelope = Envelope(Role.CLIENT, body_limit=1 << 24, max_frame=1 << 24)
                    try:
                        for seq in range(1, 1000):
                            await stream.send_all(
                                b"".join(envelope.request("DomainService.GetCRL", seq, body))
                            )
                            while envelope.next_event() is NEED_DATA:
                                data = await stream.receive_some()
                                if not data:
                                    raise trio.BrokenResourceError
                                envelope.receive_data(data)
                            await trio.sleep(1)
                    except (TaoError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    finally:
                        await trio.aclose_forcefully(stream)

            with trio.fail_after(60):
                for _ in range(CAP + 4):
                    nursery.start_soon(attacker)
                await flood_full.wait()
            # A certified server's watcher still gets the CRL, and the long poll brings
            # a revocation made during the flood.
            watcher = RevocationWatcher(domain.policy_cert, ("127.0.0.1", port), identity=server_id)
            with trio.fail_after(30):
                await nursery.start(watcher.run)
                assert watcher.crl is not None
                assert not watcher.is_revoked(serial_of(mallory))
                revoke(domain, serial_of(mallory))
                revoked_at = trio.current_time()
                await until(lambda: watcher.is_revoked(serial_of(mallory)))
            took = trio.current_time() - revoked_at
            print(f"revocation reached the certified server {took:.2f} s after it was made")
            assert service.shares.max_anonymous == CAP * 3 // 4
            assert most_anonymous <= service.shares.max_anonymous
            nursery.cancel_scope.cancel()


async def test_anonymous_clients_are_recycled_and_rate_limited(
    make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """One anonymous channel cannot ask for the CRL forever: after its request budget it
    is closed; one address asking too fast is answered rate_limited."""
    from taonet_services.domain_service import ConnectionLimits

    domain = make_domain(name="recycle", guard="Liberal")
    body = serialize(message_class("DomainServiceRequest")(kind="crl"))
    limits = ConnectionLimits(anonymous_requests=3, crl_burst=5, crl_rate=0.001)
    with DomainService.open(domain.path, PASSWORD, connections=limits) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            anonymous = ChannelIdentity.anonymous(domain.policy_cert)
            answers: list[str] = []
            with trio.fail_after(30):
                for _ in range(3):
                    stream = await open_channel("127.0.0.1", port, anonymous)
                    envelope = Envelope(Role.CLIENT, body_limit=1 << 24, max_frame=1 << 24)
                    for seq in range(1, 10):
                        try:
                            await stream.send_all(
                                b"".join(envelope.request("DomainService.GetCRL", seq, body))
                            )
                            while (event := envelope.next_event()) is NEED_DATA:
                                data = await stream.receive_some()
                                if not data:
                                    raise trio.BrokenResourceError
                                envelope.receive_data(data)
                        except trio.BrokenResourceError:
                            answers.append("closed")
                            break
                        response = message_class("DomainServiceResponse")()
                        response.ParseFromString(event.body)  # type: ignore[union-attr]
                        answers.append("crl" if response.HasField("crl") else response.error_code)
                    await stream.aclose()
            nursery.cancel_scope.cancel()
    # 3 requests, then closed; 2 more (the burst of 5 used up), then rate_limited and
    # closed; a new channel is rate_limited at once.
    assert answers == [
        *("crl", "crl", "crl", "closed"),
        *("crl", "crl", "rate_limited", "closed"),
        *("rate_limited", "closed"),
    ]


# F7 ---------------------------------------------------------------------------------------


async def test_certified_servers_behind_one_address_each_get_a_watch(
    make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """12 servers on one address (a host, a NAT): anonymous, only 8 were held."""
    domain = make_domain(name="nat", guard="Liberal")
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            servers = [await certify(domain, host, port, 10 + i) for i in range(12)]
            victim = await certify(domain, host, port, 9)
            der = await service.current_crl()
            number = certs.verify_crl(domain.policy_anchor, der, now_ns=time.time_ns()).number
            results: list[object] = []

            async def one(identity: ChannelIdentity) -> None:
                try:
                    results.append(
                        await watch_crl(
                            "127.0.0.1", port, domain.policy_cert, number, identity=identity
                        )
                    )
                except DomainServiceError as exc:
                    results.append(exc.code)

            with trio.fail_after(30):
                async with trio.open_nursery() as watches:
                    for identity in servers:
                        watches.start_soon(one, identity)
                    await until(
                        lambda: service.crl_watches.waiting == len(servers) or bool(results)
                    )
                    assert results == []  # none refused
                    assert service.crl_watches.waiting == len(servers)
                    revoke(domain, serial_of(victim))
            assert ERROR_TOO_MANY_WATCHES not in results
            for answer in results:
                assert isinstance(answer, bytes)
                assert serial_of(victim) in certs.verify_crl(
                    domain.policy_anchor, answer, now_ns=time.time_ns()
                )
            nursery.cancel_scope.cancel()


async def test_a_revoked_program_watches_as_an_anonymous_client(
    make_domain: MakeDomain, make_host: MakeHost
) -> None:
    """A revoked certificate does not buy a watch outside the anonymous share."""
    domain = make_domain(name="revwatch", guard="Liberal")
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            mallory = await certify(domain, host, port, 3)
            revoke(domain, serial_of(mallory))
            der = await service.current_crl()
            number = certs.verify_crl(domain.policy_anchor, der, now_ns=time.time_ns()).number
            with trio.fail_after(30):
                async with trio.open_nursery() as watches:
                    for _ in range(10):
                        watches.start_soon(
                            functools.partial(
                                _watch_quietly,
                                port,
                                domain.policy_cert,
                                number,
                                identity=mallory,
                            )
                        )
                    await until(lambda: service.crl_watches.waiting >= 8)
                    assert service.shares.anonymous >= 8
                    watches.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def _watch_quietly(
    port: int, policy_cert: bytes, number: int, *, identity: ChannelIdentity
) -> None:
    with contextlib.suppress(DomainServiceError, ProtocolError):
        await watch_crl("127.0.0.1", port, policy_cert, number, identity=identity)


# F1 ---------------------------------------------------------------------------------------


async def test_a_service_restored_from_backup_refuses_to_start_and_never_unrevokes(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    domain = make_domain(name="restore", guard="Liberal")
    host = make_host(domain)
    audit_path = domain.path / AUDIT_FILE
    async with trio.open_nursery() as nursery:
        with DomainService.open(domain.path, PASSWORD) as service:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            mallory = await certify(domain, host, port, 2)
            with sqlite3.connect(audit_path) as src, sqlite3.connect(tmp_path / "b") as dst:
                src.backup(dst)  # the nightly backup
            src.close()
            dst.close()
            revoke(domain, serial_of(mallory))
            watcher = RevocationWatcher(domain.policy_cert, ("127.0.0.1", port), watch=False)
            with trio.fail_after(30):
                assert await watcher.refresh()
            assert watcher.is_revoked(serial_of(mallory))
            nursery.cancel_scope.cancel()
    _restore(tmp_path / "b", audit_path)
    # The restored log lacks Mallory's revocation: the service will not start on it.
    with pytest.raises(ConfigError) as refused:
        DomainService.open(domain.path, PASSWORD)
    message = str(refused.value)
    assert "\n" not in message
    assert str(serial_of(mallory)) in message
    assert "--accept-audit-behind" in message
    # The same through the command line: one line, non-zero, no traceback.
    password = tmp_path / "pw"
    password.write_text(PASSWORD.decode() + "\n")
    with trio.fail_after(120):  # the old service started (and served) on this log
        started = await _run_cli(
            "domain-service",
            *("--domain", str(domain.path), "--listen", "127.0.0.1:0"),
            *("--password-file", str(password)),
        )
    assert started.returncode != 0
    assert b"Traceback" not in started.stderr
    assert b"--accept-audit-behind" in started.stderr
    assert started.stderr.strip().count(b"\n") == 0
    # The operator accepts this log; the serial stays in every CRL the service signs.
    with trio.fail_after(120):
        accepted = await _run_cli(
            *("domain", "crl", "--domain", str(domain.path)),
            *("--password-file", str(password), "--accept-audit-behind"),
        )
    assert accepted.returncode == 0, accepted.stderr.decode()
    assert RevocationRecord.load(domain.path).accepted == {serial_of(mallory)}
    async with trio.open_nursery() as nursery:
        with DomainService.open(domain.path, PASSWORD) as restored:
            await nursery.start(functools.partial(restored.serve, port))
            fresh = RevocationWatcher(domain.policy_cert, ("127.0.0.1", port), watch=False)
            with trio.fail_after(30):
                await watcher.refresh()
                await fresh.refresh()
            assert watcher.is_revoked(serial_of(mallory))
            assert fresh.is_revoked(serial_of(mallory))  # the service itself lists it
            assert fresh.kept_serials == frozenset()
            nursery.cancel_scope.cancel()


async def _run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "taonet", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def _restore(backup: Path, audit_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{audit_path}{suffix}").unlink(missing_ok=True)
    backup.rename(audit_path)


# F2 ---------------------------------------------------------------------------------------


async def test_crl_numbers_grow_when_the_service_clock_steps_back(
    make_domain: MakeDomain,
) -> None:
    domain = make_domain(name="clockstep", guard="Liberal")
    skew = [30 * 10**9]

    def clock() -> int:
        return time.time_ns() + skew[0]

    def number(der: bytes) -> int:
        return certs.verify_crl(domain.policy_anchor, der, now_ns=time.time_ns()).number

    with DomainService.open(domain.path, PASSWORD) as service:
        service._clock = clock
        first = number(await service.current_crl())
        skew[0] = 0  # the clock is corrected: 30 s back
        service._crl = None  # the serials changed: it re-signs
        second = number(await service.current_crl())
        assert second > first
    # And across a restart: the last number is kept in the domain's record.
    assert RevocationRecord.load(domain.path).number == second
    signer = domain.unlock(PASSWORD)
    with AuditLog.open(domain.path / AUDIT_FILE, signer=signer) as audit:
        behind = DomainService(
            domain, signer, audit=audit, clock=lambda: time.time_ns() - 60 * 10**9
        )
        assert number(await behind.current_crl()) > second
        behind.close()


async def test_a_watch_with_a_number_from_before_the_step_is_answered(
    make_domain: MakeDomain,
) -> None:
    """A server that holds the number signed while the clock was fast still hears of
    the next revocation at once, not at the hourly re-sign."""
    domain = make_domain(name="clockwatch", guard="Liberal")
    skew = [30 * 10**9]
    with DomainService.open(domain.path, PASSWORD) as service:
        service._clock = lambda: time.time_ns() + skew[0]
        held = certs.verify_crl(
            domain.policy_anchor, await service.current_crl(), now_ns=time.time_ns()
        ).number
        skew[0] = 0
        service._crl = None
        request = message_class("DomainServiceRequest")(
            kind="watch_crl", known_crl_number=encode_crl_number(held)
        )
        with trio.fail_after(5):
            answer = await service.crl_watches.answer(request, "10.0.0.1")
        assert answer.HasField("crl")


def test_an_unreadable_record_is_a_config_error(make_domain: MakeDomain) -> None:
    domain = make_domain(name="badrecord", guard="Liberal")
    (domain.path / "policy_keys" / "crl_state").write_text('{"crl_number": -1, "revoked": []}')
    with pytest.raises(ConfigError, match="not a revocation record"):
        DomainService.open(domain.path, PASSWORD)


async def test_a_provisioned_program_asks_for_the_crl_as_itself(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    """load_or_provision gives the watcher the program's identity; the service then
    serves it outside the anonymous limits (here: one anonymous CRL request in all)."""
    from taonet.provision import load_or_provision
    from taonet.provision._crl import fetch_crl_der
    from taonet_services.domain_service import ConnectionLimits
    from tests.tao_doubles import program

    domain = make_domain(name="asitself", guard="Liberal")
    host = make_host(domain)
    limits = ConnectionLimits(crl_burst=1, crl_rate=1e-6)
    with DomainService.open(domain.path, PASSWORD, connections=limits) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            where = ("127.0.0.1", port)
            watcher = RevocationWatcher(domain.policy_cert, where, watch=False)
            with trio.fail_after(30):
                await fetch_crl_der(*where, domain.policy_cert)  # the anonymous budget
                with pytest.raises(DomainServiceError, match="rate_limited"):
                    await fetch_crl_der(*where, domain.policy_cert)
                provisioned = await load_or_provision(
                    host.tao_for(program(host.name, 1)),
                    tmp_path / "state",
                    policy_cert=domain.policy_cert,
                    domain_service=where,
                    revocations=watcher,
                )
                assert watcher.identity is provisioned.identity
                for _ in range(5):
                    await watcher.refresh()
            nursery.cancel_scope.cancel()
