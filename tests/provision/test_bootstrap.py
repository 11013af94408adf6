"""Program identity bootstrap: provision once, unseal after; a changed program cannot."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from taonet import HostError
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.provision import Provisioned, load_or_provision
from taonet_services.domain_service import DomainService
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.tao_doubles import program


@attrs.frozen
class Service:
    """A domain service on 127.0.0.1:``port`` for ``domain``, and a host it certified."""

    domain: Domain
    host: SoftHost
    port: int

    async def provision(self, tag: int, state: Path, **options: Any) -> Provisioned:
        """load_or_provision for program ``tag`` on the host, against this service."""
        return await load_or_provision(
            self.host.tao_for(program(self.host.name, tag)),
            state,
            policy_cert=self.domain.policy_cert,
            domain_service=("127.0.0.1", self.port),
            **options,
        )


@pytest.fixture
async def service(make_domain: MakeDomain, make_host: MakeHost) -> AsyncIterator[Service]:
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield Service(domain, host, listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()


async def test_first_run_provisions_later_runs_unseal(service: Service, tmp_path: Path) -> None:
    domain, host = service.domain, service.host
    state = tmp_path / "state" / "program.sealed"
    steps: list[str] = []
    with trio.fail_after(20):
        first = await service.provision(1, state, on_step=steps.append)
        assert first.fresh
        assert first.principal == program(host.name, 1).extend(domain.policy_subprin)
        assert first.identity.principal == first.principal
        assert state.stat().st_mode & 0o777 == 0o600
        assert any("issued certificate" in s for s in steps)
        again = await service.provision(1, state)
    assert not again.fresh
    assert again.identity.certificate == first.identity.certificate


async def test_changed_program_cannot_unseal(service: Service, tmp_path: Path) -> None:
    state = tmp_path / "program.sealed"
    with trio.fail_after(20):
        await service.provision(1, state)
        before = state.read_bytes()
        with pytest.raises(HostError, match="code change"):
            await service.provision(2, state)
    assert state.read_bytes() == before  # nothing lost


async def test_state_from_another_domain_is_provisioned_anew(
    service: Service, make_domain: MakeDomain, tmp_path: Path
) -> None:
    domain, host = service.domain, service.host
    state = tmp_path / "program.sealed"
    with trio.fail_after(20):
        first = await service.provision(1, state)
        # Same program, same host, but the sealed state names another policy
        # certificate (as if the domain were re-created): it provisions anew.
        other = make_domain(guard="Liberal")
        tao = host.tao_for(program(host.name, 1))
        from taonet.provision._bootstrap import _unseal_state

        steps: list[str] = []
        await tao.extend_tao_name(domain.policy_subprin)
        assert await _unseal_state(tao, state, other.policy_cert, steps.append) is None
        assert "another domain" in steps[0]
    assert first.fresh
