"""Audit chains: hash-linked entries and signed checkpoints, and their verification.

* :class:`AuditEntry`: one bounded record (what happened, who asked, about what,
  how it ended, details) linked to the entry before it by hash.
* :class:`Checkpoint` / :func:`sign_checkpoint`: a signature by a service's key
  over the chain's length and head hash.
* :func:`verify_chain`: raises :class:`AuditError` (``.seq``, ``.reason``) at
  the first edited, removed, moved or truncated entry, or forged checkpoint;
  returns a :class:`ChainSummary` otherwise.
* :class:`RowAudit`: a secret server's chain replayed and held against the rows
  its database holds (a row rolled back, deleted or added without an audited
  change, a rolled-back version served): :class:`Mismatch`, :class:`MismatchKind`.

Storage lives with the services (``taonet_services.storage``); this package is
pure: no I/O, no trio.
"""

from __future__ import annotations

from taonet.audit._chain import (
    CHECKPOINT_CONTEXT,
    GENESIS,
    MAX_ACTOR_CHARS,
    MAX_DETAIL_CHARS,
    MAX_DETAILS,
    MAX_WORD_CHARS,
    AuditEntry,
    AuditError,
    AuditReason,
    ChainSummary,
    Checkpoint,
    bounded,
    decode_details,
    encode_details,
    encode_entry,
    sign_checkpoint,
    verify_chain,
)
from taonet.audit._rows import Mismatch, MismatchKind, RowAudit, RowVersion

__all__ = [
    "CHECKPOINT_CONTEXT",
    "GENESIS",
    "MAX_ACTOR_CHARS",
    "MAX_DETAILS",
    "MAX_DETAIL_CHARS",
    "MAX_WORD_CHARS",
    "AuditEntry",
    "AuditError",
    "AuditReason",
    "ChainSummary",
    "Checkpoint",
    "Mismatch",
    "MismatchKind",
    "RowAudit",
    "RowVersion",
    "bounded",
    "decode_details",
    "encode_details",
    "encode_entry",
    "sign_checkpoint",
    "verify_chain",
]

for _public in (
    AuditEntry,
    AuditError,
    AuditReason,
    ChainSummary,
    Checkpoint,
    Mismatch,
    MismatchKind,
    RowAudit,
    RowVersion,
):
    _public.__module__ = __name__
for _function in (
    bounded,
    decode_details,
    encode_details,
    encode_entry,
    sign_checkpoint,
    verify_chain,
):
    _function.__module__ = __name__
del _public, _function
