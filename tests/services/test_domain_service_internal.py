"""A request that reaches a bug is still a refusal: rate limited, audited, one traceback.

The outside review's F1: a tpm2 attestation whose quote key names a curve
``cryptography`` does not support (secp224k1) made ``validate`` raise
UnsupportedAlgorithm; the domain service's handler then never refused (no rate
limiting, no audit row) and logged a traceback per request. Both tests flood the real
service over TCP and TLS from 127.0.0.2 (``tests/services/flood.py``), the refusal
limiter on an injected clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import trio
from cryptography.exceptions import UnsupportedAlgorithm
from structlog.testing import capture_logs

from taonet import auth
from taonet.attestation.tpm2 import host_name, tpm2_attestation
from taonet.crypto import Signer
from taonet.domain import ProgramCertifier
from taonet.provision import ERROR_INTERNAL, ERROR_INVALID_ATTESTATION
from taonet.wire import message_class
from taonet_services.domain_service import AuditEvent
from taonet_services.domain_service._limits import RefusalLimits
from taonet_services.domain_service._service import ERROR_RATE_LIMITED
from tests.attestation.tpm2_quotes import PCRS
from tests.services.flood import flood
from tests.services.test_domain_service_flood import full_refusals, start

#: secp224k1 (1.3.132.0.32): OpenSSL parses the SPKI, ``cryptography`` does not support it.
SECP224K1_QUOTE_KEY = bytes.fromhex("3046301006072a8648ce3d020106052b81040020033200") + b"\x04" * 49
LIMITS = RefusalLimits(client_burst=3, client_rate=0.5, summary_interval=60.0)


def _unsupported_curve_request() -> bytes:
    """x12's payload: a certify request whose tpm2 quote key is on secp224k1."""
    program = Signer.generate().public_key_der()
    host = host_name(SECP224K1_QUOTE_KEY, PCRS)
    now = time.time_ns()
    stmt = auth.encode(
        auth.Says(
            speaker=host,
            message=auth.Speaksfor(auth.key_principal(program), host),
            time=now - 10**9,
            expiration=now + 3600 * 10**9,
        )
    )
    att = tpm2_attestation(stmt, SECP224K1_QUOTE_KEY, b"\xff" * 20, b"\x00" * 72)
    request = message_class("DomainServiceRequest")(
        kind="certify", attestation=att.to_bytes(), program_key=program
    )
    return bytes(request.SerializeToString())


def _refusals(events: Sequence[AuditEvent], code: str) -> list[AuditEvent]:
    return [e for e in full_refusals(events) if e.reason_code == code]


async def test_an_unsupported_curve_quote_key_is_an_ordinary_counted_refusal(  # type: ignore[no-untyped-def]
    make_domain, make_host
) -> None:
    payload = _unsupported_curve_request()
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, make_domain, make_host, LIMITS)
            answers = await flood(svc.port, svc.domain.policy_cert, payload, 5)
            # Before the fix: five "closed" (the handler died), no refusal counted.
            assert answers == {ERROR_INVALID_ATTESTATION: 3, ERROR_RATE_LIMITED: 1, "closed": 1}
            # A legitimate client is still served.
            await svc.certify()
            nursery.cancel_scope.cancel()
    rows = _refusals(svc.events(), ERROR_INVALID_ATTESTATION)
    assert len(rows) == 3
    assert all("TPM quote key is malformed" in (e.reason or "") for e in rows)
    assert all("1.3.132.0.32" in (e.reason or "") for e in rows)
    assert not [e for e in logs if e["event"] == "internal_error"]


async def test_a_bug_a_request_reaches_is_refused_rate_limited_audited_and_logged_once(  # type: ignore[no-untyped-def]
    make_domain, make_host, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The certifier as it was before the verifier's fix: a library error escapes it.
    def certify(self: ProgramCertifier, attestation: Any, program_key_der: bytes) -> Any:
        raise UnsupportedAlgorithm("Curve 1.3.132.0.32 is not supported")

    monkeypatch.setattr(ProgramCertifier, "certify", certify)
    payload = _unsupported_curve_request()
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            svc = await start(nursery, make_domain, make_host, LIMITS)
            answers = await flood(svc.port, svc.domain.policy_cert, payload, 5)
            assert answers == {ERROR_INTERNAL: 3, ERROR_RATE_LIMITED: 1, "closed": 1}
            svc.clock.now += 2.1  # one refusal's worth later: refused again, not rate limited
            assert await flood(svc.port, svc.domain.policy_cert, payload, 1) == {ERROR_INTERNAL: 1}
            nursery.cancel_scope.cancel()
    rows = _refusals(svc.events(), ERROR_INTERNAL)
    assert len(rows) == 4
    assert all("internal error (UnsupportedAlgorithm)" in (e.reason or "") for e in rows)
    tracebacks = [e for e in logs if e["event"] == "internal_error"]
    assert len(tracebacks) == 1  # once, not per request
    assert "UnsupportedAlgorithm: Curve 1.3.132.0.32" in tracebacks[0]["traceback"]
    assert len(tracebacks[0]["traceback"]) <= 8000 + 200
