"""Domain directories: the policy key, its certificate, the configuration and the guard.

Layout of a domain directory (all written atomically; the keyset mode 0600)::

    domain.toml              configuration (name, guard kind, certificate lifetimes)
    domain.sig               the policy key's signature over domain.toml, the policy
                             certificate and the guard (see taonet.domain._signed_config)
    policy_keys/keys         the policy key, in a password-protected keyset
    policy_keys/cert.der     the self-signed policy certificate (the domain's trust root)
    policy_keys/config_serial  the highest serial of domain.sig signed or accepted with
                             the policy key (a domain.sig below it is a rollback)
    acls                     the ACL guard's SignedACLSet (guard = "ACL" only)
    manufacturer_cas.pem     the TPM manufacturer CAs the quote service trusts (PEM;
                             optional; its SHA-256 is in domain.sig)

:meth:`Domain.load` needs no password: it reads the public parts, checks the policy
certificate, verifies ``domain.sig`` and the guard's rules with the policy key, and
refuses the domain (ConfigError naming the field) if ``domain.toml``, the certificate,
the rules or the manufacturer CA list differ from what the policy key signed: a
hand-edited ``domain.toml``
(``guard = "Liberal"``, a longer certificate lifetime, another name) or ``acls`` file is
never trusted. Every key of ``domain.toml`` is signed; none is left to the file alone.
An earlier signed configuration put back with the files it signed is refused too when
``policy_keys/config_serial`` records a higher serial (see
:mod:`taonet.domain._signed_config`; a Linux host keeps its own record as well).
Changing policy or certifying hosts needs the policy key, which :meth:`Domain.unlock`
opens with the password; every change re-signs the configuration, and
:meth:`Domain.resign` signs ``domain.toml`` as it stands after an intended edit by hand
(or for a domain made before configurations were signed).

A domain is only as safe as its directory: whoever can write the domain directory can
rename ``policy_keys`` aside and put another in its place (without ``config_serial``,
its keys linked to the old ones), and so put back an earlier signed configuration. So
every opening of a domain (:meth:`Domain.load`, :meth:`Domain.resign`,
:meth:`Domain.create`) first refuses (ConfigError) a domain whose directory or
``policy_keys`` directory is a symbolic link, is writable by its group or by others, or
belongs to anyone but the process's effective user or root; and the files of
``policy_keys`` are read without following symbolic links.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import attrs
import tomli_w

from taonet import auth, certs
from taonet._errors import AuthenticationError, CodecError, ConfigError
from taonet._files import atomic_write, read_file
from taonet.crypto import (
    MAX_KEYSET_BYTES,
    KdfParams,
    Keyset,
    Signer,
    Verifier,
    open_keyset,
    save_keyset,
)
from taonet.domain._guard import GUARD_KINDS, ACLGuard, ConservativeGuard, Guard
from taonet.domain._programs import measure_file, policy_key_subprin, program_subprin
from taonet.domain._signed_config import (
    MANUFACTURER_CAS_FILE,
    MAX_MANUFACTURER_CAS,
    MAX_SIGNED_CONFIG,
    SIGNED_CONFIG_FILE,
    SerialRecord,
    SignedConfig,
    cas_digest,
    cert_digest,
    config_error,
    differences,
    read_nofollow,
    read_signed_config,
    rolled_back,
    write_signed_config,
)

__all__ = ["Domain", "DomainConfig", "DomainTemplate"]

CONFIG_FILE: Final = "domain.toml"
KEYS_FILE: Final = "policy_keys/keys"
CERT_FILE: Final = "policy_keys/cert.der"
ACL_FILE: Final = "acls"
#: The policy key holder's record of the highest configuration serial (mode 0644).
SERIAL_FILE: Final = "policy_keys/config_serial"
_MAX_FILE: Final = 16 * 1024 * 1024
POLICY_KEYS_DIR: Final = "policy_keys"
_WRITERS: Final = {0o010: "its group", 0o001: "others", 0o011: "its group and others"}


def check_domain_directories(root: Path) -> None:
    """Refuse (ConfigError) a domain whose directory or ``policy_keys`` directory is a
    symbolic link, not a directory, writable by group or others, or owned by anyone but
    this process's effective user or root (see the module docstring)."""
    euid = os.geteuid()
    for directory in (root, root / POLICY_KEYS_DIR):
        try:
            info = os.lstat(directory)
        except OSError as exc:
            raise ConfigError(
                f"{directory}: refused: cannot examine it: {exc.strerror or type(exc).__name__}"
            ) from exc
        problem = ""
        if stat.S_ISLNK(info.st_mode):
            problem = "it is a symbolic link (name the real directory)"
        elif not stat.S_ISDIR(info.st_mode):
            problem = "it is not a directory"
        elif info.st_mode & 0o022:
            problem = (
                f"it is writable by {_WRITERS[(info.st_mode >> 1) & 0o011]} "
                f"(mode {stat.S_IMODE(info.st_mode):04o}; make it writable by its owner only: "
                f"chmod go-w {directory})"
            )
        elif info.st_uid not in (euid, 0):
            problem = (
                f"it belongs to uid {info.st_uid}, neither this process's user (uid {euid}) "
                "nor root"
            )
        if problem:
            raise ConfigError(
                f"{directory}: refused: {problem}: whoever can write a domain's directory can "
                "replace its policy_keys and put back an earlier configuration"
            )


