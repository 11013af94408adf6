"""What a domain has revoked, kept outside its audit log: ``policy_keys/crl_state``.

Every CRL the domain signs (the domain service's, ``taonet domain revoke|crl``'s)
is numbered and recorded here first:

* its cRLNumber is ``max(now in ns, the last number + 1)``, so numbers keep
  growing when the signer's clock steps back (a CRL numbered below one a server
  holds would only add to what it revokes, see :class:`taonet.channel.CRLSource`);
* the serials it lists are added to the set recorded (never removed), and every
  CRL lists that whole set: a domain service whose audit log was restored from a
  backup, recreated after corruption or failed over to a lagging replica still
  lists every serial the domain ever revoked;
* :func:`audit_behind` says which recorded serials (or serials of the signed
  ``crl.der``) the audit log does not record as revoked; the domain service
  refuses to start while there are any, unless the operator accepted them
  (``taonet domain crl --accept-audit-behind``, recorded here as ``accepted``).

The file is JSON (``{"crl_number": N, "revoked": [...], "accepted": [...]}``),
written atomically under an exclusive lock (``crl_state.lock``) so that the
service and the CLI do not lose each other's serials. It grows with every
revocation the domain makes (about 45 bytes a serial; at most
:data:`MAX_STATE_BYTES`). Restoring ``policy_keys`` itself from a backup loses
what was added since, as restoring any record does.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

import attrs

from taonet import certs
from taonet._errors import AuthenticationError, ConfigError
from taonet._files import atomic_write, read_file
from taonet.certs._crl import read_signed_crl
from taonet.crypto import Signer

__all__ = [
    "CRL_FILE",
    "CRL_STATE_FILE",
    "RevocationRecord",
    "audit_behind",
    "sign_domain_crl",
]

#: The CRL ``taonet domain revoke|crl`` write into the domain directory.
CRL_FILE: Final = "crl.der"
#: The record of the domain's revocations and its highest cRLNumber.
CRL_STATE_FILE: Final = "policy_keys/crl_state"
_LOCK_FILE: Final = "policy_keys/crl_state.lock"
#: Largest record read (about 350,000 serials).
MAX_STATE_BYTES: Final = 16 * 1024 * 1024
_NUMBER_LIMIT: Final = 1 << 159


def _serials(values: Iterable[int]) -> frozenset[int]:
    return frozenset(values)


@attrs.frozen(kw_only=True)
class RevocationRecord:
    """The content of ``policy_keys/crl_state`` (see the module docstring)."""

    number: int = 0
    revoked: frozenset[int] = attrs.field(default=frozenset(), converter=_serials)
    accepted: frozenset[int] = attrs.field(default=frozenset(), converter=_serials)

    @classmethod
    def load(cls, domain_dir: str | os.PathLike[str]) -> RevocationRecord:
        """The record of the domain at ``domain_dir`` (empty if there is none yet)."""
        path = Path(domain_dir) / CRL_STATE_FILE
        try:
            data = read_file(path, limit=MAX_STATE_BYTES)
        except ConfigError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return cls()
            raise
        try:
            raw = json.loads(data)
            number = raw["crl_number"]
            revoked = raw["revoked"]
            accepted = raw.get("accepted", [])
            if not (
                isinstance(number, int)
                and 0 <= number < _NUMBER_LIMIT
                and all(isinstance(s, int) and 0 < s < _NUMBER_LIMIT for s in revoked)
                and all(isinstance(s, int) and 0 < s < _NUMBER_LIMIT for s in accepted)
            ):
                raise ValueError("a number out of range")
            return cls(number=number, revoked=revoked, accepted=accepted)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a revocation record: {exc}") from exc

    def next_number(self, now_ns: int) -> int:
        """The cRLNumber for the next CRL: the time, or one more than the last if larger."""
        number = max(now_ns, self.number + 1)
        if number >= _NUMBER_LIMIT:
            raise ConfigError(f"the domain's CRL numbers are used up (last {self.number})")
        return number

    def _save(self, domain_dir: Path) -> None:
        data = {
            "crl_number": self.number,
            "revoked": sorted(self.revoked),
            "accepted": sorted(self.accepted),
        }
        atomic_write(domain_dir / CRL_STATE_FILE, json.dumps(data).encode(), mode=0o644)


@contextlib.contextmanager
def _locked(domain_dir: Path) -> Iterator[None]:
    """Hold the record's lock (blocking) while it is read, changed and written."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS: one writer assumed
        yield
        return
    try:
        fd = os.open(domain_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot lock {domain_dir / CRL_STATE_FILE}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sign_domain_crl(
    domain_dir: str | os.PathLike[str],
    signer: Signer,
    anchor: certs.PolicyAnchor,
    revoked: Mapping[int, int],
    *,
    now_ns: int,
    next_update_days: int = 1,
    accept: Iterable[int] = (),
) -> tuple[bytes, RevocationRecord]:
    """Sign the domain's CRL: ``revoked`` (serial to the time it was revoked) and every
    serial recorded before, numbered past every earlier CRL; record it first.

    Serials in ``accept`` are recorded as accepted missing from the audit log. Returns
    the CRL (DER) and the record written. ConfigError if the record cannot be read or
    written (then nothing was signed).
    """
    root = Path(domain_dir)
    with _locked(root):
        record = RevocationRecord.load(root)
        number = record.next_number(now_ns)
        dated = dict(revoked)
        for serial in record.revoked:
            dated.setdefault(serial, now_ns)
        der = certs.make_crl(
            signer,
            anchor,
            dated,
            now_ns=now_ns,
            next_update_days=next_update_days,
            crl_number=number,
        )
        record = RevocationRecord(
            number=number,
            revoked=record.revoked | dated.keys(),
            accepted=record.accepted | frozenset(accept),
        )
        record._save(root)
    return der, record


def audit_behind(
    domain_dir: str | os.PathLike[str],
    anchor: certs.PolicyAnchor,
    audit_revoked: frozenset[int],
) -> frozenset[int]:
    """Serials the domain revoked (its record, its signed ``crl.der``) that the audit
    log does not record as revoked and the operator has not accepted as missing.

    ConfigError if the record or ``crl.der`` cannot be read or does not verify.
    """
    root = Path(domain_dir)
    record = RevocationRecord.load(root)
    known = set(record.revoked)
    crl_file = root / CRL_FILE
    try:
        der = read_file(crl_file, limit=certs.MAX_CRL_BYTES)
    except ConfigError as exc:
        if not isinstance(exc.__cause__, FileNotFoundError):
            raise
    else:
        try:
            known |= read_signed_crl(anchor, der).serials
        except AuthenticationError as exc:
            raise ConfigError(f"{crl_file} is not a CRL of this domain: {exc}") from exc
    return frozenset(known - audit_revoked - record.accepted)
