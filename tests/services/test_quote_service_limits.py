"""The quote service under floods, over real TCP and TLS on 127.0.0.1 with a real
domain directory and the real swtpm's (public) EK certificate:

* s14/r7: with only a TPM's public EK certificate, an anonymous client had the domain
  sign and audit certificates for fabricated quote keys without limit (40 in 0.5 s).
  Issuances are now limited per address and per EK certificate, and each issued row
  says the certificate is usable only by the TPM that activates it;
* slowloris: many clients from many addresses, each sending a byte now and then, are
  all cut off at the request deadline while an honest client is still served;
* s14/r6 against a running service: it follows the signed manufacturer CA list and
  refuses an older one put back;
* s14/a4 ek_malleable: an ECDSA-signed EK certificate has a second valid encoding
  (its signature's s replaced by n - s); the per-EK budget is the EK key's, so the two
  encodings share it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from taonet import ProtocolError
from taonet.attestation import tpm2_credential as tc
from taonet.attestation.tpm2 import host_name
from taonet.quoteservice import (
    MAX_REQUEST,
    OP_CERTIFY_QUOTE_KEY,
    QuoteKeyRequest,
    QuoteServiceError,
    add_manufacturer_cas,
    remove_manufacturer_cas,
    request_quote_key_certificate,
)
from taonet.wire import Envelope, Role
from taonet_services.domain_service import AUDIT_FILE, AuditLog, RefusalLimits
from taonet_services.quote_service import ISSUED_REASON, QuoteService
from tests.conftest import PASSWORD, MakeDomain
from tests.services.flood import open_from
from tests.services.test_quote_service import PCRS, Host
from tests.tpm2_helpers import make_ca, make_ek_cert

#: Limits that never bind (to test the other one alone).
OPEN = RefusalLimits(client_burst=1000, client_rate=1.0, total_burst=1000, total_rate=1.0)


def fabricated(host: Host) -> QuoteKeyRequest:
    """What r7 sends: the TPM's public EK certificate and area, and the quote-key
    template with a key made in software (no TPM holds it)."""
    area = bytearray(host.area.raw)
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    x, y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
    # The unique field closes the ECC area: TPM2B x then TPM2B y.
    unique = len(x).to_bytes(2, "big") + x + len(y).to_bytes(2, "big") + y
    area[-len(unique) :] = unique
    public = tc.parse_public(bytes(area), what="fabricated quote key")
    return host.request(
        quote_key_public=public.raw, host_name=host_name(public.public_key_der(), PCRS)
    )


@pytest.fixture
def serve(make_domain: MakeDomain, swtpm: Any) -> Callable[..., Any]:
    """``async with serve(**kwargs) as (service, port)``: a quote service of a fresh
    domain (trusting the swtpm's CAs) started with those keyword arguments."""
    domain = make_domain(name="quote-limits")
    root, intermediate = swtpm.manufacturer_ca_pems()
    add_manufacturer_cas(domain.path, domain.unlock(PASSWORD), root + intermediate)

    @contextlib.asynccontextmanager
    async def start(**kwargs: Any) -> AsyncIterator[tuple[QuoteService, int]]:
        with QuoteService.open(domain.path, PASSWORD, **kwargs) as service:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(service.serve, 0))
                yield service, listeners[0].socket.getsockname()[1]
                nursery.cancel_scope.cancel()

    return start


@pytest.fixture(scope="module")
def host(swtpm: Any) -> Host:
    return Host(swtpm)