def _positive_days(_: Any, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36500:
        raise ConfigError(f"{attribute.name} must be a whole number of days from 1 to 36500")


def _guard_kind(_: Any, attribute: Any, value: str) -> None:
    if value not in GUARD_KINDS:
        raise ConfigError(f"guard must be one of {', '.join(GUARD_KINDS)}, not {value!r}")


def _curve(_: Any, attribute: Any, value: str) -> None:
    if value not in ("P-256", "P-384"):
        raise ConfigError(f"policy key curve must be P-256 or P-384, not {value!r}")


@attrs.frozen
class DomainConfig:
    """The contents of ``domain.toml``; every field is signed by the policy key."""

    name: str
    guard: str = attrs.field(validator=_guard_kind)
    host_validity_days: int = attrs.field(default=365, validator=_positive_days)
    program_validity_days: int = attrs.field(default=30, validator=_positive_days)

    def _doc(self) -> dict[str, dict[str, str | int]]:
        return {
            "domain": {"name": self.name, "guard": self.guard},
            "certificates": {
                "host_validity_days": self.host_validity_days,
                "program_validity_days": self.program_validity_days,
            },
        }

    def to_toml(self) -> bytes:
        return tomli_w.dumps(self._doc()).encode()

    def signed_fields(self) -> dict[str, str | int]:
        """Every field by its TOML path (``"domain.guard"``): what the policy key signs."""
        return {
            f"{section}.{key}": value
            for section, table in self._doc().items()
            for key, value in table.items()
        }

    @classmethod
    def from_toml(cls, data: bytes, *, source: str = CONFIG_FILE) -> DomainConfig:
        """Parse ``domain.toml``; unknown sections or keys are refused, not ignored."""
        doc = _parse_toml(data, source)
        known = {"domain": {"name", "guard"}, "certificates": _CERTIFICATE_KEYS}
        unknown = [f"[{k}]" for k in doc if k not in known]
        domain = _table(doc, "domain", source)
        certificates = _table(doc, "certificates", source)
        for key, table in (("domain", domain), ("certificates", certificates)):
            unknown += [f"{key}.{k}" for k in table if k not in known[key]]
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) or key(s) {', '.join(unknown)}")
        try:
            return cls(
                name=_get(domain, "name", str, source),
                guard=_get(domain, "guard", str, source),
                host_validity_days=_get(certificates, "host_validity_days", int, source, 365),
                program_validity_days=_get(certificates, "program_validity_days", int, source, 30),
            )
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


_CERTIFICATE_KEYS: Final = frozenset({"host_validity_days", "program_validity_days"})


def _str_tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _path_tuple(items: Iterable[str | Path]) -> tuple[Path, ...]:
    return tuple(Path(p) for p in items)


