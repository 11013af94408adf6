"""RevocationWatcher(cache=...): the last CRL survives a restart while the service is down,
and a cached CRL that is expired or from another domain is not trusted."""

from __future__ import annotations

import functools
import socket
import time
from pathlib import Path

import pytest
import structlog
import trio

from taonet import AuthenticationError, certs
from taonet.domain import Domain
from taonet.provision import RevocationWatcher
from taonet_services.domain_service import DomainService
from tests.conftest import PASSWORD, MakeDomain

DAY_NS = 86400 * 10**9


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def crl(domain: Domain, *serials: int, now_ns: int, number: int = 1) -> bytes:
    return certs.make_crl(
        domain.unlock(PASSWORD), domain.policy_anchor, serials, now_ns=now_ns, crl_number=number
    )


async def test_a_restart_with_the_service_down_keeps_the_cached_crl(
    make_domain: MakeDomain, tmp_path: Path
) -> None:
    domain = make_domain(guard="Liberal")
    cache = tmp_path / "crl.der"
    with trio.fail_after(30), DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            first = RevocationWatcher(domain.policy_cert, ("127.0.0.1", port), cache=cache)
            assert await first.refresh()
            nursery.cancel_scope.cancel()
        assert first.crl is not None
        assert cache.read_bytes() == await service.current_crl()
        # Restarted while the service is down: the cached CRL serves.
        again = RevocationWatcher(domain.policy_cert, ("127.0.0.1", closed_port()), cache=cache)
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(again.run)
                nursery.cancel_scope.cancel()
    assert again.crl == first.crl
    again.check(12345)  # a serial the CRL does not list passes
    assert any(e["event"] == "crl_refresh_failed" for e in logs)


@pytest.mark.parametrize("which", ["expired", "another domain", "garbage"])
async def test_a_cached_crl_that_does_not_verify_is_ignored(
    make_domain: MakeDomain, tmp_path: Path, which: str
) -> None:
    domain = make_domain(guard="Liberal")
    cache = tmp_path / "crl.der"
    now = time.time_ns()
    if which == "expired":
        cache.write_bytes(crl(domain, now_ns=now - 2 * DAY_NS))
    elif which == "another domain":
        cache.write_bytes(crl(make_domain(name="other"), now_ns=now))
    else:
        cache.write_bytes(b"\x30\x03\x02\x01\x01")
    watcher = RevocationWatcher(domain.policy_cert, ("127.0.0.1", closed_port()), cache=cache)
    with structlog.testing.capture_logs() as logs, trio.fail_after(30):
        assert not await watcher.load_cache()
    assert watcher.crl is None
    assert any(e["event"] == "crl_cache_refused" for e in logs)
    with pytest.raises(AuthenticationError, match="no verified CRL"):
        watcher.check(1)


async def test_a_cached_crl_older_than_the_one_held_is_not_taken(
    make_domain: MakeDomain, tmp_path: Path
) -> None:
    domain = make_domain(guard="Liberal")
    cache = tmp_path / "crl.der"
    now = time.time_ns()
    watcher = RevocationWatcher(domain.policy_cert, ("127.0.0.1", closed_port()), cache=cache)
    assert await watcher.update(crl(domain, 7, now_ns=now, number=5))
    assert certs.verify_crl(domain.policy_anchor, cache.read_bytes(), now_ns=now).number == 5
    cache.write_bytes(crl(domain, now_ns=now, number=4))  # someone puts back an older one
    assert not await watcher.load_cache()
    assert watcher.is_revoked(7)
