"""Password-protected keysets: a host's or domain's private keys as one sealed blob.

A :class:`Keyset` holds a signing key, optionally an AES-256-GCM key and
optionally a 32-byte HKDF secret. :func:`seal_keyset` turns it into bytes under
a password; :func:`open_keyset` turns them back, raising
:class:`~taonet.ConfigError` (and nothing else) when it cannot.

Blob format (all integers big-endian)::

    offset  size  field
    0       8     magic  b"TAOKEYS\\n"
    8       1     format version (1)
    9       4     scrypt n (a power of two)
    13      4     scrypt r
    17      4     scrypt p
    21      16    scrypt salt (random)
    37      ...   AES-256-GCM blob as made by Crypter.encrypt:
                  0x01 || nonce (12) || ciphertext || tag (16)

The AES key is ``scrypt(password, salt, n, r, p)`` (32 bytes), and the first 37
bytes (the header) are the GCM associated data, so a change to any byte of
the blob, header included, makes it fail to open. The salt (16 bytes) and the
derived key (32 bytes) have fixed lengths: no field of the blob sets them.

:func:`open_keyset` accepts only scrypt parameters taonet itself writes (see
:class:`KdfParams`): ``r = 8``, ``p = 1`` and ``n`` a power of two from 2**4
(:meth:`KdfParams.for_tests`) to 2**17 (:meth:`KdfParams.default`), so at most
128 MiB and the default's time. It checks them *before* running scrypt, so a
corrupted or hostile header is refused at once instead of making it burn memory
or time before "wrong password".

The plaintext is a sequence of records ``tag (1) || length (4) || value``
with strictly increasing tags and nothing after the last one:

* tag 1 (required): the signing key, PKCS#8 DER;
* tag 2 (optional): the AES-256-GCM key, 32 bytes;
* tag 3 (optional): the HKDF deriving secret, 32 bytes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Final

import attrs

from taonet._errors import AuthenticationError, CodecError, ConfigError
from taonet._files import atomic_write, read_file
from taonet.crypto._aead import AEAD_OVERHEAD, Crypter
from taonet.crypto._signing import Signer

__all__ = [
    "MAX_KEYSET_BYTES",
    "KdfParams",
    "Keyset",
    "load_keyset",
    "open_keyset",
    "save_keyset",
    "seal_keyset",
]

_MAGIC: Final = b"TAOKEYS\n"
_FORMAT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">8sBIII16s")
_HEADER_BYTES: Final = _HEADER.size  # 37
_SALT_BYTES: Final = 16
_DERIVING_KEY_BYTES: Final = 32
_RECORD: Final = struct.Struct(">BI")
_TAG_SIGNER: Final = 1
_TAG_CRYPTER: Final = 2
_TAG_DERIVING: Final = 3

#: Largest keyset blob :func:`open_keyset` and :func:`load_keyset` accept.
MAX_KEYSET_BYTES: Final = 64 * 1024

# The scrypt parameters taonet writes, and so the only ones it accepts, for both
# sealing and opening: n from for_tests() (2**4) to default() (2**17), r = 8, p = 1.
# scrypt needs 128 * n * r bytes: at most 128 MiB here.
_MIN_LOG2_N: Final = 4
_MAX_LOG2_N: Final = 17
_R: Final = 8
_P: Final = 1


def _kdf_problem(n: int, r: int, p: int) -> str | None:
    """Why (n, r, p) is not a set taonet writes, or None if scrypt may run with them."""
    if n < (1 << _MIN_LOG2_N) or n > (1 << _MAX_LOG2_N) or n & (n - 1):
        return f"n={n} must be a power of two from 2**{_MIN_LOG2_N} to 2**{_MAX_LOG2_N}"
    if r != _R:
        return f"r={r} must be {_R}"
    if p != _P:
        return f"p={p} must be {_P}"
    return None


@attrs.frozen
class KdfParams:
    """scrypt parameters for sealing a keyset.

    Use :meth:`default` for real keys. :meth:`for_tests` is deliberately weak
    and cheap, for test suites only: never seal a real key with it. Only
    ``r = 8``, ``p = 1`` and ``n`` a power of two from 2**4 to 2**17 are
    allowed (ConfigError otherwise): the sets :func:`open_keyset` accepts.
    """

    n: int
    r: int
    p: int

    def __attrs_post_init__(self) -> None:
        for v in (self.n, self.r, self.p):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"scrypt parameters must be ints, got {type(v).__name__}")
        problem = _kdf_problem(self.n, self.r, self.p)
        if problem is not None:
            raise ConfigError(f"scrypt parameters out of bounds: {problem}")

    @classmethod
    def default(cls) -> KdfParams:
        """Strong parameters: n=2**17, r=8, p=1 (128 MiB, a fraction of a second)."""
        return cls(n=1 << 17, r=8, p=1)

    @classmethod
    def for_tests(cls) -> KdfParams:
        """TEST ONLY: n=2**4, r=8, p=1, which protects nothing but runs in microseconds."""
        return cls(n=1 << 4, r=8, p=1)


def _check_deriving_key(instance: Keyset, attribute: object, value: bytes | None) -> None:
    del instance, attribute
    if value is None:
        return
    if not isinstance(value, bytes):
        raise TypeError(f"deriving_key must be bytes, got {type(value).__name__}")
    if len(value) != _DERIVING_KEY_BYTES:
        raise ValueError(f"deriving_key must be {_DERIVING_KEY_BYTES} bytes, got {len(value)}")


@attrs.frozen
class Keyset:
    """A signing key plus optional AES-GCM key and HKDF secret. Reprs hide secrets."""

    signer: Signer = attrs.field(validator=attrs.validators.instance_of(Signer))
    crypter: Crypter | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Crypter))
    )
    deriving_key: bytes | None = attrs.field(
        default=None, repr=False, validator=_check_deriving_key
    )

    @classmethod
    def generate(
        cls, *, curve: str = "P-256", crypter: bool = True, deriving: bool = True
    ) -> Keyset:
        """Fresh keys: a signer on ``curve`` and, if asked, a crypter and a deriving secret."""
        return cls(
            signer=Signer.generate(curve),
            crypter=Crypter.generate() if crypter else None,
            deriving_key=os.urandom(_DERIVING_KEY_BYTES) if deriving else None,
        )

    def to_private_bytes(self) -> bytes:
        """The keys in the clear, for a parent Tao to seal (never write these to disk)."""
        return _encode_inner(self)

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Keyset:
        """Undo :meth:`to_private_bytes`; ConfigError if malformed."""
        return _decode_inner(bytes(data))


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)


def _check_password(password: bytes) -> bytes:
    if not isinstance(password, bytes | bytearray | memoryview):
        raise TypeError(f"password must be bytes, got {type(password).__name__}")
    return bytes(password)


def _encode_inner(keyset: Keyset) -> bytes:
    records = [(_TAG_SIGNER, keyset.signer.to_pkcs8_der())]
    if keyset.crypter is not None:
        records.append((_TAG_CRYPTER, keyset.crypter.key_bytes))
    if keyset.deriving_key is not None:
        records.append((_TAG_DERIVING, keyset.deriving_key))
    return b"".join(_RECORD.pack(tag, len(value)) + value for tag, value in records)


def _decode_inner(data: bytes) -> Keyset:
    values: dict[int, bytes] = {}
    pos = 0
    last_tag = 0
    while pos < len(data):
        if len(data) - pos < _RECORD.size:
            raise ConfigError("keyset contents are malformed: truncated record header")
        tag, length = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if tag <= last_tag or tag not in (_TAG_SIGNER, _TAG_CRYPTER, _TAG_DERIVING):
            raise ConfigError(f"keyset contents are malformed: unexpected record tag {tag}")
        if length > len(data) - pos:
            raise ConfigError("keyset contents are malformed: record runs past the end")
        values[tag] = data[pos : pos + length]
        pos += length
        last_tag = tag
    if _TAG_SIGNER not in values:
        raise ConfigError("keyset contents are malformed: no signing key")
    try:
        signer = Signer.from_pkcs8_der(values[_TAG_SIGNER])
        crypter_key = values.get(_TAG_CRYPTER)
        crypter = Crypter(crypter_key) if crypter_key is not None else None
        return Keyset(signer=signer, crypter=crypter, deriving_key=values.get(_TAG_DERIVING))
    except (CodecError, ValueError, TypeError) as exc:
        raise ConfigError(f"keyset contents are malformed: {exc}") from None


def seal_keyset(keyset: Keyset, password: bytes, *, kdf: KdfParams | None = None) -> bytes:
    """Encrypt ``keyset`` under ``password`` (scrypt with ``kdf``, or the default)."""
    if not isinstance(keyset, Keyset):
        raise TypeError(f"expected a Keyset, got {type(keyset).__name__}")
    pw = _check_password(password)
    if not pw:
        raise ConfigError("refusing to seal a keyset under an empty password")
    params = kdf if kdf is not None else KdfParams.default()
    salt = os.urandom(_SALT_BYTES)
    header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, params.n, params.r, params.p, salt)
    crypter = Crypter(_scrypt(pw, salt, params.n, params.r, params.p))
    return header + crypter.encrypt(_encode_inner(keyset), header)


def open_keyset(blob: bytes, password: bytes) -> Keyset:
    """Decrypt a blob made by :func:`seal_keyset`.

    Raises ConfigError, and nothing else, for a blob that is truncated, not a
    keyset, of an unknown version, has out-of-bounds scrypt parameters (checked
    before scrypt runs), or does not open with ``password`` (wrong password or
    any altered byte).
    """
    pw = _check_password(password)
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ConfigError(f"keyset: expected bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if len(data) > MAX_KEYSET_BYTES:
        raise ConfigError(f"keyset is {len(data)} bytes, over the {MAX_KEYSET_BYTES}-byte limit")
    if len(data) < _HEADER_BYTES + AEAD_OVERHEAD:
        raise ConfigError(f"keyset is truncated ({len(data)} bytes)")
    magic, version, n, r, p, salt = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ConfigError("not a taonet keyset (bad magic bytes): corrupted or another file")
    if version != _FORMAT_VERSION:
        raise ConfigError(
            f"unsupported keyset format version {version} (expected {_FORMAT_VERSION})"
        )
    problem = _kdf_problem(n, r, p)
    if problem is not None:
        raise ConfigError(f"corrupted keyset: scrypt parameters out of bounds: {problem}")
    header = data[:_HEADER_BYTES]
    crypter = Crypter(_scrypt(pw, salt, n, r, p))
    try:
        inner = crypter.decrypt(data[_HEADER_BYTES:], header)
    except (AuthenticationError, CodecError):
        raise ConfigError("wrong password or corrupted keyset") from None
    return _decode_inner(inner)


def save_keyset(
    path: str | os.PathLike[str],
    keyset: Keyset,
    password: bytes,
    *,
    kdf: KdfParams | None = None,
) -> None:
    """Seal ``keyset`` and write it to ``path`` atomically with mode 0600."""
    atomic_write(path, seal_keyset(keyset, password, kdf=kdf), mode=0o600)


def load_keyset(path: str | os.PathLike[str], password: bytes) -> Keyset:
    """Read and open the keyset at ``path``; ConfigError (naming the path) on any failure."""
    p = Path(path)
    try:
        blob = read_file(p, limit=MAX_KEYSET_BYTES)
    except ConfigError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise ConfigError(f"no keyset at {p}") from None
        raise
    try:
        return open_keyset(blob, password)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
