"""A program restarted after its certificate was revoked learns it at start.

It re-provisions when the domain would certify it again, and stops with one clear
error when it would not. A real domain service on 127.0.0.1, a soft Tao host.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from taonet import AuthorizationError, ProtocolError
from taonet.domain import ACLGuard, Domain
from taonet.hosts import SoftHost
from taonet.provision import RevocationWatcher, load_or_provision
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.tao_doubles import program

TAG = 1


async def start(nursery: trio.Nursery, domain: Domain) -> int:
    service = DomainService.open(domain.path, PASSWORD)

    async def serve(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        with service:  # closes its audit log when the nursery stops it
            await service.serve(0, task_status=task_status)

    listeners = await nursery.start(serve)
    return int(listeners[0].socket.getsockname()[1])


async def run_program(
    host: SoftHost, domain: Domain, state: Path, port: int, steps: list[str]
) -> tuple[int, bool]:
    """One start of the program: (its certificate's serial, whether it was provisioned)."""
    watcher = RevocationWatcher(domain.policy_cert, ("127.0.0.1", port))
    provisioned = await load_or_provision(
        host.tao_for(program(host.name, TAG)),
        state,
        policy_cert=domain.policy_cert,
        domain_service=("127.0.0.1", port),
        on_step=steps.append,
        revocations=watcher,
    )
    assert provisioned.identity.certificate is not None
    return provisioned.identity.certificate.serial, provisioned.fresh


def revoke(domain: Domain, serial: int) -> None:
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        audit.revoke(serial, reason="key leaked")


async def test_restart_after_revocation_provisions_anew(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    state = tmp_path / "program.sealed"
    steps: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await start(nursery, domain)
        with trio.fail_after(30):
            first, fresh = await run_program(host, domain, state, port, steps)
            assert fresh
            again, fresh = await run_program(host, domain, state, port, steps)
            assert (again, fresh) == (first, False)  # not revoked: unsealed as before
            revoke(domain, first)
            sealed = state.read_bytes()
            steps.clear()
            renewed, fresh = await run_program(host, domain, state, port, steps)
        nursery.cancel_scope.cancel()
    assert fresh
    assert renewed != first
    assert f"the domain revoked certificate serial {first}: provisioning anew" in steps
    assert state.read_bytes() != sealed  # the new certificate is sealed in its place


async def test_restart_after_revocation_stops_when_the_domain_would_not_certify_again(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    domain = make_domain(name="acl")
    rule = domain.program_rule(bytes([TAG]) * 32)
    signer = domain.unlock(PASSWORD)
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(rule), signer)
    host = make_host(domain)
    state = tmp_path / "program.sealed"
    steps: list[str] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first, fresh = await run_program(host, domain, state, await start(nursery, domain), [])
            assert fresh
            nursery.cancel_scope.cancel()
        # The operator revokes it and takes the program out of the policy.
        revoke(domain, first)
        domain.save_guard(ACLGuard(()), signer)
        domain = Domain.load(domain.path)
        async with trio.open_nursery() as nursery:
            port = await start(nursery, domain)
            with pytest.raises(AuthorizationError) as caught:
                await run_program(host, domain, state, port, steps)
            nursery.cancel_scope.cancel()
    message = str(caught.value)
    assert f"revoked this program's certificate (serial {first})" in message
    assert "will not certify it again" in message
    assert "\n" not in message


async def test_restart_without_a_crl_cannot_tell_and_says_so(
    make_domain: MakeDomain, make_host: MakeHost, tmp_path: Path
) -> None:
    """The domain service is down at start: the sealed certificate is not trusted blindly."""
    domain = make_domain(guard="Liberal")
    host = make_host(domain)
    state = tmp_path / "program.sealed"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, domain)
            await run_program(host, domain, state, port, [])
            nursery.cancel_scope.cancel()
        # Nothing listens on that port any more.
        with pytest.raises(ProtocolError, match="cannot check whether the sealed certificate"):
            await run_program(host, domain, state, port, [])
