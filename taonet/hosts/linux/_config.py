"""A Linux host's directory and its ``host.toml``.

A host directory holds::

    host.toml        this configuration (kind, domain and its pinned policy key, options)
    domain_serial    the highest serial of the domain's signed configuration accepted
    keys             root host: its soft keyset, password-protected (mode 0600)
    host_cert.der    root host: the domain's certificate for its key
    keys.sealed      stacked host (and a root host on a TPM): its keyset, sealed by
                     its parent Tao (the TPM host)
    tpm2/            root host on a TPM (``root_tao = "tpm2"``): the TPM 2.0 host's
                     state (quote key blobs, PCR list, tcti, quote-key certificate)
    counters.sealed  the hosted programs' monotonic counters (sealed)
    program_id       the last program id handed out (with program_ids on)
    programs/        private copies of running programs (files and directories)
    admin.sock       the admin socket, while the host runs
    host.log         output of a host started in the background

By default a domain's Linux host lives in ``<domain>/linux_tao_host``.

Besides its ``[host]`` table, ``host.toml`` may hold:

* ``[interpreters]``: the interpreters the host offers its programs, by name, e.g.
  ``python3 = "/usr/bin/python3"`` (see :mod:`taonet.hosts.linux._interpreters`:
  absolute, owned by root or the host's user, writable by nobody else, checked when
  the host opens and at each program start, and named in the programs they run).
  ``taonet host init`` writes the Python that runs taonet. Without the table the
  host offers none and runs ``#!/usr/bin/env`` scripts as earlier versions did.
* ``[program_tree]``: bounds on a program that is a directory (see
  :class:`~taonet.hosts.linux._tree.TreeLimits`): ``max_files`` (10000 files and
  directories), ``max_bytes`` (1 GiB in all), ``max_depth`` (32 levels),
  ``max_name_bytes`` (255 bytes per name).

A host that uses its domain's guard pins the domain's policy key in ``host.toml``
(``policy_key``, written by :meth:`LinuxHost.init`) and checks it, together with the
domain's signed configuration, at start and at each program start
(:meth:`LinuxHostConfig.load_domain`): whoever can write to the domain directory can
neither edit what the policy key signed nor put another domain in its place.

Nor can they put back an earlier configuration, however correctly signed (a retracted
program authorized again, an ACL domain made Liberal again): the host keeps the highest
serial of the signed configuration it has accepted in ``domain_serial`` (written by
:meth:`LinuxHost.init`, raised at each start and program start, never lowered; not in
``host.toml``, which is the operator's) and, while it runs, in memory, and refuses a
domain with a lower serial. The host only knows serials it has seen; the domain's own
record (``policy_keys/config_serial``) covers the rest as long as its ``policy_keys``
directory is intact. To go back to an earlier configuration on purpose, remove
``domain_serial`` and restart the host.
"""

from __future__ import annotations

import math
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from taonet import auth
from taonet._errors import ConfigError
from taonet._files import read_file
from taonet.hosts.linux._tree import TreeLimits

if TYPE_CHECKING:
    from taonet.domain import Domain

__all__ = [
    "ADMIN_SOCKET",
    "CONFIG_FILE",
    "COUNTERS_FILE",
    "DEFAULT_HOST_DIR",
    "DOMAIN_SERIAL_FILE",
    "HOST_KINDS",
    "LOCK_FILE",
    "LOG_FILE",
    "PROGRAMS_DIR",
    "PROGRAM_ID_FILE",
    "ROOT_TAOS",
    "SANDBOXES",
    "SEALED_KEYS_FILE",
    "TPM2_DIR",
    "LinuxHostConfig",
    "default_host_dir",
]

CONFIG_FILE: Final = "host.toml"
SEALED_KEYS_FILE: Final = "keys.sealed"
COUNTERS_FILE: Final = "counters.sealed"
PROGRAM_ID_FILE: Final = "program_id"
#: The highest serial of the domain's signed configuration this host has accepted.
DOMAIN_SERIAL_FILE: Final = "domain_serial"
PROGRAMS_DIR: Final = "programs"
ADMIN_SOCKET: Final = "admin.sock"
LOG_FILE: Final = "host.log"
#: The file a running host holds locked (flock), so two never serve one directory.
LOCK_FILE: Final = "host.lock"
DEFAULT_HOST_DIR: Final = "linux_tao_host"
HOST_KINDS: Final = ("root", "stacked")
#: What a root host's keys rest on: a password-protected soft keyset, or a TPM 2.0.
ROOT_TAOS: Final = ("soft", "tpm2")
#: The TPM 2.0 host's state directory inside a root host on a TPM.
TPM2_DIR: Final = "tpm2"
SANDBOXES: Final = ("none", "bwrap")
GUARDS: Final = ("domain", "Liberal")
_MAX_FILE: Final = 64 * 1024
_ENV_PATTERN: Final = re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_]*\*?)$")
_KEY_HASH: Final = re.compile(r"^[0-9a-f]{64}$")


