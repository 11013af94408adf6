"""Program identity bootstrap: provision once, unseal after; a changed program cannot."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from taonet import HostError
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.provision import load_or_provision
from taonet_services.domain_service import DomainService
from tests.conftest import PASSWORD
from tests.tao_doubles import program


@pytest.fixture
async def service(make_domain, make_host) -> AsyncIterator[tuple[Domain, SoftHost, int]]:  # type: ignore[no-untyped-def]
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    service = DomainService.open(domain.path, PASSWORD)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(service.serve, 0))
        yield domain, host, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_first_run_provisions_later_runs_unseal(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    domain, host, port = service
    state = tmp_path / "state" / "program.sealed"
    steps: list[str] = []
    with trio.fail_after(20):
        first = await load_or_provision(
            host.tao_for(program(host.name, 1)),
            state,
            policy_cert=domain.policy_cert,
            domain_service=("127.0.0.1", port),
            on_step=steps.append,
        )
        assert first.fresh
        assert first.principal == program(host.name, 1).extend(domain.policy_subprin)
        assert first.identity.principal == first.principal
        assert state.stat().st_mode & 0o777 == 0o600
        assert any("issued certificate" in s for s in steps)
        again = await load_or_provision(
            host.tao_for(program(host.name, 1)),
            state,
            policy_cert=domain.policy_cert,
            domain_service=("127.0.0.1", port),
        )
    assert not again.fresh
    assert again.identity.certificate == first.identity.certificate


async def test_changed_program_cannot_unseal(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    domain, host, port = service
    state = tmp_path / "program.sealed"
    with trio.fail_after(20):
        await load_or_provision(
            host.tao_for(program(host.name, 1)),
            state,
            policy_cert=domain.policy_cert,
            domain_service=("127.0.0.1", port),
        )
        before = state.read_bytes()
        with pytest.raises(HostError, match="code change"):
            await load_or_provision(
                host.tao_for(program(host.name, 2)),
                state,
                policy_cert=domain.policy_cert,
                domain_service=("127.0.0.1", port),
            )
    assert state.read_bytes() == before  # nothing lost


async def test_state_from_another_domain_is_provisioned_anew(  # type: ignore[no-untyped-def]
    service, make_domain, tmp_path: Path
) -> None:
    domain, host, port = service
    state = tmp_path / "program.sealed"
    with trio.fail_after(20):
        first = await load_or_provision(
            host.tao_for(program(host.name, 1)),
            state,
            policy_cert=domain.policy_cert,
            domain_service=("127.0.0.1", port),
        )
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
