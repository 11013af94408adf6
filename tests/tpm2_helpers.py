"""Helpers the TPM 2.0 tests share: X.509 CAs and EK certificates of the test's own
making (for the EK certificate attacks), a domain that lists a swtpm's manufacturer
CA, and a quote service served on 127.0.0.1 for the length of a ``with``.

The fixtures (``swtpm``, ``fresh_swtpm``...) are in ``tests/tpm2_fixtures.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import PASSWORD

if TYPE_CHECKING:
    from taonet.domain import Domain
    from taonet.hosts.tpm2 import Swtpm
    from taonet_services.quote_service import QuoteService


def make_ca(
    name: str | x509.Name,
    *,
    key: Any = None,
    issuer: tuple[x509.Name, Any] | None = None,
    ca: bool = True,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> tuple[x509.Certificate, Any]:
    """A certificate for ``name`` (a common name, or a whole x509.Name) and its key
    (``key``, else a new P-256 one): self-signed unless ``issuer`` gives (name, key);
    BasicConstraints ``ca``, critical; valid from a day ago for 30 days unless told;
    ``extensions`` added, critical."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = (
        name
        if isinstance(name, x509.Name)
        else x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    )
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, True)
    return builder.sign(issuer_key, hashes.SHA256()), key


def ca_pem(name: str, **kw: Any) -> bytes:
    """:func:`make_ca`'s certificate, as PEM."""
    return make_ca(name, **kw)[0].public_bytes(serialization.Encoding.PEM)


def make_ek_cert(
    ek_key: Any,
    issuer: x509.Certificate,
    issuer_key: Any,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    eku: x509.ObjectIdentifier | None = None,
    with_eku: bool = True,
    usage: tuple[str, ...] | None = None,
) -> x509.Certificate:
    """An EK certificate (empty subject, not a CA) for the public key ``ek_key``,
    issued by ``issuer``: with the EK certificate EKU (or ``eku``) unless ``with_eku``
    is False, and a critical keyUsage allowing exactly ``usage`` when given."""
    from taonet.attestation import tpm2_credential as tc

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(ek_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    )
    if with_eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([eku or tc.EK_CERTIFICATE_EKU]), False
        )
    if usage is not None:
        builder = builder.add_extension(key_usage(*usage), True)
    return builder.sign(issuer_key, hashes.SHA256())


def key_usage(*allowed: str) -> x509.KeyUsage:
    """A keyUsage extension value allowing exactly ``allowed`` (attribute names)."""
    flags = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    flags.update(dict.fromkeys(allowed, True))
    return x509.KeyUsage(**flags)


def trust_swtpm(domain: Domain, swtpm: Swtpm) -> None:
    """Have ``domain`` (password :data:`PASSWORD`) list the swtpm's manufacturer CAs."""
    from taonet.quoteservice import add_manufacturer_cas

    root, intermediate = swtpm.manufacturer_ca_pems()
    add_manufacturer_cas(domain.path, domain.unlock(PASSWORD), root + intermediate)


@contextlib.asynccontextmanager
async def serving_quote_service(
    domain: Domain, **kw: Any
) -> AsyncIterator[tuple[QuoteService, int]]:
    """The domain's quote service (opened with ``kw``), served on 127.0.0.1 on a free
    port: (service, port); stopped and closed when the ``with`` ends."""
    from taonet_services.quote_service import QuoteService

    with QuoteService.open(domain.path, PASSWORD, **kw) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield service, listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()
