"""Keys and the things done with them: signatures, authenticated encryption, HKDF, keysets.

* :class:`Signer` / :class:`Verifier`: ECDSA P-256 and P-384 keys making and
  checking signatures in the original CloudProxy format (a serialized
  ``SignedData`` over SHA-256 of ``ContextualizedData{context, data}``), with the
  standard contexts :data:`ATTESTATION_CONTEXT`, :data:`ACL_GUARD_CONTEXT`,
  :data:`DATALOG_RULES_CONTEXT` and :data:`DIRECTIVE_CONTEXT`. Verification
  raises :class:`~taonet.AuthenticationError`; it never returns False.
* :class:`Crypter`: AES-256-GCM with associated data.
* :func:`hkdf_sha256`: HKDF with HMAC-SHA256 (RFC 5869).
* :class:`Keyset`, :func:`seal_keyset` / :func:`open_keyset` and the file helpers
  :func:`save_keyset` / :func:`load_keyset`: private keys sealed under a password
  with scrypt (:class:`KdfParams`) and AES-256-GCM.

Pure: no trio and no sockets; only the keyset file helpers touch the filesystem.
"""

from __future__ import annotations

from taonet.crypto._aead import AEAD_OVERHEAD, Crypter
from taonet.crypto._kdf import hkdf_sha256
from taonet.crypto._keyset import (
    MAX_KEYSET_BYTES,
    KdfParams,
    Keyset,
    load_keyset,
    open_keyset,
    save_keyset,
    seal_keyset,
)
from taonet.crypto._signing import (
    ACL_GUARD_CONTEXT,
    ATTESTATION_CONTEXT,
    DATALOG_RULES_CONTEXT,
    DIRECTIVE_CONTEXT,
    Signer,
    Verifier,
    contextualized_digest,
)

__all__ = [
    "ACL_GUARD_CONTEXT",
    "AEAD_OVERHEAD",
    "ATTESTATION_CONTEXT",
    "DATALOG_RULES_CONTEXT",
    "DIRECTIVE_CONTEXT",
    "MAX_KEYSET_BYTES",
    "Crypter",
    "KdfParams",
    "Keyset",
    "Signer",
    "Verifier",
    "contextualized_digest",
    "hkdf_sha256",
    "load_keyset",
    "open_keyset",
    "save_keyset",
    "seal_keyset",
]