@attrs.frozen
class DomainTemplate:
    """What ``taonet domain init`` builds a domain from (a TOML file; see the default)."""

    name: str = "taonet-domain"
    guard: str = attrs.field(default="ACL", validator=_guard_kind)
    curve: str = attrs.field(default="P-256", validator=_curve)
    common_name: str = "taonet policy key"
    organization: str = "taonet"
    validity_days: int = attrs.field(default=3650, validator=_positive_days)
    host_validity_days: int = attrs.field(default=365, validator=_positive_days)
    program_validity_days: int = attrs.field(default=30, validator=_positive_days)
    rules: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    programs: tuple[Path, ...] = attrs.field(default=(), converter=_path_tuple)

    @classmethod
    def load(cls, path: str | Path) -> DomainTemplate:
        """Read a template file; program paths are relative to its directory."""
        p = Path(path)
        data = read_file(p, limit=_MAX_FILE)
        return cls.from_toml(data, base=p.parent, source=str(p))

    @classmethod
    def from_toml(cls, data: bytes, *, base: Path, source: str) -> DomainTemplate:
        doc = _parse_toml(data, source)
        unknown = set(doc) - {"domain", "policy_key", "certificates", "acl"}
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}")
        d = _table(doc, "domain", source)
        k = _table(doc, "policy_key", source)
        c = _table(doc, "certificates", source)
        a = _table(doc, "acl", source)
        dflt = cls()
        try:
            rules = _get(a, "rules", list, source, [])
            programs = _get(a, "programs", list, source, [])
            if not all(isinstance(r, str) for r in rules + programs):
                raise ConfigError("acl.rules and acl.programs must be lists of strings")
            return cls(
                name=_get(d, "name", str, source, dflt.name),
                guard=_get(d, "guard", str, source, dflt.guard),
                curve=_get(k, "curve", str, source, dflt.curve),
                common_name=_get(k, "common_name", str, source, dflt.common_name),
                organization=_get(k, "organization", str, source, dflt.organization),
                validity_days=_get(k, "validity_days", int, source, dflt.validity_days),
                host_validity_days=_get(
                    c, "host_validity_days", int, source, dflt.host_validity_days
                ),
                program_validity_days=_get(
                    c, "program_validity_days", int, source, dflt.program_validity_days
                ),
                rules=tuple(rules),
                programs=tuple(base / p for p in programs),
            )
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _parse_toml(data: bytes, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None


def _table(doc: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return value


def _get(table: dict[str, Any], key: str, kind: type, source: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"missing {key}")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be a {kind.__name__}")
    return value


class Domain:
    """A domain directory opened for reading (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        config: DomainConfig,
        policy_cert: bytes,
        guard: Guard,
        *,
        now_ns: int | None = None,
    ) -> None:
        self.path: Final = path
        self.config: Final = config
        self.policy_cert: Final = policy_cert
        self.guard = guard
        try:
            self.policy_anchor: Final = certs.PolicyAnchor(
                policy_cert, now_ns=time.time_ns() if now_ns is None else now_ns
            )
        except AuthenticationError as exc:
            raise ConfigError(f"{path / CERT_FILE}: {exc}") from None
        self._policy_key_der = self.policy_anchor.public_key_der
        self.policy_verifier: Final = Verifier.from_der(self._policy_key_der)
        self.policy_principal: Final = auth.key_principal(self._policy_key_der)
        key_hash = self.policy_principal.key_hash
        if not isinstance(key_hash, auth.Bytes):
            raise ConfigError(f"{path / CERT_FILE}: the policy key has no hash")
        self._policy_key_hex = key_hash.value.hex()
        #: The serial of the configuration signature loaded or last written (0: none).
        self.config_serial = 0
        #: The bytes of ``manufacturer_cas.pem`` as read when the domain was opened (None:
        #: no file). After :meth:`load` they are the ones the signed configuration names.
        self.manufacturer_cas_pem: bytes | None = None

    # -- create and open ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        template: DomainTemplate,
        password: bytes,
        *,
        kdf: KdfParams | None = None,
        now_ns: int | None = None,
    ) -> Domain:
        """Create a new domain directory from ``template`` (refuses to overwrite one)."""
        root = Path(path)
        if (root / CONFIG_FILE).exists() or (root / KEYS_FILE).exists():
            raise ConfigError(f"{root} already holds a domain")
        if not password:
            raise ConfigError("the policy key password must not be empty")
        if template.guard != "ACL" and (template.rules or template.programs):
            raise ConfigError(f"the {template.guard} guard takes no rules or programs")
        now = time.time_ns() if now_ns is None else now_ns
        # Resolve everything that can fail before writing anything.
        rules = [_parse_rule(r) for r in template.rules]
        programs = [measure_file(p) for p in template.programs]
        signer = Signer.generate(template.curve)
        cert = certs.make_policy_certificate(
            signer,
            common_name=template.common_name,
            organization=template.organization,
            now_ns=now,
            validity_days=template.validity_days,
        )
        config = DomainConfig(
            name=template.name,
            guard=template.guard,
            host_validity_days=template.host_validity_days,
            program_validity_days=template.program_validity_days,
        )
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
        (root / POLICY_KEYS_DIR).mkdir(exist_ok=True, mode=0o700)
        check_domain_directories(root)
        save_keyset(
            root / KEYS_FILE,
            Keyset(signer=signer, crypter=None, deriving_key=None),
            password,
            kdf=kdf or KdfParams.default(),
        )
        atomic_write(root / CERT_FILE, cert, mode=0o644)
        guard: Guard = GUARD_KINDS[config.guard]()
        domain = cls(root, config, cert, guard, now_ns=now)
        if isinstance(guard, ACLGuard):
            for h in programs:
                guard = guard.with_rule(domain.program_rule(h))
            for rule in rules:
                guard = guard.with_rule(rule)
            domain.save_guard(guard, signer)
        else:
            domain._sign_configuration(signer)
        # domain.toml last: its presence is what makes the directory a domain.
        atomic_write(root / CONFIG_FILE, config.to_toml(), mode=0o644)
        return domain

    @classmethod
    def load(cls, path: str | Path, *, now_ns: int | None = None) -> Domain:
        """Open a domain directory, checking everything against the policy key's signatures.

        ConfigError if the policy certificate is unusable, ``domain.sig`` is missing or
        not the policy key's, its serial is below the one ``policy_keys/config_serial``
        records (an earlier configuration put back), or ``domain.toml``, the certificate
        or the guard's rules or the manufacturer CA list differ from what it signed (the
        message names each field that differs). The manufacturer CA list's bytes are
        read once and kept (:attr:`manufacturer_cas_pem`): what the digest was checked
        against is what its users parse.
        """
        root = Path(path)
        domain = cls._open_unchecked(root, now_ns=now_ns)
        source = root / SIGNED_CONFIG_FILE
        if not source.exists():
            raise ConfigError(
                f"{root}: refused: no {SIGNED_CONFIG_FILE}, so nothing shows that the policy key "
                "chose this configuration (a domain made by an earlier taonet, or the file was "
                f"removed); check {CONFIG_FILE} and sign it: "
                f"taonet domain policy --domain {root} --resign"
            )
        try:
            signed = read_signed_config(
                read_file(source, limit=MAX_SIGNED_CONFIG), domain.policy_verifier
            )
        except (AuthenticationError, CodecError) as exc:
            raise ConfigError(f"{source}: refused: {exc}") from None
        record = root / SERIAL_FILE
        highest = SerialRecord.highest(record, domain._policy_key_hex)
        if signed.serial < highest:
            raise rolled_back(
                str(source),
                signed.serial,
                highest,
                str(record),
                "restore the current files, or check these and sign them again: "
                f"taonet domain policy --domain {root} --resign",
            )
        # The configuration and certificate first: no guard is built from an unsigned kind.
        cas = signed.manufacturer_cas_sha256
        statement = attrs.evolve(domain._statement(guard=signed.guard), manufacturer_cas_sha256=cas)
        problems = differences(signed, statement)
        if problems:
            raise config_error(str(root / CONFIG_FILE), problems)
        guard: Guard = GUARD_KINDS[domain.config.guard]()
        if domain.config.guard == "ACL":
            guard = domain._read_acls()
        statement = attrs.evolve(statement, guard=str(guard.subprincipal()))
        problems = differences(signed, statement)
        if problems:
            raise config_error(str(root / ACL_FILE), problems)
        # Then the manufacturer CA list: the bytes kept are the ones the digest names.
        problems = differences(signed, domain._statement(guard=statement.guard))
        if problems:
            raise config_error(str(root / MANUFACTURER_CAS_FILE), problems)
        domain.guard = guard
        domain.config_serial = signed.serial
        return domain

    @classmethod
    def resign(
        cls, path: str | Path, password: bytes, *, now_ns: int | None = None
    ) -> tuple[Domain, list[str]]:
        """Sign the domain's configuration as its files now stand, with the policy key.

        For an operator who changed ``domain.toml`` by hand on purpose, or whose domain
        was made by a taonet that did not sign configurations. The ``acls`` file must
        still be signed by the policy key (an ACL domain without one gets an empty rule
        set: nothing may execute). The new serial is above both the previous
        signature's and the recorded highest one, so a configuration found rolled back
        can be signed again on purpose. Returns the domain, loaded and checked, and what
        changed from the previous signature, one line per field (a single line saying
        so when there was no valid previous signature, and a line when the previous
        signature was older than the recorded serial: the files had been rolled back).
        """
        root = Path(path)
        domain = cls._open_unchecked(root, now_ns=now_ns)
        signer = domain.unlock(password)
        source = root / SIGNED_CONFIG_FILE
        previous: SignedConfig | None = None
        changes = [f"no earlier signature ({SIGNED_CONFIG_FILE} was missing)"]
        if source.exists():
            try:
                previous = read_signed_config(
                    read_file(source, limit=MAX_SIGNED_CONFIG), domain.policy_verifier
                )
            except (AuthenticationError, CodecError) as exc:
                changes = [f"the earlier signature was refused: {exc}"]
        guard: Guard = GUARD_KINDS[domain.config.guard]()
        if domain.config.guard == "ACL" and (root / ACL_FILE).exists():
            guard = domain._read_acls()
        domain.guard = guard
        if previous is not None:
            domain.config_serial = previous.serial
            changes = differences(previous, domain._statement())
            highest = SerialRecord.highest(root / SERIAL_FILE, domain._policy_key_hex)
            if previous.serial < highest:
                changes.insert(
                    0,
                    f"the earlier signature (serial {previous.serial}) is older than serial "
                    f"{highest} signed before: the domain's files had been rolled back",
                )
        if isinstance(guard, ACLGuard) and not (root / ACL_FILE).exists():
            domain.save_guard(guard, signer)
        else:
            domain._sign_configuration(signer)
        return cls.load(root, now_ns=now_ns), changes

    @classmethod
    def _open_unchecked(cls, root: Path, *, now_ns: int | None) -> Domain:
        """Read domain.toml and the policy certificate; the guard allows nothing yet."""
        if not (root / CONFIG_FILE).exists():
            # The cause says what is missing (the CLI exits "not found" for it).
            path = str(root / CONFIG_FILE)
            missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            raise ConfigError(f"{root} is not a domain directory (no {CONFIG_FILE})") from missing
        check_domain_directories(root)
        config = DomainConfig.from_toml(
            read_file(root / CONFIG_FILE, limit=_MAX_FILE), source=str(root / CONFIG_FILE)
        )
        cert = read_nofollow(root / CERT_FILE, limit=64 * 1024)
        domain = cls(root, config, cert, ConservativeGuard(), now_ns=now_ns)
        cas = root / MANUFACTURER_CAS_FILE
        if os.path.lexists(cas):
            domain.manufacturer_cas_pem = read_file(cas, limit=MAX_MANUFACTURER_CAS)
        return domain

    def _read_acls(self) -> ACLGuard:
        signed = read_file(self.path / ACL_FILE, limit=_MAX_FILE)
        try:
            return ACLGuard.from_signed(signed, self.policy_verifier)
        except AuthenticationError as exc:
            raise ConfigError(f"{self.path / ACL_FILE}: refused: {exc}") from None

    def _statement(self, *, guard: str | None = None) -> SignedConfig:
        """What the policy key signs about this domain as it is in memory."""
        return SignedConfig(
            config=self.config.signed_fields(),
            policy_cert_sha256=cert_digest(self.policy_cert),
            guard=str(self.guard.subprincipal()) if guard is None else guard,
            serial=self.config_serial + 1,
            manufacturer_cas_sha256=cas_digest(self.manufacturer_cas_pem),
        )

    def _sign_configuration(self, signer: Signer) -> None:
        """Sign the in-memory configuration, certificate and guard; write domain.sig.

        The serial is one more than both this domain's and the recorded highest one;
        the record follows domain.sig (never ahead of it, which would refuse it).
        """
        if signer.public_key_der() != self._policy_key_der:
            raise ConfigError("only the policy key may sign this domain's configuration")
        self._check_cas_unchanged()
        record = self.path / SERIAL_FILE
        previous = max(self.config_serial, SerialRecord.highest(record, self._policy_key_hex))
        statement = attrs.evolve(self._statement(), serial=previous + 1)
        atomic_write(
            self.path / SIGNED_CONFIG_FILE, write_signed_config(statement, signer), mode=0o644
        )
        self.config_serial = statement.serial
        self._record_serial()

    def _check_cas_unchanged(self) -> None:
        """ConfigError if ``manufacturer_cas.pem`` is not what this object read: never
        sign a list it did not read (another writer's, or a planted one), nor drop one
        it did not know of. Checked before anything is written."""
        cas = self.path / MANUFACTURER_CAS_FILE
        on_disk = read_file(cas, limit=MAX_MANUFACTURER_CAS) if os.path.lexists(cas) else None
        if on_disk != self.manufacturer_cas_pem:
            raise ConfigError(
                f"{cas} changed since this domain was loaded; load the domain again "
                "(or check the file and sign it: taonet domain policy --resign)"
            )

    def _record_serial(self) -> None:
        """Raise ``policy_keys/config_serial`` to this domain's serial (never lower it)."""
        SerialRecord.raise_to(
            self.path / SERIAL_FILE, self._policy_key_hex, self.config_serial, mode=0o644
        )

    def unlock(self, password: bytes) -> Signer:
        """Open the policy key; ConfigError on a wrong password or a mismatched key.

        For a loaded domain, also records its serial in ``policy_keys/config_serial``
        if that holds less (a domain made before serials were recorded gets its record
        when the domain service starts or a policy command runs).
        """
        keys = self.path / KEYS_FILE
        try:
            blob = read_nofollow(keys, limit=MAX_KEYSET_BYTES)
        except ConfigError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise ConfigError(f"no keyset at {keys}") from None
            raise
        try:
            keyset = open_keyset(blob, password)
        except ConfigError as exc:
            raise ConfigError(f"{keys}: {exc}") from None
        if keyset.signer.public_key_der() != self._policy_key_der:
            raise ConfigError("the policy keyset does not match the policy certificate")
        if self.config_serial:
            self._record_serial()
        return keyset.signer

    # -- names ------------------------------------------------------------------

    @property
    def policy_subprin(self) -> auth.SubPrin:
        """``PolicyKey([hash])``, the extension of programs bound to this domain."""
        return policy_key_subprin(self.policy_principal)

    def program_rule(self, program_hash: bytes) -> auth.Form:
        """``Authorized(ext.Program([hash]), "Execute")``."""
        return auth.Pred(
            "Authorized",
            (auth.PrinTail(program_subprin(program_hash)), auth.Str("Execute")),
        )

    def program_name(
        self, program_hash: bytes, *, host: auth.Prin | None = None
    ) -> auth.Prin | auth.PrinTail:
        """The name a program gets on ``host`` once bound to this domain.

        Without a host, the tail ``ext.Program([h]).PolicyKey([k])`` that follows the
        host's name.
        """
        ext = auth.SubPrin(program_subprin(program_hash).exts + self.policy_subprin.exts)
        if host is None:
            return auth.PrinTail(ext)
        return host.extend(ext)

    # -- changes that need the policy key ------------------------------------------

    def save_guard(self, guard: Guard, signer: Signer) -> None:
        """Sign and store ``guard`` (ACL guards only) and make it this domain's guard.

        The configuration is signed again with the new rules' digest, so that only
        this rule set is accepted with it.
        """
        if not isinstance(guard, ACLGuard):
            raise ConfigError(f"the {guard.kind} guard has no rules to store")
        if self.config.guard != "ACL":
            raise ConfigError(f"this domain uses the {self.config.guard} guard, not ACL")
        if signer.public_key_der() != self._policy_key_der:
            raise ConfigError("only the policy key may sign this domain's guard")
        self._check_cas_unchanged()
        atomic_write(self.path / ACL_FILE, guard.to_signed(signer), mode=0o644)
        self.guard = guard
        self._sign_configuration(signer)

    def save_manufacturer_cas(self, pem: bytes | None, signer: Signer) -> None:
        """Store ``pem`` as the domain's manufacturer CA list (None: remove the file) and
        sign the configuration again with its digest (a new serial), so that no other
        list, an older signed one included, is accepted with it."""
        if signer.public_key_der() != self._policy_key_der:
            raise ConfigError("only the policy key may change this domain's manufacturer CAs")
        self._check_cas_unchanged()
        path = self.path / MANUFACTURER_CAS_FILE
        if pem is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, pem, mode=0o644)
        self.manufacturer_cas_pem = pem
        self._sign_configuration(signer)

    def certify_host(
        self,
        signer: Signer,
        host_key_der: bytes,
        *,
        signer_type: str = "key",
        now_ns: int | None = None,
    ) -> bytes:
        """Issue a host certificate (root endorsement) for a host's attestation key."""
        if signer.public_key_der() != self._policy_key_der:
            raise ConfigError("only the policy key may certify hosts of this domain")
        return certs.issue_host_certificate(
            signer,
            self.policy_cert,
            host_key_der,
            now_ns=time.time_ns() if now_ns is None else now_ns,
            validity_days=self.config.host_validity_days,
            signer_type=signer_type,
        )


def _parse_rule(text: str) -> auth.Form:
    try:
        return auth.parse_form(text)
    except CodecError as exc:
        raise ConfigError(f"guard rule {text!r} is not a formula: {exc}") from None
