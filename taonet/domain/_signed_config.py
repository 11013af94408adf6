"""The policy key's signature over a domain's configuration (``domain.sig``).

Everything that decides whom a domain trusts is signed by its policy key, so that
nobody who can merely write to the domain directory can change it:

* every key of ``domain.toml`` (the domain name written into certificates, the guard
  kind, the certificate lifetimes): :class:`~taonet.domain.DomainConfig` has no field
  that is not signed;
* the SHA-256 of the policy certificate ``policy_keys/cert.der``;
* the guard's sub-principal: ``TrivialGuard("Liberal")``, ``TrivialGuard("Conservative")``
  or ``ACLGuard([sha256 of the rule set])``, which binds the ``acls`` file (itself signed)
  to this configuration, so an older signed rule set cannot be put back on its own;
* the SHA-256 of the TPM manufacturer CA list ``manufacturer_cas.pem`` (the CAs the
  domain's quote service trusts for EK certificates), when the domain lists one: a
  statement without the field says no CA is listed (so a domain signed before the
  field existed keeps loading as long as it has no such file);
* a serial number, higher at each signature than any before it.

Every signature is correct forever, so the serial is what tells an old configuration
from the current one: whoever can write the domain directory can put back an earlier
``domain.sig`` together with the ``domain.toml`` and ``acls`` it signed (a retracted
program authorized again, an ACL domain made Liberal again). Those who consume the
domain remember the highest serial they have seen in a serial record (:class:`SerialRecord`,
a small file they own) and refuse a lower one (:func:`rolled_back`):

* the domain keeps one in ``policy_keys/config_serial``, next to the policy keyset
  (written at each signature and when the policy key is unlocked);
* a Linux host keeps one in its own host directory (``domain_serial``) and in memory
  while it runs (see :mod:`taonet.hosts.linux._config`).

The signed statement is canonical JSON (sorted keys, no spaces, ASCII); the signature
is the policy key's over it under the context :data:`DOMAIN_CONFIG_CONTEXT`.
``domain.sig`` is a small TOML file holding both as strings, so ``cat domain.sig``
shows what was signed.

:func:`read_signed_config` verifies the signature and parses the statement;
:func:`differences` compares it with what the files say now, one line per field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Final

import attrs
import tomli_w

from taonet._errors import AuthenticationError, CodecError, ConfigError
from taonet._files import atomic_write, file_kind
from taonet.crypto import Signer, Verifier

__all__ = [
    "DOMAIN_CONFIG_CONTEXT",
    "MANUFACTURER_CAS_FILE",
    "MAX_MANUFACTURER_CAS",
    "SIGNED_CONFIG_FILE",
    "SerialRecord",
    "SignedConfig",
    "differences",
    "read_nofollow",
    "read_signed_config",
    "rolled_back",
    "write_signed_config",
]

#: The file, next to ``domain.toml``, that holds the signed configuration.
SIGNED_CONFIG_FILE: Final = "domain.sig"
#: The signing context of a domain configuration (taonet's own; the original had none).
DOMAIN_CONFIG_CONTEXT: Final = "taonet Domain Configuration Signing Context V1"
#: The ``format`` field of every statement this version writes and accepts.
FORMAT: Final = "taonet domain configuration v1"
#: The TPM manufacturer CA list (PEM) in the domain directory, bound by its digest.
MANUFACTURER_CAS_FILE: Final = "manufacturer_cas.pem"
#: Largest manufacturer CA list read (a CA certificate is 1-2 kB in PEM).
MAX_MANUFACTURER_CAS: Final = 1024 * 1024
#: Largest ``domain.sig`` read (a statement is a few hundred bytes).
MAX_SIGNED_CONFIG: Final = 64 * 1024
_MAX_SERIAL: Final = 2**53
#: Largest serial record read (one is about 250 bytes).
MAX_SERIAL_RECORD: Final = 4096
_KEY_HASH: Final = re.compile(r"^[0-9a-f]{64}$")

_HEADER: Final = (
    b"# The policy key's signature over domain.toml, the policy certificate and the\n"
    b"# guard's rules. Written by `taonet domain init|policy`. After an intended edit of\n"
    b"# domain.toml, check it and sign it again: `taonet domain policy --resign`.\n"
)
_KEYS: Final = frozenset({"format", "serial", "config", "policy_cert_sha256", "guard"})
#: The optional field: the manufacturer CA list's SHA-256 (absent: no CA listed).
_CAS_KEY: Final = "manufacturer_cas_sha256"


@attrs.frozen
class SignedConfig:
    """What the policy key signed about a domain (see the module docstring)."""

    #: The fields of ``domain.toml`` by their TOML path (``"domain.guard"``, ...).
    config: dict[str, str | int] = attrs.field(hash=False)
    #: Hex SHA-256 of ``policy_keys/cert.der``.
    policy_cert_sha256: str
    #: The guard's sub-principal as text, e.g. ``.ACLGuard([...])``.
    guard: str
    serial: int
    #: Hex SHA-256 of ``manufacturer_cas.pem``; None: the domain lists no manufacturer CA.
    manufacturer_cas_sha256: str | None = None

    def to_bytes(self) -> bytes:
        """The canonical statement: what the signature covers."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "serial": self.serial,
            "config": self.config,
            "policy_cert_sha256": self.policy_cert_sha256,
            "guard": self.guard,
        }
        if self.manufacturer_cas_sha256 is not None:
            doc[_CAS_KEY] = self.manufacturer_cas_sha256
        return _canonical(doc)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedConfig:
        """Parse a statement; CodecError unless it is one this version writes."""
        try:
            doc = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CodecError(f"the signed configuration is not JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - {_CAS_KEY} != _KEYS:
            raise CodecError("the signed configuration does not hold the expected fields")
        cas = doc.get(_CAS_KEY)
        if cas is not None and not (isinstance(cas, str) and _KEY_HASH.match(cas)):
            raise CodecError(f"the signed configuration's {_CAS_KEY} is not a hex SHA-256")
        if doc["format"] != FORMAT:
            raise CodecError(f"the signed configuration is not in the format {FORMAT!r}")
        config = doc["config"]
        if not isinstance(config, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
            for k, v in config.items()
        ):
            raise CodecError("the signed configuration's config is not a table of values")
        serial = doc["serial"]
        if not isinstance(serial, int) or isinstance(serial, bool) or not 0 < serial < _MAX_SERIAL:
            raise CodecError("the signed configuration's serial is not a positive number")
        if not (isinstance(doc["policy_cert_sha256"], str) and isinstance(doc["guard"], str)):
            raise CodecError("the signed configuration's digests are not text")
        statement = cls(
            config=config,
            policy_cert_sha256=doc["policy_cert_sha256"],
            guard=doc["guard"],
            serial=serial,
            manufacturer_cas_sha256=cas,
        )
        if statement.to_bytes() != data:
            raise CodecError("the signed configuration is not in canonical form")
        return statement


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def cert_digest(cert_der: bytes) -> str:
    """Hex SHA-256 of a policy certificate, as a statement records it."""
    return hashlib.sha256(cert_der).hexdigest()


def write_signed_config(statement: SignedConfig, signer: Signer) -> bytes:
    """The contents of ``domain.sig``: ``statement`` signed by ``signer``."""
    data = statement.to_bytes()
    signature = signer.sign(data, DOMAIN_CONFIG_CONTEXT)
    body = tomli_w.dumps({"statement": data.decode("ascii"), "signature": signature.hex()})
    return _HEADER + body.encode()


def read_signed_config(data: bytes, verifier: Verifier) -> SignedConfig:
    """Verify ``domain.sig`` with the policy key and parse what it signed.

    Raises AuthenticationError if the signature is not the policy key's over the
    statement, and CodecError if the file or the statement is malformed.
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CodecError(f"not valid TOML: {exc}") from None
    statement, signature = doc.get("statement"), doc.get("signature")
    if set(doc) != {"statement", "signature"} or not (
        isinstance(statement, str) and isinstance(signature, str)
    ):
        raise CodecError("expected exactly a statement and a signature")
    try:
        signed = statement.encode("ascii")
        sig = bytes.fromhex(signature)
    except (UnicodeEncodeError, ValueError):
        raise CodecError("the statement is not ASCII or the signature not hex") from None
    try:
        verifier.verify(signed, DOMAIN_CONFIG_CONTEXT, sig)
    except AuthenticationError as exc:
        raise AuthenticationError(
            f"the configuration is not signed by this domain's policy key: {exc}"
        ) from None
    return SignedConfig.from_bytes(signed)


def differences(signed: SignedConfig, now: SignedConfig) -> list[str]:
    """What differs between a signed statement and the files now, one line per field.

    Each line names the field, the value in the files and the signed value. The
    serial is not compared.
    """
    out = []
    for key in sorted(set(signed.config) | set(now.config)):
        was, is_ = signed.config.get(key), now.config.get(key)
        if was != is_:
            out.append(f"{key} is {_show(is_)} but the policy key signed {_show(was)}")
    if signed.policy_cert_sha256 != now.policy_cert_sha256:
        out.append(
            f"the policy certificate has SHA-256 {now.policy_cert_sha256} but the policy key "
            f"signed {signed.policy_cert_sha256}"
        )
    if signed.guard != now.guard:
        out.append(f"the guard is {now.guard} but the policy key signed {signed.guard}")
    if signed.manufacturer_cas_sha256 != now.manufacturer_cas_sha256:
        out.append(
            f"the manufacturer CA list {MANUFACTURER_CAS_FILE} is "
            f"{_show_cas(now.manufacturer_cas_sha256)} but the policy key signed "
            f"{_show_cas(signed.manufacturer_cas_sha256)}"
        )
    return out


def _show_cas(digest: str | None) -> str:
    return "absent (no CA listed)" if digest is None else f"SHA-256 {digest}"


def cas_digest(data: bytes | None) -> str | None:
    """Hex SHA-256 of a manufacturer CA list as a statement records it (None: no list)."""
    return None if data is None else hashlib.sha256(data).hexdigest()


@attrs.frozen
class SerialRecord:
    """The highest serial of a domain's signed configuration seen by its holder.

    A small TOML file (``policy_key`` and ``serial``) in a directory that whoever can
    write the domain directory cannot write (the policy key's, a host's). It names the
    policy key it is about: a record for another key says nothing about this one.
    """

    #: Hex hash of the policy key, as in ``key([...])``.
    policy_key: str
    serial: int

    def to_bytes(self) -> bytes:
        return _RECORD_HEADER + tomli_w.dumps(
            {"policy_key": self.policy_key, "serial": self.serial}
        ).encode("ascii")

    @classmethod
    def read(cls, path: Path) -> SerialRecord | None:
        """The record at ``path``; None if there is none; ConfigError if it is unreadable
        or malformed (never taken for none: that would let a damaged file reset it)."""
        try:
            data = read_nofollow(path, limit=MAX_SERIAL_RECORD)
        except ConfigError:
            if not os.path.lexists(path):
                return None
            raise
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            doc = {}
        key, serial = doc.get("policy_key"), doc.get("serial")
        if not (
            set(doc) == {"policy_key", "serial"}
            and isinstance(key, str)
            and _KEY_HASH.match(key)
            and isinstance(serial, int)
            and not isinstance(serial, bool)
            and 0 <= serial < _MAX_SERIAL
        ):
            raise ConfigError(
                f"{path} is not a serial record (policy_key and serial); if it was damaged, "
                "remove it: the current serial is then recorded again"
            )
        return cls(policy_key=key, serial=serial)

    @classmethod
    def highest(cls, path: Path, policy_key: str) -> int:
        """The serial recorded at ``path`` for ``policy_key`` (0 if none)."""
        record = cls.read(path)
        return record.serial if record is not None and record.policy_key == policy_key else 0

    @classmethod
    def raise_to(cls, path: Path, policy_key: str, serial: int, *, mode: int) -> None:
        """Record ``serial`` at ``path`` (atomically) unless it already holds as much."""
        if cls.highest(path, policy_key) < serial:
            atomic_write(path, cls(policy_key, serial).to_bytes(), mode=mode)


_RECORD_HEADER: Final = (
    b"# The highest serial of the domain's signed configuration (domain.sig) seen here:\n"
    b"# a domain.sig with a lower serial is refused as rolled back. Written by taonet.\n"
)


def rolled_back(source: str, serial: int, highest: int, seen: str, remedy: str) -> ConfigError:
    """The refusal of a configuration older than one seen before (``seen``: where)."""
    return ConfigError(
        f"{source}: refused: domain configuration rolled back: serial {serial} is older than "
        f"{highest} seen before ({seen}): the domain's files were put back to an earlier "
        f"signed state; {remedy}"
    )


def read_nofollow(path: Path, *, limit: int) -> bytes:
    """Read the regular file at ``path`` (at most ``limit`` bytes) without following a
    symbolic link there: a link planted in place of a file is refused (ConfigError),
    never read through. ConfigError chained from FileNotFoundError if there is none."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ConfigError(f"no file at {path}") from exc
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(
                f"{path}: refused: it is a symbolic link (a file of the policy key is read "
                "only from the policy_keys directory itself, never through a link)"
            ) from exc
        raise ConfigError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"cannot read {path}: it is {file_kind(info.st_mode)}, not a regular file"
            )
        if info.st_size > limit:
            raise ConfigError(f"{path} is {info.st_size} bytes, over the {limit}-byte limit")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(f"{path} is over the {limit}-byte limit")
    return b"".join(chunks)


def _show(value: str | int | None) -> str:
    return "absent" if value is None else repr(value)


def config_error(source: str, problems: list[str]) -> ConfigError:
    """The refusal of a domain whose files differ from what the policy key signed."""
    return ConfigError(
        f"{source}: refused: {'; '.join(problems)} (if this change is intended, check it and "
        "sign it with the policy key: taonet domain policy --resign)"
    )
