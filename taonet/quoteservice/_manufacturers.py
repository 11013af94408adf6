"""The manufacturer CA certificates a domain trusts for TPM endorsement keys.

One file in the domain directory, :data:`MANUFACTURER_CAS_FILE`
(``manufacturer_cas.pem``): the CA certificates in PEM, roots and intermediates
alike (a manufacturer, like swtpm's local CA, usually signs EK certificates with an
intermediate, and the quote service walks up to a listed root), each after a comment
line naming its subject::

    # taonet: the manufacturer CAs this domain trusts for TPM endorsement keys.
    # CN=Vendor Root
    -----BEGIN CERTIFICATE-----
    ...

The file carries no signature of its own: its SHA-256 is a field of the domain's
signed configuration (``domain.sig``, see :mod:`taonet.domain._signed_config`), which
also carries the serial that tells the current configuration from an earlier one. So
whoever can write the domain directory but does not hold the policy key can neither
add a CA (the digest differs: the domain is refused) nor put back an earlier signed
list together with the ``domain.sig`` that named it (its serial is below the one
``policy_keys/config_serial`` records: refused as rolled back).
:func:`manufacturer_cas` reads the list only from a :class:`~taonet.domain.Domain`
that :meth:`~taonet.domain.Domain.load` checked, from the very bytes it hashed.

``taonet domain policy --add-manufacturer-ca PEM`` and ``--remove-manufacturer-ca
PEM`` write the file atomically and sign the configuration again (a new serial);
``taonet domain policy --resign`` signs the file as it stands. No file (and no digest
signed): no CA is trusted, and every EK certificate is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from taonet._errors import ConfigError
from taonet.crypto import Signer, Verifier
from taonet.domain import Domain
from taonet.domain._signed_config import MANUFACTURER_CAS_FILE, MAX_MANUFACTURER_CAS

__all__ = [
    "MANUFACTURER_CAS_FILE",
    "MAX_MANUFACTURER_CAS",
    "add_manufacturer_cas",
    "load_manufacturer_cas",
    "manufacturer_cas",
    "remove_manufacturer_cas",
]

_TITLE: Final = b"# taonet: the manufacturer CAs this domain trusts for TPM endorsement keys.\n"


def _parse_pems(data: bytes, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{what}: not PEM certificates: {exc}") from None


def _check_cas(cas: Sequence[x509.Certificate], what: str) -> None:
    for ca in cas:
        if not _is_ca(ca):
            raise ConfigError(f"{what}{ca.subject.rfc4514_string()[:200]} is not a CA certificate")


def _pem_text(cas: Sequence[x509.Certificate]) -> bytes:
    out = _TITLE
    for ca in cas:
        out += f"# {ca.subject.rfc4514_string()[:200]}\n".encode("ascii", "replace")
        out += ca.public_bytes(serialization.Encoding.PEM)
    return out


def manufacturer_cas(domain: Domain) -> list[x509.Certificate]:
    """The CA certificates ``domain`` lists: parsed from the bytes :meth:`Domain.load`
    checked against the signed configuration's digest (``[]`` with no list).
    ConfigError for a list that does not parse or holds a certificate that is not a CA."""
    data = domain.manufacturer_cas_pem
    if data is None:
        return []
    what = str(domain.path / MANUFACTURER_CAS_FILE)
    cas = _parse_pems(data, what)
    _check_cas(cas, f"{what}: ")
    return cas


def load_manufacturer_cas(
    domain_dir: str | os.PathLike[str], verifier: Verifier
) -> list[x509.Certificate]:
    """Load the domain at ``domain_dir`` (every signature, digest and the serial record
    checked: ConfigError otherwise) and return the CAs it lists. ``verifier`` must be
    its policy key (ConfigError otherwise)."""
    domain = Domain.load(Path(domain_dir))
    if verifier.public_key_der() != domain.policy_verifier.public_key_der():
        raise ConfigError(f"{domain.path}: this domain has another policy key")
    return manufacturer_cas(domain)


def _domain(domain: Domain | str | os.PathLike[str]) -> Domain:
    return domain if isinstance(domain, Domain) else Domain.load(Path(domain))


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
    domain: Domain | str | os.PathLike[str], signer: Signer, pem: bytes
) -> list[x509.Certificate]:
    """Add the CA certificates in ``pem`` to the list of ``domain`` (a loaded domain,
    kept up to date, or a directory to load) and sign its configuration again with
    ``signer`` (the policy key); returns those that were not listed yet. ConfigError
    for certificates that are not CAs or do not parse."""
    new = _parse_pems(pem, "the PEM given")
    if not new:
        raise ConfigError("no PEM certificate in what was given")
    _check_cas(new, "")
    loaded = _domain(domain)
    cas = manufacturer_cas(loaded)
    known = {_fingerprint(ca) for ca in cas}
    added = []
    for ca in new:
        if _fingerprint(ca) not in known:
            known.add(_fingerprint(ca))
            cas.append(ca)
            added.append(ca)
    loaded.save_manufacturer_cas(_pem_text(cas), signer)
    return added


def remove_manufacturer_cas(
    domain: Domain | str | os.PathLike[str], signer: Signer, pem: bytes
) -> list[x509.Certificate]:
    """Remove the certificates in ``pem`` from the list of ``domain`` (as for
    :func:`add_manufacturer_cas`) and sign again; returns those that were listed.
    ConfigError when none of them was."""
    gone = {_fingerprint(ca) for ca in _parse_pems(pem, "the PEM given")}
    if not gone:
        raise ConfigError("no PEM certificate in what was given")
    loaded = _domain(domain)
    cas = manufacturer_cas(loaded)
    removed = [ca for ca in cas if _fingerprint(ca) in gone]
    if not removed:
        raise ConfigError("none of these certificates is a listed manufacturer CA")
    loaded.save_manufacturer_cas(
        _pem_text([ca for ca in cas if _fingerprint(ca) not in gone]), signer
    )
    return removed