@pytest.mark.parametrize("limited", ["address", "ek"])
async def test_issuance_flood_is_limited(serve: Any, host: Host, limited: str) -> None:
    """s14/r7 again: certificates for fabricated keys with one public EK certificate
    from one address. Three are issued (each row saying the certificate is usable only
    by the TPM that activates it), the rest refused rate_limited naming the bucket,
    until the bucket refills; a bad request does not spend the issuance budget."""
    now = [0.0]
    tight = RefusalLimits(client_burst=3, client_rate=0.01)
    limits = {"address_issuance_limits": OPEN, "ek_issuance_limits": OPEN}
    limits[f"{limited}_issuance_limits"] = tight
    answers: list[str] = []
    async with serve(monotonic=lambda: now[0], **limits) as (service, port):
        cert = service.domain.policy_cert

        async def ask(request: QuoteKeyRequest) -> None:
            with trio.fail_after(30):
                try:
                    await request_quote_key_certificate("127.0.0.1", port, cert, request)
                    answers.append("issued")
                except QuoteServiceError as exc:
                    answers.append(exc.code)

        bad = fabricated(host)
        await ask(QuoteKeyRequest(bad.ek_certificate, bad.ek_public, bad.quote_key_public,
                                  host_name(host.key_der, PCRS)))  # fmt: skip
        for _ in range(6):
            await ask(fabricated(host))
        now[0] += 100.0  # one token back (0.01 a second)
        await ask(fabricated(host))
        await ask(fabricated(host))
        path = service.domain.path / AUDIT_FILE
    assert answers == ["refused"] + ["issued"] * 3 + ["rate_limited"] * 3 + [
        "issued",
        "rate_limited",
    ]
    with AuditLog.open(path) as audit:
        events = audit.events()
    issued = [e for e in events if e.kind == "issued"]
    assert len(issued) == 4
    assert {e.reason for e in issued} == {ISSUED_REASON}
    assert "usable only by the TPM that activates it" in ISSUED_REASON
    limited_rows = [e for e in events if e.reason_code == "rate_limited"]
    what = "this address" if limited == "address" else "this TPM's EK"
    assert limited_rows
    assert all(e.reason is not None and what in e.reason for e in limited_rows)


async def test_many_slow_clients_are_cut_off_and_others_served(serve: Any, host: Host) -> None:
    """Slowloris from 40 addresses, two connections each (more than the service's 32
    connections): each sends a byte of a request every 0.2 s, never idle for long. An
    honest client gets its certificate meanwhile; every slow connection is closed by
    the service (at the request deadline, or evicted as the quietest)."""
    data = b"".join(
        Envelope(Role.CLIENT, body_limit=MAX_REQUEST * 2).request(
            OP_CERTIFY_QUOTE_KEY, 1, b"x" * 2000
        )
    )
    closed: list[str] = []
    settled = 0  # clients that sent their first byte or were turned away before it
    all_in = trio.Event()
    clients = 80
    async with serve(request_timeout=2.0, max_connections=32) as (service, port):
        cert = service.domain.policy_cert

        async def slow(address: str) -> None:
            nonlocal settled
            try:
                stream = await open_from(address, port, cert)
            except (ProtocolError, OSError, trio.BrokenResourceError):
                closed.append("at handshake")  # not let in: as good as cut off
                stream = None
            if stream is not None:
                async with stream:
                    try:
                        for i in range(len(data)):
                            await stream.send_all(data[i : i + 1])
                            if i == 0:
                                settled += 1
                                if settled == clients:
                                    all_in.set()
                            await trio.sleep(0.2)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        closed.append("cut off")
                        if i > 0:
                            return
                    else:
                        closed.append("sent it all")  # the service let it finish: a failure
                        return
            settled += 1  # turned away before its first byte went through
            if settled == clients:
                all_in.set()

        with trio.fail_after(120):
            async with trio.open_nursery() as attackers:
                for i in range(clients):
                    attackers.start_soon(slow, f"127.0.3.{1 + i // 2}")
                await all_in.wait()
                reply = await request_quote_key_certificate("127.0.0.1", port, cert, host.request())
                assert reply.credential_blob
    assert len(closed) == clients
    assert "sent it all" not in closed
    assert closed.count("cut off") >= 32


