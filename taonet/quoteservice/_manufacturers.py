"""The manufacturer CA certificates a domain trusts for TPM endorsement keys.

One file in the domain directory, :data:`MANUFACTURER_CAS_FILE`
(``manufacturer_cas.pem``): the CA certificates in PEM, roots and intermediates
alike (a manufacturer, like swtpm's local CA, usually signs EK certificates with an
intermediate, and the quote service walks up to a listed root), after a header that
carries the policy key's signature over them::

    # taonet: the manufacturer CAs this domain trusts for TPM endorsement keys.
    # signature: <base64 of the policy key's signature over the PEM text below>
    -----BEGIN CERTIFICATE-----
    ...

The signature (context :data:`MANUFACTURER_CAS_CONTEXT`) covers the exact bytes
after the header, so whoever can write the domain directory but does not hold the
policy key cannot add a CA: :func:`load_manufacturer_cas` refuses a list whose
signature does not verify. ``openssl x509`` and other PEM readers skip the header.
It is written atomically, signature and certificates together, by
``taonet domain policy --add-manufacturer-ca PEM`` and ``--remove-manufacturer-ca
PEM``. No file: no CA is trusted, and every EK certificate is refused.

The list carries no serial: someone who can write the directory can put back an
earlier signed list (a CA removed since trusted again). The quote service reads the
file at start-up.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from taonet._errors import AuthenticationError, ConfigError
from taonet._files import atomic_write, read_file
from taonet.crypto import Signer, Verifier

__all__ = [
    "MANUFACTURER_CAS_CONTEXT",
    "MANUFACTURER_CAS_FILE",
    "MAX_MANUFACTURER_CAS",
    "add_manufacturer_cas",
    "load_manufacturer_cas",
    "remove_manufacturer_cas",
]

MANUFACTURER_CAS_FILE: Final = "manufacturer_cas.pem"
MANUFACTURER_CAS_CONTEXT: Final = "taonet Manufacturer CA List Signing Context V1"
#: Largest file read (a CA certificate is 1-2 kB in PEM).
MAX_MANUFACTURER_CAS: Final = 1024 * 1024
_TITLE: Final = b"# taonet: the manufacturer CAs this domain trusts for TPM endorsement keys.\n"
_SIGNATURE: Final = b"# signature: "


def _parse_pems(data: bytes, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{what}: not PEM certificates: {exc}") from None


def _pem_text(cas: Sequence[x509.Certificate]) -> bytes:
    out = b""
    for ca in cas:
        out += f"# {ca.subject.rfc4514_string()[:200]}\n".encode("ascii", "replace")
        out += ca.public_bytes(serialization.Encoding.PEM)
    return out


def load_manufacturer_cas(
    domain_dir: str | os.PathLike[str], verifier: Verifier
) -> list[x509.Certificate]:
    """The CA certificates the domain lists, its signature checked under ``verifier``
    (the policy key). ``[]`` with no file; ConfigError for a file that does not verify
    or parse."""
    path = Path(domain_dir) / MANUFACTURER_CAS_FILE
    if not path.exists():
        return []
    data = read_file(path, limit=MAX_MANUFACTURER_CAS)
    title, _, rest = data.partition(b"\n")
    line, _, body = rest.partition(b"\n")
    if title + b"\n" != _TITLE or not line.startswith(_SIGNATURE):
        raise ConfigError(f"{path}: not a signed manufacturer CA list (header missing)")
    try:
        signature = base64.b64decode(line[len(_SIGNATURE) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}: the signature line is not base64") from None
    try:
        verifier.verify(body, MANUFACTURER_CAS_CONTEXT, signature)
    except AuthenticationError as exc:
        raise ConfigError(
            f"{path}: not signed by this domain's policy key ({exc}); re-add the CAs with "
            "`taonet domain policy --add-manufacturer-ca`"
        ) from None
    cas = _parse_pems(body, str(path))
    for ca in cas:
        if not _is_ca(ca):
            raise ConfigError(f"{path}: {ca.subject.rfc4514_string()[:200]} is not a CA")
    return cas


def _save(domain_dir: Path, signer: Signer, cas: Sequence[x509.Certificate]) -> None:
    body = _pem_text(cas)
    signature = base64.b64encode(signer.sign(body, MANUFACTURER_CAS_CONTEXT))
    atomic_write(
        domain_dir / MANUFACTURER_CAS_FILE,
        _TITLE + _SIGNATURE + signature + b"\n" + body,
        mode=0o644,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` says it is a CA (BasicConstraints with ca true)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _fingerprint(ca: x509.Certificate) -> bytes:
    return ca.fingerprint(hashes.SHA256())


def add_manufacturer_cas(
    domain_dir: str | os.PathLike[str], signer: Signer, pem: bytes
) -> list[x509.Certificate]:
    """Add the CA certificates in ``pem`` to the list (signed again by ``signer``, the
    policy key); returns those that were not listed yet. ConfigError for certificates
    that are not CAs or do not parse."""
    directory = Path(domain_dir)
    new = _parse_pems(pem, "the PEM given")
    if not new:
        raise ConfigError("no PEM certificate in what was given")
    for ca in new:
        if not _is_ca(ca):
            raise ConfigError(f"{ca.subject.rfc4514_string()[:200]} is not a CA certificate")
    cas = load_manufacturer_cas(directory, signer.verifier())
    known = {_fingerprint(ca) for ca in cas}
    added = []
    for ca in new:
        if _fingerprint(ca) not in known:
            known.add(_fingerprint(ca))
            cas.append(ca)
            added.append(ca)
    _save(directory, signer, cas)
    return added


def remove_manufacturer_cas(
    domain_dir: str | os.PathLike[str], signer: Signer, pem: bytes
) -> list[x509.Certificate]:
    """Remove the certificates in ``pem`` from the list (signed again); returns those
    that were listed. ConfigError when none of them was."""
    directory = Path(domain_dir)
    gone = {_fingerprint(ca) for ca in _parse_pems(pem, "the PEM given")}
    if not gone:
        raise ConfigError("no PEM certificate in what was given")
    cas = load_manufacturer_cas(directory, signer.verifier())
    removed = [ca for ca in cas if _fingerprint(ca) in gone]
    if not removed:
        raise ConfigError("none of these certificates is a listed manufacturer CA")
    _save(directory, signer, [ca for ca in cas if _fingerprint(ca) not in gone])
    return removed
