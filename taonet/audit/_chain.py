"""The audit chain: entries linked by hashes, checkpoints signed over the head.

Each :class:`AuditEntry` carries the hash of the entry before it
(``prev_hash``; :data:`GENESIS` for the first) and its own hash is
``SHA-256(prev_hash || encode_entry(entry))``, so the hash of the last entry (the
*head*) commits to every entry before it. A :class:`Checkpoint` is a signature,
under the context :data:`CHECKPOINT_CONTEXT`, over ``(seq, head_hash, time_ns,
signer)``: whoever holds the signing key says "the chain had these ``seq``
entries and ended in this hash".

:func:`verify_chain` walks a stored chain and raises :class:`AuditError` at the
first entry or checkpoint that is wrong, naming its sequence number and why
(:class:`AuditReason`). What it can prove, and what it cannot:

* an entry edited in place (any field) no longer matches its recorded hash, or,
  if the hash was recomputed too, breaks the link of the entry after it, or
  (when the editor rewrote every later hash as well) no longer matches the head
  a checkpoint signed;
* a removed entry leaves a gap in the sequence numbers (or, renumbered, a broken
  link); moved entries link to the wrong predecessor;
* entries removed from the end are detected only up to the last checkpoint:
  a log cut after it looks like a log that stopped there. Services therefore
  checkpoint often (every N entries or T seconds) and on shutdown;
* a checkpoint signed by another key names a signer that is not trusted, or
  carries a signature that does not verify;
* every entry names the last checkpoint signed before it (hashed with the
  entry), so a checkpoint that entries were written after cannot be removed
  without a trace. The newest checkpoint, that no entry names yet, can: a log
  whose newest checkpoints were removed verifies as one signed only up to the
  checkpoint before them (the summary says up to where).

Pure: no I/O and no trio.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

import attrs

from taonet._errors import AuthenticationError, CodecError, TaoError
from taonet._log import bounded as _bounded
from taonet.auth import key_principal
from taonet.crypto import Signer, Verifier

__all__ = [
    "CHECKPOINT_CONTEXT",
    "GENESIS",
    "MAX_ACTOR_CHARS",
    "MAX_DETAILS",
    "MAX_DETAIL_CHARS",
    "AuditEntry",
    "AuditError",
    "AuditReason",
    "ChainSummary",
    "Checkpoint",
    "bounded",
    "decode_details",
    "encode_details",
    "encode_entry",
    "sign_checkpoint",
    "verify_chain",
]

#: The ``prev_hash`` of the first entry.
GENESIS: Final = bytes(32)
#: The signing context of checkpoints.
CHECKPOINT_CONTEXT: Final = "taonet audit checkpoint v1"
_ENTRY_TAG: Final = b"taonet audit entry v1\x00"
_CHECKPOINT_TAG: Final = b"taonet audit checkpoint v1\x00"

#: Longest actor or subject (a principal name with a few extensions fits).
MAX_ACTOR_CHARS: Final = 8192
#: Longest kind or outcome.
MAX_WORD_CHARS: Final = 64
#: Most details an entry carries, and the longest detail value.
MAX_DETAILS: Final = 32
MAX_DETAIL_CHARS: Final = 4096
_WORD: Final = re.compile(r"[a-z0-9][a-z0-9_.\-]*\Z")
_MAX_SEQ: Final = (1 << 63) - 1
#: Longest signer key or signature a checkpoint holds.
_MAX_BLOB: Final = 1024


class AuditReason(enum.Enum):
    """Why a chain failed verification."""

    EDITED = "edited"
    REMOVED = "removed"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    CHECKPOINT_SIGNATURE = "checkpoint_signature"
    CHECKPOINT_REMOVED = "checkpoint_removed"
    UNTRUSTED_SIGNER = "untrusted_signer"
    MALFORMED = "malformed"
    #: The chain verified, but the rows it records do not hold what it says
    #: (``taonet audit verify --against-rows``, :class:`taonet.audit.RowAudit`).
    ROWS_MISMATCH = "rows_mismatch"


class AuditError(AuthenticationError):
    """An audit chain failed verification at ``seq`` for ``reason`` (the message says more)."""

    def __init__(self, message: str, *, seq: int, reason: AuditReason) -> None:
        super().__init__(message)
        self.seq = seq
        self.reason = reason


def bounded(value: str, limit: int = MAX_ACTOR_CHARS) -> str:
    """``value`` cut to ``limit`` characters as :func:`taonet._log.bounded` cuts it
    (the start, then the full length and SHA-256)."""
    return _bounded(value, limit)


def _text(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} has {len(value)} characters, more than {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not encodable as UTF-8") from None


def _word(name: str, value: object) -> None:
    _text(name, value, MAX_WORD_CHARS)
    assert isinstance(value, str)
    if not _WORD.match(value):
        raise ValueError(f"{name} must be a lowercase word ([a-z0-9_.-]), got {value!r}")


def _check_details(
    _: object, __: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]
) -> None:
    if len(value) > MAX_DETAILS:
        raise ValueError(f"an entry carries at most {MAX_DETAILS} details, got {len(value)}")
    for key, item in value.items():
        _word("detail key", key)
        _text(f"detail {key}", item, MAX_DETAIL_CHARS)


def _seq(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int")
    if not 1 <= value <= _MAX_SEQ:
        raise ValueError(f"{attribute.name} must be from 1 to 2**63 - 1, got {value}")


def _time(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int")
    if not 0 <= value <= _MAX_SEQ:
        raise ValueError(f"{attribute.name} must be from 0 to 2**63 - 1, got {value}")


def _hash32(_: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{attribute.name} must be 32 bytes")


def _maybe_hash32(_: object, attribute: attrs.Attribute[bytes | None], value: bytes | None) -> None:
    if value is not None:
        _hash32(_, attribute, value)  # type: ignore[arg-type]


def _blob(_: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or not 0 < len(value) <= _MAX_BLOB:
        raise ValueError(f"{attribute.name} must be 1 to {_MAX_BLOB} bytes")


def _freeze(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class AuditEntry:
    """One entry of the chain.

    ``kind`` says what happened (``"cert_issued"``, ``"secret_read"``, ...),
    ``actor`` who asked (a principal name, or a peer address), ``subject`` what
    it was about, ``outcome`` how it ended (``"ok"``, ``"refused"``, ...),
    ``details`` the rest as text. Every field is bounded (see the ``MAX_*``
    constants; :func:`bounded` cuts text from outside to fit). ``checkpoint_seq``
    names the last checkpoint signed before the entry was written. ``recorded_hash``
    is the hash stored with the entry, when it was read back from storage; it is
    not part of the entry's hash.
    """

    seq: int = attrs.field(validator=_seq)
    time_ns: int = attrs.field(validator=_time)
    kind: str = attrs.field(validator=lambda _, __, v: _word("kind", v))
    actor: str = attrs.field(validator=lambda _, __, v: _text("actor", v, MAX_ACTOR_CHARS))
    subject: str = attrs.field(validator=lambda _, __, v: _text("subject", v, MAX_ACTOR_CHARS))
    outcome: str = attrs.field(validator=lambda _, __, v: _word("outcome", v))
    details: Mapping[str, str] = attrs.field(
        factory=dict,
        converter=_freeze,
        validator=_check_details,
        hash=False,
        repr=lambda d: repr(dict(d)),
    )
    prev_hash: bytes = attrs.field(default=GENESIS, validator=_hash32, repr=lambda b: b.hex())
    #: The last checkpoint when the entry was written (0: none). It is hashed, so a
    #: checkpoint that later entries name cannot be removed without a trace.
    checkpoint_seq: int = attrs.field(default=0, validator=_time)
    recorded_hash: bytes | None = attrs.field(
        default=None, validator=_maybe_hash32, eq=False, repr=False
    )

    @property
    def hash(self) -> bytes:
        """``SHA-256(prev_hash || encode_entry(self))``."""
        return hashlib.sha256(self.prev_hash + encode_entry(self)).digest()


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def encode_entry(entry: AuditEntry) -> bytes:
    """The canonical encoding of an entry's fields (not ``prev_hash``): length-prefixed.

    A tag and version, then ``seq``, ``time_ns`` and ``checkpoint_seq`` as 8-byte
    big-endian, then
    kind, actor, subject and outcome as 4-byte length + UTF-8, then the number of
    details and each (key, value) in key order, length-prefixed the same way.
    Two different entries never encode the same.
    """
    parts = [
        _ENTRY_TAG,
        struct.pack(">QQQ", entry.seq, entry.time_ns, entry.checkpoint_seq),
        _str(entry.kind),
        _str(entry.actor),
        _str(entry.subject),
        _str(entry.outcome),
        struct.pack(">I", len(entry.details)),
    ]
    for key in sorted(entry.details):
        parts.append(_str(key))
        parts.append(_str(entry.details[key]))
    return b"".join(parts)


@attrs.frozen
class Checkpoint:
    """A signed statement: the chain had ``seq`` entries and its head hash was ``head_hash``.

    ``signer`` is the text of the signing key's principal (``key([...])``) and
    ``signer_key`` its SubjectPublicKeyInfo DER; ``signature`` a serialized
    SignedData under :data:`CHECKPOINT_CONTEXT`.
    """

    seq: int = attrs.field(validator=_seq)
    head_hash: bytes = attrs.field(validator=_hash32, repr=lambda b: b.hex())
    time_ns: int = attrs.field(validator=_time)
    signer: str = attrs.field(validator=lambda _, __, v: _text("signer", v, MAX_ACTOR_CHARS))
    signer_key: bytes = attrs.field(validator=_blob, repr=False)
    signature: bytes = attrs.field(validator=_blob, repr=False)

    def signed_data(self) -> bytes:
        return _checkpoint_data(self.seq, self.head_hash, self.time_ns, self.signer)


def _checkpoint_data(seq: int, head_hash: bytes, time_ns: int, signer: str) -> bytes:
    return (
        _CHECKPOINT_TAG
        + struct.pack(">Q", seq)
        + head_hash
        + struct.pack(">Q", time_ns)
        + _str(signer)
    )


def sign_checkpoint(signer: Signer, *, seq: int, head_hash: bytes, time_ns: int) -> Checkpoint:
    """A checkpoint over ``(seq, head_hash)`` signed by ``signer``."""
    key = signer.public_key_der()
    name = str(key_principal(key))
    signature = signer.sign(_checkpoint_data(seq, head_hash, time_ns, name), CHECKPOINT_CONTEXT)
    return Checkpoint(
        seq=seq,
        head_hash=head_hash,
        time_ns=time_ns,
        signer=name,
        signer_key=key,
        signature=signature,
    )


@attrs.frozen
class ChainSummary:
    """What :func:`verify_chain` verified."""

    entries: int
    checkpoints: int
    #: The last entry's sequence number and hash (0 and GENESIS for an empty chain).
    head_seq: int
    head_hash: bytes = attrs.field(repr=lambda b: b.hex())
    #: The last checkpoint's sequence number (0 if none): entries after it are
    #: linked but not yet signed, so a cut there would not be noticed.
    last_checkpoint_seq: int
    #: The principals whose checkpoints were verified.
    signers: tuple[str, ...]
    #: Whether the signers were checked against trusted keys (False: each
    #: checkpoint was only checked against the key it names).
    trusted: bool


def _check_checkpoint(cp: Checkpoint, trusted: Mapping[str, Verifier] | None) -> None:
    try:
        named = str(key_principal(cp.signer_key))
    except (TypeError, ValueError) as exc:
        raise AuditError(
            f"checkpoint {cp.seq}: the signer's key is malformed: {exc}",
            seq=cp.seq,
            reason=AuditReason.MALFORMED,
        ) from None
    if named != cp.signer:
        raise AuditError(
            f"checkpoint {cp.seq}: the key does not match the signer it names",
            seq=cp.seq,
            reason=AuditReason.CHECKPOINT_SIGNATURE,
        )
    if trusted is not None:
        verifier = trusted.get(cp.signer)
        if verifier is None:
            raise AuditError(
                f"checkpoint {cp.seq} is signed by {bounded(cp.signer, 120)}, which is not a"
                " trusted key (forged, or signed by another domain's key)",
                seq=cp.seq,
                reason=AuditReason.UNTRUSTED_SIGNER,
            )
    else:
        try:
            verifier = Verifier.from_der(cp.signer_key)
        except (TaoError, TypeError, ValueError):
            raise AuditError(
                f"checkpoint {cp.seq}: the signer's key cannot be read",
                seq=cp.seq,
                reason=AuditReason.MALFORMED,
            ) from None
    try:
        verifier.verify(cp.signed_data(), CHECKPOINT_CONTEXT, cp.signature)
    except AuthenticationError:
        raise AuditError(
            f"checkpoint {cp.seq}: the signature does not verify (the checkpoint was forged"
            " or edited)",
            seq=cp.seq,
            reason=AuditReason.CHECKPOINT_SIGNATURE,
        ) from None


def verify_chain(
    entries: Iterable[AuditEntry],
    checkpoints: Iterable[Checkpoint],
    trusted: Collection[Verifier] | None = None,
    *,
    locate: Callable[[bytes], int | None] | None = None,
) -> ChainSummary:
    """Verify a stored chain (entries in storage order by ``seq``) and its checkpoints.

    ``trusted``: the keys allowed to sign checkpoints; ``None`` checks each
    checkpoint only against the key it names (which proves nothing about who
    signed it: the summary says ``trusted=False``). Raises :class:`AuditError` at
    the first bad entry or checkpoint, in sequence order.

    ``locate(hash)``: the seq of the stored entry whose recorded hash is ``hash``
    (None if none), asked only when an entry does not link to the one before it,
    to say whether entries were moved. With it, ``entries`` is read once, lazily,
    and never held (a store pages through a long chain); without it the entries
    are all read first, to answer that from them.
    """
    if locate is None:
        entry_list = list(entries)
        recorded = {e.recorded_hash: e.seq for e in entry_list if e.recorded_hash is not None}
        locate = recorded.get
        entries = entry_list
    cps = sorted(checkpoints, key=lambda c: c.seq)
    trusted_map = (
        None if trusted is None else {str(key_principal(v.public_key_der())): v for v in trusted}
    )
    for cp in cps:
        _check_checkpoint(cp, trusted_map)
    by_seq: dict[int, list[Checkpoint]] = {}
    for cp in cps:
        by_seq.setdefault(cp.seq, []).append(cp)
    running = GENESIS
    expected = 1
    count = 0
    for entry in entries:
        count += 1
        seq = entry.seq
        if seq < expected:
            raise AuditError(
                f"entry {seq} comes after entry {expected - 1}: the entries are out of order",
                seq=seq,
                reason=AuditReason.REORDERED,
            )
        if seq > expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
            raise AuditError(
                f"entry {missing} missing before entry {seq}: removed",
                seq=expected,
                reason=AuditReason.REMOVED,
            )
        if not hmac.compare_digest(entry.prev_hash, running):
            source = locate(entry.prev_hash)
            if source is not None and source != seq - 1:
                raise AuditError(
                    f"entry {seq} was written after the entry now at {source}, not after"
                    f" entry {seq - 1}: entries were moved",
                    seq=seq,
                    reason=AuditReason.REORDERED,
                )
            raise AuditError(
                f"entry {seq} does not follow entry {seq - 1}: an entry before it was removed"
                " or edited, or its link was",
                seq=seq,
                reason=AuditReason.REMOVED if seq > 1 else AuditReason.EDITED,
            )
        if entry.checkpoint_seq >= seq:
            raise AuditError(
                f"entry {seq} names checkpoint {entry.checkpoint_seq}, which cannot come before"
                " it: edited",
                seq=seq,
                reason=AuditReason.EDITED,
            )
        digest = entry.hash
        if entry.recorded_hash is not None and not hmac.compare_digest(digest, entry.recorded_hash):
            raise AuditError(
                f"entry {seq} does not match its recorded hash: edited",
                seq=seq,
                reason=AuditReason.EDITED,
            )
        if entry.checkpoint_seq and entry.checkpoint_seq not in by_seq:
            raise AuditError(
                f"entry {seq} was written after checkpoint {entry.checkpoint_seq}, which is"
                " missing: checkpoint removed",
                seq=seq,
                reason=AuditReason.CHECKPOINT_REMOVED,
            )
        for cp in by_seq.get(seq, ()):
            if not hmac.compare_digest(cp.head_hash, digest):
                raise AuditError(
                    f"the entries up to {seq} do not match the head checkpoint {seq} signed:"
                    " entries at or before it were edited, removed or replaced",
                    seq=seq,
                    reason=AuditReason.CHECKPOINT_MISMATCH,
                )
        running = digest
        expected = seq + 1
    head_seq = expected - 1
    if cps and cps[-1].seq > head_seq:
        raise AuditError(
            f"checkpoint {cps[-1].seq} covers entries up to {cps[-1].seq}, but the log ends at"
            f" entry {head_seq}: entries {head_seq + 1} to {cps[-1].seq} were removed",
            seq=head_seq + 1,
            reason=AuditReason.TRUNCATED,
        )
    return ChainSummary(
        entries=count,
        checkpoints=len(cps),
        head_seq=head_seq,
        head_hash=running,
        last_checkpoint_seq=cps[-1].seq if cps else 0,
        signers=tuple(sorted({cp.signer for cp in cps})),
        trusted=trusted is not None,
    )


def decode_details(text: str) -> dict[str, str]:
    """Details stored as a JSON object of strings; CodecError otherwise."""
    import json

    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"audit details are not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CodecError("audit details must be a JSON object of strings")
    return value


def encode_details(details: Mapping[str, str]) -> str:
    """Details as canonical JSON (keys sorted): how stores keep them."""
    import json

    return json.dumps(dict(details), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
