"""``taonet host recertify``: a new host certificate, in the current profile, for the same key.

A root host made before the X.509 profile changed holds a host certificate of
taonet's first profile (its principal in private extensions under a ``2.25.<UUID>``
arc that Go's crypto/x509 cannot parse); domains now refuse attestations it endorses,
and the host refuses to start with it. Making the host anew would lose its sealed
state and its programs' names (both hang on its key), so this command has the policy
key sign a new certificate for the very key and name the host already has:

1. ``host.toml`` is read and must describe a root host of a domain whose policy key it
   pins; the domain (``--domain``, else the one ``host.toml`` names, which must then
   be the same directory) must have exactly that policy key (as at a start).
2. The host must be stopped: nothing answers on its admin socket and nobody holds its
   ``host.lock``, which this command then holds until it is done, so no host starts
   from the directory meanwhile.
3. The host's password opens its keyset (``keys``): that proves which key the host
   has. Its present certificate must certify that very key, name that key's
   principal (in the first profile's extension or the current URI) and be signed by
   this domain's policy key: a certificate of another host, or of another domain, or
   a ``host.toml`` edited to point elsewhere, is refused.
4. The policy key's password unlocks the policy key, which issues a certificate in the
   current profile with a fresh validity (the domain's ``host_validity_days``); it is
   checked as every verifier will check it and written atomically in place of the
   old one.

Nothing is written before every check has passed: a wrong password or any refusal
leaves the host directory as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import AuthenticationError, CodecError, ConfigError, HostError, auth, certs
from taonet.domain import Domain
from taonet.hosts import SoftHost
from taonet.hosts.linux import CONFIG_FILE, LOCK_FILE, LinuxHostConfig

__all__ = ["CERT_FILE", "recertify_host"]

#: Where a root host keeps its certificate (see :class:`taonet.hosts.SoftHost`).
CERT_FILE: Final = "host_cert.der"
#: The first profile's principal extension (taonet's own private arc, retired
#: because Go's crypto/x509 refuses arcs of 2**31 or more): the binary encoding of
#: the certified key's principal.
_FIRST_PROFILE_PRINCIPAL: Final = x509.ObjectIdentifier(
    "2.25.184001271471987179187705270170102784850.1"
)


def recertify_host(
    directory: Path,
    domain_dir: Path | None,
    *,
    host_password: Callable[[], bytes],
    policy_password: Callable[[], bytes],
    refuse_if_running: Callable[[Path], None],
) -> tuple[auth.Prin, x509.Certificate]:
    """Replace the host certificate in ``directory`` (see the module docstring).

    The passwords are asked for (called) only once the checks that need none have
    passed. Returns the host's (unchanged) name and its new certificate.
    """
    config = LinuxHostConfig.load(directory)
    if config.kind != "root":
        raise ConfigError(
            f"{directory} is a stacked host: its parent vouches for its key, the policy key "
            "certifies root hosts only"
        )
    domain = _domain_of(config, domain_dir)
    refuse_if_running(directory)
    with _host_lock(directory) as held:
        host = SoftHost.load(directory, host_password())
        old = host.root_endorsement
        if old is None:
            raise ConfigError(
                f"{directory} holds no host certificate ({CERT_FILE}) to renew: it was made "
                "with --no-certify"
            )
        _check_old_certificate(old, host, domain, directory / CERT_FILE)
        signer = domain.unlock(policy_password())
        # No host.lock yet (no host ever ran here): take it now that we write.
        late = contextlib.nullcontext(True) if held else _host_lock(directory, create=True)
        with late:
            # Refuses a domain rolled back below the serial this host accepted (and
            # records the serial, as a start does).
            config.load_domain()
            new = domain.certify_host(signer, host.public_key_der())
            cert = domain.policy_anchor.verify_host_certificate(
                new, host_key_der=host.public_key_der(), now_ns=time.time_ns()
            )
            host.set_root_endorsement(new)  # atomic, mode 0644
    return host.name, cert


def _domain_of(config: LinuxHostConfig, domain_dir: Path | None) -> Domain:
    """The host's domain, refusing any but the one ``host.toml`` names and pins."""
    if config.domain is None:
        raise ConfigError(f"{CONFIG_FILE} names no domain: no policy key certified this host")
    if domain_dir is not None and not _same_directory(Path(config.domain), domain_dir):
        raise ConfigError(
            f"refused: {CONFIG_FILE} names the domain {config.domain}, not {domain_dir}"
        )
    pinned, domain = config.pin_domain()  # refuses a domain with another policy key
    if domain is None:  # pragma: no cover - config.domain is set
        raise ConfigError(f"{CONFIG_FILE} names no domain")
    if config.policy_key is None:
        raise ConfigError(
            f"{CONFIG_FILE} names the domain {config.domain} but pins no policy key, so "
            "another domain could be put in its place; if that domain is this host's, "
            f'add policy_key = "{pinned.policy_key}" to the [host] table of {CONFIG_FILE}'
        )
    return domain


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError as exc:
        raise ConfigError(f"cannot read the domain directory: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _host_lock(directory: Path, *, create: bool = False) -> Iterator[bool]:
    """Hold the directory's ``host.lock`` as a running host does; HostError if one holds it.

    Yields False, holding nothing, if there is no ``host.lock`` and ``create`` is
    False (no host ever ran here, and nothing is to be written yet).
    """
    path = directory / LOCK_FILE
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        yield False
        return
    except OSError as exc:
        raise HostError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HostError(
                f"a Linux host is running for {directory} (it holds {path}): stop it first "
                "with 'taonet host stop', then recertify"
            ) from None
        except OSError as exc:
            raise HostError(f"cannot lock {path}: {exc.strerror or exc}") from None
        yield True
    finally:
        os.close(fd)


def _check_old_certificate(der: bytes, host: SoftHost, domain: Domain, path: Path) -> None:
    """ConfigError unless ``der`` is this domain's certificate for this host's key and name.

    Either profile; its validity window does not matter (renewing is the point).
    """
    what = f"the present host certificate {path}"
    try:
        cert = certs.load_certificate(der, what=what)
        issuer_ok = cert.issuer == domain.policy_anchor.cert.subject
        signed = _signed_by(cert, domain.policy_anchor.public_key)
        same_key = certs.public_key_der(cert) == host.public_key_der()
        principal = _named_principal(cert) if same_key else None
    except (CodecError, AuthenticationError, ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"refused: {what} cannot be read: {exc}") from None
    if not same_key:
        raise ConfigError(f"refused: {what} certifies another key than this host's keys")
    if not (issuer_ok and signed):
        raise ConfigError(
            f"refused: {what} was not issued by the policy key of the domain at {domain.path}"
        )
    if principal != host.key_principal:
        raise ConfigError(f"refused: {what} names another principal than {host.key_principal}")


def _signed_by(cert: x509.Certificate, key: ec.EllipticCurvePublicKey) -> bool:
    digest = cert.signature_hash_algorithm
    if digest is None:
        return False
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return True


def _named_principal(cert: x509.Certificate) -> auth.Prin | None:
    """The principal a host certificate names: the first profile's extension, else its URI."""
    try:
        ext = cert.extensions.get_extension_for_oid(_FIRST_PROFILE_PRINCIPAL)
    except x509.ExtensionNotFound:
        return certs.certificate_principal(cert, "host")
    if not isinstance(ext.value, x509.UnrecognizedExtension):  # pragma: no cover
        return None
    return auth.decode_prin(ext.value.value)