def default_host_dir(domain: Path) -> Path:
    """Where a domain's Linux host lives unless told otherwise."""
    return domain / DEFAULT_HOST_DIR


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(_: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in choices:
            raise ConfigError(f"{attribute.name} must be one of {', '.join(choices)}: {value!r}")

    return check


def _grace(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 3600):
        raise ConfigError(f"grace_period must be 0 to 3600 seconds, got {value!r}")


def _str_tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _interpreter_table(
    value: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    pairs = tuple(value.items()) if isinstance(value, Mapping) else tuple(value)
    return tuple(sorted((str(name), str(path)) for name, path in pairs))


def _interpreters(
    _: object,
    attribute: attrs.Attribute[tuple[tuple[str, str], ...] | None],
    value: tuple[tuple[str, str], ...] | None,
) -> None:
    from taonet.hosts.linux._interpreters import NAME_PATTERN

    names = set()
    for name, path in value or ():
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"[interpreters]: {name!r} is not an interpreter name")
        if not path.startswith("/"):
            raise ConfigError(f"[interpreters]: {name} must be an absolute path, not {path!r}")
        if name in names:
            raise ConfigError(f"[interpreters] names {name} twice")
        names.add(name)


def _key_hash(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not (isinstance(value, str) and _KEY_HASH.match(value)):
        raise ConfigError(f"policy_key must be 64 lowercase hex digits, got {value!r}")


def _policy_key_of(domain: Domain) -> str:
    key_hash = domain.policy_principal.key_hash
    if not isinstance(key_hash, auth.Bytes):
        raise ConfigError(f"the domain at {domain.path} has no policy key hash")
    return key_hash.value.hex()


class _SeenSerial:
    """The highest domain serial a host configuration has accepted: in memory, and in
    the host directory's ``domain_serial`` when the configuration has a directory."""

    def __init__(self) -> None:
        # Program starts load the domain in worker threads, several at once.
        self._lock = threading.Lock()
        self._key = ""
        self._serial = 0

    def accept(self, domain: Domain, policy_key: str, directory: Path | None) -> None:
        """Refuse ``domain`` if its serial is below the highest seen; else record it."""
        from taonet.domain._signed_config import SIGNED_CONFIG_FILE, SerialRecord, rolled_back

        with self._lock:
            highest = self._serial if self._key == policy_key else 0
            seen = "by this host while it runs"
            record = None if directory is None else directory / DOMAIN_SERIAL_FILE
            if record is not None:
                recorded = SerialRecord.highest(record, policy_key)
                if recorded >= highest:
                    highest, seen = recorded, f"this host's record {record}"
            serial = domain.config_serial
            if serial < highest:
                remedy = (
                    f"if it was put back on purpose, remove {record} and restart the host"
                    if record is not None
                    else "if it was put back on purpose, restart the host"
                )
                raise rolled_back(
                    str(domain.path / SIGNED_CONFIG_FILE), serial, highest, seen, remedy
                )
            if record is not None:
                SerialRecord.raise_to(record, policy_key, serial, mode=0o600)
            self._key, self._serial = policy_key, serial


@attrs.frozen
class LinuxHostConfig:
    """What ``host.toml`` says (see the module docstring), and where it was read from."""

    #: "root" (soft keys, certified by the domain) or "stacked" (keys sealed by a parent).
    kind: str = attrs.field(validator=_one_of(HOST_KINDS))
    #: For a root host: "soft" (its keyset in ``keys``, under a password) or "tpm2" (it
    #: runs stacked on a TPM 2.0 host it opens in-process, from ``tpm2/``: its keyset
    #: sealed by the TPM, its counter table protected by the TPM's NV counters).
    root_tao: str = attrs.field(default="soft", validator=_one_of(ROOT_TAOS))
    #: The domain directory (absolute) whose guard decides what may execute.
    domain: str | None = None
    #: The hex hash of the domain's policy key, ``key([HASH])``: the host trusts that
    #: domain only. :meth:`LinuxHost.init` fills it in from the domain.
    policy_key: str | None = attrs.field(default=None, validator=_key_hash)
    #: "domain" (the domain's guard) or "Liberal" (anything may run; tests and demos).
    guard: str = attrs.field(default="domain", validator=_one_of(GUARDS))
    #: Give each started program a fresh id: Program(id, [hash]).
    program_ids: bool = False
    #: "none" or "bwrap" (bubblewrap: read-only root, private /tmp, own namespaces).
    sandbox: str = attrs.field(default="none", validator=_one_of(SANDBOXES))
    #: With bwrap: keep the host's network (hosted programs talk TCP to each other).
    share_network: bool = True
    #: With bwrap: more paths programs see read-only despite the sandbox's empty /tmp.
    sandbox_paths: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    #: Environment variables a start request may pass on, beyond the defaults
    #: (taonet.hosts.linux._host.DEFAULT_PASS_ENVIRONMENT); a trailing * matches a prefix.
    #: Variables that change what code runs (LD_*, PYTHON*, PATH, ...) never pass.
    pass_environment: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    #: PATH for programs (default: the host's own PATH when it starts them).
    program_path: str | None = None
    #: Seconds programs get after SIGTERM at shutdown before SIGKILL.
    grace_period: float = attrs.field(default=5.0, validator=_grace)
    #: The interpreters offered to programs, (name, absolute path) sorted by name
    #: (``[interpreters]``); None: no table (an earlier host.toml).
    interpreters: tuple[tuple[str, str], ...] | None = attrs.field(
        default=None, converter=_interpreter_table, validator=_interpreters
    )
    #: Bounds on a program that is a directory (``[program_tree]``).
    program_tree: TreeLimits = attrs.field(factory=TreeLimits)
    #: The host directory this configuration was read from (:meth:`load`; not a key of
    #: ``host.toml``): :meth:`load_domain` keeps the highest domain serial there.
    directory: Path | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    #: The highest domain serial accepted through this configuration object.
    _seen: _SeenSerial = attrs.field(factory=_SeenSerial, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for name in self.pass_environment:
            if not isinstance(name, str) or not _ENV_PATTERN.match(name):
                raise ConfigError(f"pass_environment: {name!r} is not a variable name or prefix*")
        for path in self.sandbox_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"sandbox_paths must be absolute paths, got {path!r}")
        if self.root_tao != "soft" and self.kind != "root":
            raise ConfigError(f'root_tao = "{self.root_tao}" is for a root host only')
        if self.guard == "domain" and self.domain is None:
            raise ConfigError(
                "a host needs a domain (whose guard decides what may execute), "
                'or guard = "Liberal" to run anything'
            )

    def pin_domain(self) -> tuple[LinuxHostConfig, Domain | None]:
        """Load the domain (checked against its signed configuration) and pin its key.

        Returns this configuration with ``policy_key`` set, and the domain (None
        without one); the returned configuration refuses, in :meth:`load_domain`, a
        domain whose serial is below this one's (:meth:`record_domain_serial` writes
        it to a host directory). ConfigError if the domain is refused, or is not the
        one an existing ``policy_key`` names.
        """
        from taonet.domain import Domain

        if self.domain is None:
            return self, None
        domain = Domain.load(self.domain)
        found = _policy_key_of(domain)
        if self.policy_key is not None and self.policy_key != found:
            raise _other_domain(self.domain, self.policy_key, found)
        pinned = attrs.evolve(self, policy_key=found)
        pinned._seen.accept(domain, found, None)
        return pinned, domain

    def record_domain_serial(self, directory: Path, domain: Domain) -> None:
        """Record ``domain``'s serial in ``directory`` as the lowest this host accepts.

        For :meth:`LinuxHost.init`, with the domain :meth:`pin_domain` returned.
        ConfigError if the directory already records a higher one for its key.
        """
        if self.policy_key is None:
            raise ConfigError("pin the domain's policy key first (pin_domain)")
        self._seen.accept(domain, self.policy_key, directory)

    def load_domain(self) -> Domain:
        """Load this host's domain for its guard, refusing anything but the pinned one.

        ``Domain.load`` refuses a domain whose files differ from what its policy key
        signed; this also refuses a whole other domain put in its place (another
        policy key), a host configuration that pins no key (made by an earlier
        taonet: the message says which line to add, after checking the domain), and
        a domain whose signed configuration has a lower serial than one accepted
        before (in this host's ``domain_serial``, which it then raises, or by this
        object). A host directory without ``domain_serial`` (made by an earlier
        taonet) records the serial it finds.
        """
        from taonet.domain import Domain

        if self.domain is None:
            raise ConfigError("this host has no domain")
        domain = Domain.load(self.domain)
        found = _policy_key_of(domain)
        if self.policy_key is None:
            raise ConfigError(
                f"{CONFIG_FILE} names the domain {self.domain} but pins no policy key, so "
                "another domain could be put in its place; if that domain is this host's, "
                f'add policy_key = "{found}" to the [host] table of {CONFIG_FILE}'
            )
        if self.policy_key != found:
            raise _other_domain(self.domain, self.policy_key, found)
        self._seen.accept(domain, found, self.directory)
        return domain

    def to_toml(self) -> bytes:
        lines = ["[host]", f'kind = "{self.kind}"']
        if self.root_tao != "soft":
            lines.append(f'root_tao = "{self.root_tao}"')
        if self.domain is not None:
            lines.append(f"domain = {_toml_str(self.domain)}")
        if self.policy_key is not None:
            lines.append(f'policy_key = "{self.policy_key}"')
        if self.program_path is not None:
            lines.append(f"program_path = {_toml_str(self.program_path)}")
        lines += [
            f'guard = "{self.guard}"',
            f"program_ids = {'true' if self.program_ids else 'false'}",
            f'sandbox = "{self.sandbox}"',
            f"share_network = {'true' if self.share_network else 'false'}",
            f"sandbox_paths = [{', '.join(_toml_str(p) for p in self.sandbox_paths)}]",
            f"pass_environment = [{', '.join(_toml_str(n) for n in self.pass_environment)}]",
            f"grace_period = {float(self.grace_period)!r}",
        ]
        if self.interpreters is not None:
            lines += ["", "[interpreters]"]
            lines += [f"{name} = {_toml_str(path)}" for name, path in self.interpreters]
        if self.program_tree != TreeLimits():
            limits = self.program_tree
            lines += [
                "",
                "[program_tree]",
                f"max_files = {limits.max_files}",
                f"max_bytes = {limits.max_bytes}",
                f"max_depth = {limits.max_depth}",
                f"max_name_bytes = {limits.max_name_bytes}",
            ]
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def from_toml(cls, data: bytes, *, source: str = CONFIG_FILE) -> LinuxHostConfig:
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
        table = doc.get("host")
        if not isinstance(table, dict) or not set(doc) <= {"host", *_OTHER_TABLES}:
            raise ConfigError(
                f"{source} must hold one [host] table, and may hold "
                f"{' and '.join(f'[{name}]' for name in _OTHER_TABLES)}"
            )
        extra = {name: _other_table(doc, name, source) for name in _OTHER_TABLES if name in doc}
        types: dict[str, tuple[type, ...]] = {
            "kind": (str,),
            "root_tao": (str,),
            "domain": (str,),
            "policy_key": (str,),
            "guard": (str,),
            "program_ids": (bool,),
            "sandbox": (str,),
            "share_network": (bool,),
            "sandbox_paths": (list,),
            "pass_environment": (list,),
            "program_path": (str,),
            "grace_period": (int, float),
        }
        unknown = set(table) - set(types)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
        for key, value in table.items():
            if not isinstance(value, types[key]) or (
                isinstance(value, bool) and bool not in types[key]
            ):
                raise ConfigError(f"{source}: {key} has the wrong type")
        if "kind" not in table:
            raise ConfigError(f"{source}: kind is missing")
        try:
            return cls(**table, **extra)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, directory: Path) -> LinuxHostConfig:
        path = directory / CONFIG_FILE
        if not path.exists():
            raise ConfigError(f"{directory} is not a Linux host directory (no {CONFIG_FILE})")
        config = cls.from_toml(read_file(path, limit=_MAX_FILE), source=str(path))
        return attrs.evolve(config, directory=Path(directory))


#: Tables of host.toml besides [host], and the config field each fills.
_OTHER_TABLES: Final = ("interpreters", "program_tree")


def _other_table(doc: dict[str, Any], name: str, source: str) -> Any:
    table = doc[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    if name == "interpreters":
        for key, value in table.items():
            if not isinstance(value, str):
                raise ConfigError(f"{source}: [interpreters] {key} must be a path (a string)")
        return tuple(table.items())
    fields = {field.name for field in attrs.fields(TreeLimits)}
    unknown = set(table) - fields
    if unknown:
        raise ConfigError(f"{source}: [program_tree]: unknown key(s) {', '.join(sorted(unknown))}")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: [program_tree] {key} must be an integer")
    return TreeLimits(**table)


def _other_domain(path: str, pinned: str, found: str) -> ConfigError:
    return ConfigError(
        f"refused: the domain at {path} has the policy key key([{found}]), not the key "
        f"key([{pinned}]) this host was set up for ({CONFIG_FILE} policy_key)"
    )


def _toml_str(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in escaped):
        raise ConfigError(f"{text!r} holds control characters")
    return f'"{escaped}"'
