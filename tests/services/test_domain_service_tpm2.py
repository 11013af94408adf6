"""The domain service over a real Tao channel, for programs on TPM hosts: a host in a
state the policy does not trust is refused (``unauthorized``, audited, the reason
naming the PCR that differs), one in a trusted state gets its certificate."""

from __future__ import annotations

import functools
import hashlib

import pytest
import trio

from taonet import AuthorizationError
from taonet.attestation import Attestation
from taonet.attestation.tpm2 import pcrs_ext
from taonet.domain import ACLGuard, host_state_rule
from taonet.provision import request_certificate
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from tests.conftest import PASSWORD, MakeDomain
from tests.domain.test_tpm2_certifier import PROGRAM_HASH, TRUSTED, request


async def test_the_service_refuses_an_untrusted_tpm_host_state(make_domain: MakeDomain) -> None:
    domain = make_domain(name="svc-tpm2")
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    guard = guard.with_rule(domain.program_rule(PROGRAM_HASH))
    domain.save_guard(
        guard.with_rule(host_state_rule(str(pcrs_ext(TRUSTED)))), domain.unlock(PASSWORD)
    )
    booted = {**TRUSTED, 7: hashlib.sha256(b"secure boot off").digest()}
    with DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]

            async def certify(att: bytes, key: bytes) -> object:
                return await request_certificate(
                    "127.0.0.1", port, domain.policy_cert, Attestation.from_bytes(att), key
                )

            with trio.fail_after(20):
                att, key = await request(domain, TRUSTED)
                issued = await certify(att, key)
                att, key = await request(domain, booted)
                with pytest.raises(AuthorizationError, match="PCR 7 is") as info:
                    await certify(att, key)
            nursery.cancel_scope.cancel()
    assert "unauthorized" in str(info.value)
    assert issued is not None
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        refused = [e for e in audit.events() if e.kind == "refused"]
    assert [e.reason_code for e in refused] == ["unauthorized"]
    assert "PCR 7 is" in (refused[0].reason or "")
