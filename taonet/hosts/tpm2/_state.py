"""A TPM host's state directory: what it needs to find its keys again.

The directory (mode 0700; files 0600, written atomically, read bounded) holds:

``tpm2host.json``
    ``{"format": "taonet tpm2 host v1", "tcti": ..., "pcrs": [...], "alg": "ecc"|"rsa"}``.
``quote_key.priv`` / ``quote_key.pub``
    The quote key's TPM2B_PRIVATE (wrapped by the storage primary: useless off
    this TPM) and TPM2B_PUBLIC.
``deriving.sealed``
    The deriving key for shared secrets and the counter map's MAC, as a TPM sealed
    object (TPM2B_PRIVATE then TPM2B_PUBLIC) under the host's PCR policy.
``counters.json``
    Which NV index holds each (program, label) counter and the NV value its count
    starts from, with an HMAC under a key derived from the deriving key: editing it
    by hand is detected; restoring an older copy only loses entries, and a label
    whose NV index exists but is not recorded is refused.
``quote_key_cert.der``
    The domain's certificate for the quote key, once certified.
``primary.name``
    The storage primary's TPM Name (SHA-256 nameAlg, 34 bytes) at creation: the
    kept policy session is salted to the primary only if CreatePrimary gives this
    Name again (else a proxy could answer with a key of its own and learn the salt).

A file that is missing, oversized or edited into nonsense is a ConfigError naming
it, never a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Final

import attrs

from taonet._errors import ConfigError, HostError
from taonet._files import atomic_write, read_file
from taonet.hosts.tpm2 import _wire

__all__ = ["CounterEntry", "HostConfig", "StateDir"]

FORMAT: Final = "taonet tpm2 host v1"
CONFIG_FILE: Final = "tpm2host.json"
QUOTE_PRIV_FILE: Final = "quote_key.priv"
QUOTE_PUB_FILE: Final = "quote_key.pub"
DERIVING_FILE: Final = "deriving.sealed"
COUNTERS_FILE: Final = "counters.json"
CERT_FILE: Final = "quote_key_cert.der"
PRIMARY_FILE: Final = "primary.name"
_NAME_SIZE: Final = 34
_COUNTERS_FORMAT: Final = "taonet tpm2 counters v1"
_MAX_SMALL: Final = 64 * 1024
_MAX_COUNTERS_FILE: Final = 4 * 1024 * 1024
_ALGS: Final = ("ecc", "rsa")


@attrs.frozen
class HostConfig:
    tcti: str
    pcrs: tuple[int, ...]
    alg: str


@attrs.frozen
class CounterEntry:
    """One counter: its NV index and the NV value at which its count was ``0``
    (None while its creation has not finished)."""

    index: int
    base: int | None


class StateDir:
    """Reading and writing one host's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self, name: str, limit: int = _MAX_SMALL) -> bytes:
        return read_file(self.path / name, limit=limit)

    def _read_json(self, name: str, form: str, limit: int = _MAX_SMALL) -> dict[str, Any]:
        """The JSON object in ``name`` whose "format" is ``form``; ConfigError if not."""
        obj = _load_json(self._read(name, limit), self.path / name)
        if not isinstance(obj, dict) or obj.get("format") != form:
            raise ConfigError(f"{self.path / name} is not a {form!r} file")
        return obj

    def _write(self, name: str, data: bytes) -> None:
        atomic_write(self.path / name, data, mode=0o600)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    # -- creation ------------------------------------------------------------------

    def create(
        self,
        config: HostConfig,
        quote_private: bytes,
        quote_public: bytes,
        deriving_sealed: bytes,
        primary_name: bytes,
    ) -> None:
        """Write a new host's files; ConfigError if the directory already holds one."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.chmod(0o700)
        if self.exists(CONFIG_FILE):
            raise ConfigError(f"{self.path} already holds a TPM host")
        self._write(QUOTE_PRIV_FILE, quote_private)
        self._write(QUOTE_PUB_FILE, quote_public)
        self._write(DERIVING_FILE, deriving_sealed)
        self._write(PRIMARY_FILE, primary_name)
        text = {"format": FORMAT, "tcti": config.tcti, "pcrs": list(config.pcrs), "alg": config.alg}
        self._write(CONFIG_FILE, json.dumps(text, indent=1).encode() + b"\n")

    # -- reading -------------------------------------------------------------------

    def config(self) -> HostConfig:
        name = self.path / CONFIG_FILE
        obj = self._read_json(CONFIG_FILE, FORMAT)
        tcti, pcrs, alg = obj.get("tcti"), obj.get("pcrs"), obj.get("alg")
        if not isinstance(tcti, str) or not tcti:
            raise ConfigError(f"{name}: 'tcti' must be a non-empty string")
        if alg not in _ALGS:
            raise ConfigError(f"{name}: 'alg' must be 'ecc' or 'rsa'")
        if not isinstance(pcrs, list):
            raise ConfigError(f"{name}: 'pcrs' must be a list of PCR indices")
        try:
            checked = _wire.check_pcrs(pcrs)
        except HostError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        return HostConfig(tcti=tcti, pcrs=checked, alg=alg)

    def quote_key(self) -> tuple[bytes, bytes]:
        private = _tpm2b_file(self._read(QUOTE_PRIV_FILE), self.path / QUOTE_PRIV_FILE)
        public = _tpm2b_file(self._read(QUOTE_PUB_FILE), self.path / QUOTE_PUB_FILE)
        return private, public

    def deriving_sealed(self) -> tuple[bytes, bytes]:
        return split_object(self._read(DERIVING_FILE), self.path / DERIVING_FILE)

    def primary_name(self) -> bytes:
        """The storage primary's Name recorded at creation; ConfigError if missing."""
        name = self.path / PRIMARY_FILE
        if not self.exists(PRIMARY_FILE):
            raise ConfigError(
                f"{name} is missing: this host was made by an older taonet (its TPM "
                "sessions cannot be salted to a known primary); create the host again"
            )
        data = self._read(PRIMARY_FILE)
        if len(data) != _NAME_SIZE or data[:2] != b"\x00\x0b":
            raise ConfigError(f"{name} is not a SHA-256 TPM Name (truncated or edited?)")
        return data

    def certificate(self) -> bytes | None:
        if not self.exists(CERT_FILE):
            return None
        return self._read(CERT_FILE)

    def write_certificate(self, cert_der: bytes) -> None:
        self._write(CERT_FILE, cert_der)

    # -- the counter map -----------------------------------------------------------

    def counters(self, mac_key: bytes) -> dict[tuple[str, str], CounterEntry]:
        """The counter map (empty if none yet); ConfigError if its MAC or form is bad."""
        name = self.path / COUNTERS_FILE
        if not self.exists(COUNTERS_FILE):
            return {}
        obj = self._read_json(COUNTERS_FILE, _COUNTERS_FORMAT, _MAX_COUNTERS_FILE)
        entries, tag = obj.get("counters"), obj.get("mac")
        if not isinstance(entries, list) or not isinstance(tag, str):
            raise ConfigError(f"{name}: expected 'counters' and 'mac'")
        if not hmac.compare_digest(tag.encode(), _mac(mac_key, entries).encode()):
            raise ConfigError(f"{name} fails its integrity check: edited, or another host's")
        out: dict[tuple[str, str], CounterEntry] = {}
        for item in entries:
            out.update(_entry(item, name))
        return out

    def write_counters(self, mac_key: bytes, table: dict[tuple[str, str], CounterEntry]) -> None:
        entries = [
            {"program": program, "label": label, "index": e.index, "base": e.base}
            for (program, label), e in sorted(table.items())
        ]
        obj = {"format": _COUNTERS_FORMAT, "counters": entries, "mac": _mac(mac_key, entries)}
        self._write(COUNTERS_FILE, json.dumps(obj, indent=1).encode() + b"\n")


