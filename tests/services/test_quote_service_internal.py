"""The quote service's side of the outside review's F1: what a request makes fail in a
way nobody planned for is still a refusal (rate limited, audited, one traceback).

Real TCP and TLS on 127.0.0.1, a real domain directory and the real swtpm's EK (see
``tests/services/test_quote_service.py``, whose fixtures these tests use).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID
from structlog.testing import capture_logs

from taonet import ProtocolError
from taonet.attestation import tpm2_credential as tc
from taonet.quoteservice import (
    QuoteServiceError,
    add_manufacturer_cas,
    request_quote_key_certificate,
)
from taonet_services.domain_service import AUDIT_FILE, AuditLog, RefusalLimits
from taonet_services.quote_service import QuoteService
from tests.conftest import PASSWORD, MakeDomain
from tests.services.test_quote_service import Host, Service


@pytest.fixture
async def quote_svc(make_domain: MakeDomain, swtpm: Any) -> AsyncIterator[Service]:
    """The quote service of a fresh domain that trusts the swtpm's manufacturer CAs."""
    domain = make_domain(name="quote-internal")
    root, intermediate = swtpm.manufacturer_ca_pems()
    add_manufacturer_cas(domain.path, domain.unlock(PASSWORD), root + intermediate)
    with QuoteService.open(domain.path, PASSWORD, request_timeout=3.0) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield Service(domain, service, listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def tpm_host(swtpm: Any) -> Host:
    return Host(swtpm)


def _ek_certificate_with_a_malformed_extension() -> bytes:
    """An EK certificate whose basicConstraints value is not DER: parsed lazily by
    ``cryptography``, it raised ValueError in the middle of the EK checks."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "EK")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x01\x02\x03"), False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


async def test_an_ek_certificate_with_a_malformed_extension_is_a_bad_request(
    quote_svc: Service, tpm_host: Host
) -> None:
    svc, host = quote_svc, tpm_host
    request = host.request(ek_certificate=_ek_certificate_with_a_malformed_extension())
    with pytest.raises(QuoteServiceError, match="EK certificate: malformed") as caught:
        await svc.ask(request)
    assert caught.value.code == "bad_request"
    with svc.audit() as audit:
        last = audit.events()[-1]
    assert last.kind == "refused"
    assert last.reason_code == "bad_request"


async def test_a_bug_a_request_reaches_is_refused_rate_limited_audited_and_logged_once(
    make_domain: MakeDomain, swtpm: Any, tpm_host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = tpm_host

    # A check that lets a library error through, as the tpm2 verifier once did.
    def check_quote_key(key: tc.TpmPublic) -> None:
        raise UnsupportedAlgorithm("Curve 1.3.132.0.32 is not supported")

    monkeypatch.setattr(tc, "check_quote_key", check_quote_key)
    domain = make_domain(name="internal")
    root, intermediate = swtpm.manufacturer_ca_pems()
    add_manufacturer_cas(domain.path, domain.unlock(PASSWORD), root + intermediate)
    limits = RefusalLimits(client_burst=2, client_rate=1e-6, summary_interval=3600)
    answers: list[str] = []
    with capture_logs() as logs, QuoteService.open(domain.path, PASSWORD, limits=limits) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            for _ in range(4):
                with trio.fail_after(30):
                    try:
                        await request_quote_key_certificate(
                            "127.0.0.1", port, domain.policy_cert, host.request()
                        )
                    except QuoteServiceError as exc:
                        answers.append(exc.code)
                    except ProtocolError:
                        answers.append("hung up")
            nursery.cancel_scope.cancel()
    # Before: the handler died on each request (no answer, nothing counted).
    assert answers == ["internal_error"] * 2 + ["hung up"] * 2
    with AuditLog.open(domain.path / AUDIT_FILE) as audit:
        refused = [e for e in audit.events() if e.kind == "refused"]
    assert [e.reason_code for e in refused] == ["internal_error"] * 2 + ["summarized"]
    assert all("internal error (UnsupportedAlgorithm)" in (e.reason or "") for e in refused[:2])
    tracebacks = [e for e in logs if e["event"] == "internal_error"]
    assert len(tracebacks) == 1
    assert "UnsupportedAlgorithm: Curve 1.3.132.0.32" in tracebacks[0]["traceback"]