async def test_running_service_follows_the_signed_ca_list_and_refuses_its_rollback(
    serve: Any, host: Host, swtpm: Any
) -> None:
    """s14/r6 against a running service: the intermediate CA that signed the EK
    certificate is removed (a new signed configuration) and the next request is refused;
    the older list put back with its domain.sig is a rollback the service refuses, and
    the removal stays in force."""
    _, intermediate = swtpm.manufacturer_ca_pems()
    async with serve() as (service, port):
        path = service.domain.path
        cert = service.domain.policy_cert

        async def ask() -> str:
            with trio.fail_after(30):
                try:
                    await request_quote_key_certificate("127.0.0.1", port, cert, host.request())
                except QuoteServiceError as exc:
                    return f"{exc.code}: {exc.reason}"
                return "issued"

        assert await ask() == "issued"
        old_cas, old_sig = (
            (path / "manufacturer_cas.pem").read_bytes(),
            (path / "domain.sig").read_bytes(),
        )
        remove_manufacturer_cas(path, service.domain.unlock(PASSWORD), intermediate)
        answer = await ask()
        assert answer.startswith("refused: ")
        assert "not a manufacturer CA this domain trusts" in answer
        serial = service.domain_watch.serial
        (path / "manufacturer_cas.pem").write_bytes(old_cas)
        (path / "domain.sig").write_bytes(old_sig)
        answer = await ask()
        assert "not a manufacturer CA this domain trusts" in answer
        assert service.domain_watch.serial == serial
        assert len(service.manufacturer_cas) == 1


#: The order of the P-256 group.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def other_encoding(cert_der: bytes) -> bytes:
    """The same certificate, its ECDSA signature's s replaced by n - s: still valid."""
    cert = x509.load_der_x509_certificate(cert_der)
    r, s = decode_dss_signature(cert.signature)
    old, new = cert.signature, encode_dss_signature(r, P256_N - s)

    def bit_string(sig: bytes) -> bytes:
        return bytes([0x03, len(sig) + 1, 0x00]) + sig

    assert cert_der[:2] == b"\x30\x82"
    assert cert_der.endswith(bit_string(old))
    inner = cert_der[4 : -len(bit_string(old))] + bit_string(new)
    return b"\x30\x82" + len(inner).to_bytes(2, "big") + inner


async def test_two_encodings_of_one_ek_certificate_share_the_ek_budget(
    make_domain: MakeDomain, host: Host
) -> None:
    """s14/a4 ek_malleable: a manufacturer CA that signs with ECDSA; the TPM's EK
    certificate and its other valid encoding, sent in turn, spend one budget of 3."""
    domain = make_domain(name="quote-malleable")
    ca, ca_key = make_ca("ECDSA TPM manufacturer")
    ek_key = x509.load_der_x509_certificate(host.ek_cert).public_key()
    ek_der = make_ek_cert(ek_key, ca, ca_key, usage=("key_agreement",)).public_bytes(
        serialization.Encoding.DER
    )
    twin = other_encoding(ek_der)
    assert twin != ek_der
    now = time.time_ns()
    for der in (ek_der, twin):  # both pass every EK check
        tc.check_ek_certificate(tc.load_ek_certificate(der), [ca], now_ns=now)
    add_manufacturer_cas(
        domain.path, domain.unlock(PASSWORD), ca.public_bytes(serialization.Encoding.PEM)
    )
    tight = RefusalLimits(client_burst=3, client_rate=0.0001)
    answers: list[str] = []
    with QuoteService.open(
        domain.path, PASSWORD, address_issuance_limits=OPEN, ek_issuance_limits=tight
    ) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            port = listeners[0].socket.getsockname()[1]
            for der in (ek_der, twin) * 3:
                request = fabricated(host)
                request = QuoteKeyRequest(
                    der, request.ek_public, request.quote_key_public, request.host_name
                )
                with trio.fail_after(30):
                    try:
                        await request_quote_key_certificate(
                            "127.0.0.1", port, domain.policy_cert, request
                        )
                        answers.append("issued")
                    except QuoteServiceError as exc:
                        answers.append(exc.code)
            nursery.cancel_scope.cancel()
    assert answers == ["issued"] * 3 + ["rate_limited"] * 3