#: Deepest nesting the state files have (an object in a list in an object is 3).
_MAX_JSON_DEPTH: Final = 8


def _load_json(data: bytes, name: Path) -> Any:
    """Parse a state file; ConfigError if it is not JSON or nested deeper than the
    files ever are (a deeply nested file would otherwise be a RecursionError)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ConfigError(f"{name} is not valid JSON (edited by hand?)") from None
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > _MAX_JSON_DEPTH:
                raise ConfigError(f"{name} is nested too deeply (edited by hand?)")
            values = item.values() if isinstance(item, dict) else item
            stack.extend((value, depth + 1) for value in values)
    return obj


def _mac(key: bytes, entries: list[Any]) -> str:
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _entry(item: object, name: Path) -> dict[tuple[str, str], CounterEntry]:
    if not isinstance(item, dict):
        raise ConfigError(f"{name}: a counter entry is not an object")
    program, label, index, base = (item.get(k) for k in ("program", "label", "index", "base"))
    if not isinstance(program, str) or not isinstance(label, str):
        raise ConfigError(f"{name}: a counter entry lacks its program or label")
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or not 0x01000000 <= index <= 0x01FFFFFF
    ):
        raise ConfigError(f"{name}: counter {label!r} has a bad NV index")
    if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
        raise ConfigError(f"{name}: counter {label!r} has a bad base")
    return {(program, label): CounterEntry(index, base)}


def _tpm2b_file(data: bytes, name: Path) -> bytes:
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        raise ConfigError(f"{name} is not a TPM2B blob (truncated or edited?)")
    return data


def split_object(data: bytes, name: Path | str) -> tuple[bytes, bytes]:
    """(TPM2B_PRIVATE, TPM2B_PUBLIC) stored one after the other."""
    if len(data) >= 2:
        n = 2 + int.from_bytes(data[:2], "big")
        if len(data) >= n + 2 and 2 + int.from_bytes(data[n : n + 2], "big") == len(data) - n:
            return data[:n], data[n:]
    raise ConfigError(f"{name} is not a sealed TPM object (truncated or edited?)")
