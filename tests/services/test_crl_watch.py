"""DomainService.WatchCRL over real Tao channels on 127.0.0.1: prompt, bounded, verified."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog
import trio
import trio.testing

from taonet import AuthenticationError, ProtocolError, auth, certs
from taonet.crypto import Signer
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.provision import (
    ERROR_TOO_MANY_WATCHES,
    DomainServiceError,
    RevocationWatcher,
    encode_crl_number,
    request_certificate,
    watch_crl,
)
from taonet.wire import message_class
from taonet_services.domain_service import AUDIT_FILE, ERROR_RATE_LIMITED, AuditLog, DomainService
from taonet_services.domain_service._watch import DEFAULT_MAX_WATCHES_PER_ADDRESS, CRLWatches
from tests.conftest import PASSWORD, MakeDomain, MakeHost

# A watch whose connection the service closed (over the address's anonymous share).
ERROR_CLOSED = "closed"


class Running:
    def __init__(self, domain: Domain, host: SoftHost, service: DomainService, port: int) -> None:
        self.domain, self.host, self.service, self.port = domain, host, service, port

    async def issue(self) -> int:
        """A real certificate from the service; its serial."""
        return await issue(self.domain, self.host, self.port)

    async def number(self) -> int:
        der = await self.service.current_crl()
        return certs.verify_crl(self.domain.policy_anchor, der, now_ns=self.service._clock()).number

    def revoke(self, serial: int) -> None:
        """What ``taonet domain revoke`` does to the log (another writer than the service)."""
        with AuditLog.open(self.domain.path / AUDIT_FILE) as audit:
            audit.revoke(serial, reason="test")


async def issue(domain: Domain, host: SoftHost, port: int) -> int:
    name = domain.program_name(b"\x61" * 32, host=host.name)
    assert isinstance(name, auth.Prin)
    key = Signer.generate()
    att = await host.tao_for(name).attest(
        auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
    )
    program = await request_certificate(
        "127.0.0.1", port, domain.policy_cert, att, key.public_key_der()
    )
    return program.serial


def fixed(der: bytes) -> Callable[[], Awaitable[bytes]]:
    """A CRL reader without SQLite threads (on the autojump clock a thread is idle time)."""

    async def current_crl() -> bytes:
        await trio.lowlevel.checkpoint()
        return der

    return current_crl


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, looking whenever every task here is blocked."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)


@pytest.fixture
async def running(make_domain: MakeDomain, make_host: MakeHost) -> AsyncIterator[Running]:
    domain = make_domain(name="watch-test", guard="Liberal")
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield Running(domain, host, service, listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()


async def test_a_watch_is_answered_when_a_serial_is_revoked(running: Running) -> None:
    policy = running.domain.policy_cert
    with trio.fail_after(20):
        serial = await running.issue()
        # Behind: answered at once with the current CRL.
        first = await watch_crl("127.0.0.1", running.port, policy, 0)
        assert first is not None
        held = certs.verify_crl(
            running.domain.policy_anchor, first, now_ns=running.service._clock()
        )
        answered: list[bytes | None] = []

        async def wait() -> None:
            answered.append(await watch_crl("127.0.0.1", running.port, policy, held.number))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await until(lambda: running.service.crl_watches.waiting == 1)
            assert answered == []  # waiting: nothing newer yet
            running.revoke(serial)
        news = answered[0]
        assert news is not None
        crl = certs.verify_crl(running.domain.policy_anchor, news, now_ns=running.service._clock())
        assert crl.number > held.number
        assert serial in crl


async def test_a_watch_with_nothing_new_ends_empty(
    make_domain: MakeDomain, autojump_clock: trio.testing.MockClock
) -> None:
    domain = make_domain(name="watch-timeout", guard="Liberal")
    with DomainService.open(domain.path, PASSWORD) as service:
        der = await service.current_crl()
        number = certs.verify_crl(domain.policy_anchor, der, now_ns=service._clock()).number
    watches = CRLWatches(fixed(der), domain.policy_anchor)
    request = message_class("DomainServiceRequest")(kind="watch_crl")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watches.run)
        with trio.fail_after(60):
            request.known_crl_number = encode_crl_number(number)
            start = trio.current_time()
            answer = await watches.answer(request, "10.0.0.1")
            assert not answer.HasField("crl")
            assert not answer.HasField("error_code")
            assert trio.current_time() - start == pytest.approx(watches.timeout)
        nursery.cancel_scope.cancel()


async def test_a_watch_flood_from_one_address_is_bounded(running: Running) -> None:
    """An anonymous client opens 30 watches at once: only 8 are held, the rest refused
    (too many watches, too many CRL requests, or over the address's connections)."""
    policy = running.domain.policy_cert
    serial = await running.issue()
    number = await running.number()
    results: list[object] = []

    async def one() -> None:
        try:
            results.append(await watch_crl("127.0.0.1", running.port, policy, number))
        except DomainServiceError as exc:
            results.append(exc.code)
        except ProtocolError:
            results.append(ERROR_CLOSED)

    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(one)
            # The refused ones are answered at once, while the held ones still wait.
            await until(lambda: len(results) == 30 - DEFAULT_MAX_WATCHES_PER_ADDRESS)
            assert running.service.crl_watches.waiting == DEFAULT_MAX_WATCHES_PER_ADDRESS
            assert ERROR_TOO_MANY_WATCHES in results
            assert set(results) <= {ERROR_TOO_MANY_WATCHES, ERROR_RATE_LIMITED, ERROR_CLOSED}
            running.revoke(serial)  # the held ones are answered with the news
    assert len(results) - sum(isinstance(r, bytes) for r in results) == (
        30 - DEFAULT_MAX_WATCHES_PER_ADDRESS
    )
    assert sum(isinstance(r, bytes) for r in results) == DEFAULT_MAX_WATCHES_PER_ADDRESS
    assert running.service.crl_watches.waiting == 0
    refused_lines = [e for e in logs if e["event"] == "crl_watch_refused"]
    assert 1 <= len(refused_lines) <= 2  # one line per burst, not one per watch


async def test_watches_are_bounded_in_all(
    make_domain: MakeDomain, autojump_clock: trio.testing.MockClock
) -> None:
    """Many addresses together cannot hold more than max_total watches."""
    domain = make_domain(name="watch-total", guard="Liberal")
    with DomainService.open(domain.path, PASSWORD) as service:
        der = await service.current_crl()
        number = certs.verify_crl(domain.policy_anchor, der, now_ns=service._clock()).number
    watches = CRLWatches(fixed(der), domain.policy_anchor, max_total=5)
    request = message_class("DomainServiceRequest")(
        kind="watch_crl", known_crl_number=encode_crl_number(number)
    )
    refused = 0

    async def one(client: str) -> None:
        nonlocal refused
        answer = await watches.answer(request, client)
        refused += answer.error_code == ERROR_TOO_MANY_WATCHES

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, f"10.0.0.{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert watches.waiting == 5
    assert refused == 7
    assert watches.waiting == 0


async def test_an_oversized_crl_number_is_a_bad_request(running: Running) -> None:
    request = message_class("DomainServiceRequest")(kind="watch_crl", known_crl_number=b"\x01" * 21)
    answer = await running.service.crl_watches.answer(request, "10.0.0.9")
    assert answer.error_code == "bad_request"


class RolledBack(DomainService):
    """A hostile or restored-from-backup service: it serves an older CRL than it did."""

    old: bytes | None = None

    async def current_crl(self) -> bytes:
        if self.old is not None:
            await trio.lowlevel.checkpoint()
            return self.old
        return await super().current_crl()


async def test_a_rolled_back_service_cannot_unrevoke(
    make_domain: MakeDomain, make_host: MakeHost
) -> None:
    domain = make_domain(name="rollback", guard="Liberal")
    with RolledBack.open(domain.path, PASSWORD) as service:
        assert isinstance(service, RolledBack)
        before = await service.current_crl()  # lists nobody
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            watcher = RevocationWatcher(domain.policy_cert, ("127.0.0.1", port), watch=False)
            with trio.fail_after(20):
                serial = await issue(domain, make_host(domain), port)
                with AuditLog.open(domain.path / AUDIT_FILE) as audit:
                    audit.revoke(serial, reason="test")
                assert await watcher.refresh()
                assert watcher.is_revoked(serial)
                service.old = before  # correctly signed, but older
                with pytest.raises(AuthenticationError, match="older than the one held"):
                    await watcher.refresh()
                assert watcher.is_revoked(serial)
            nursery.cancel_scope.cancel()
