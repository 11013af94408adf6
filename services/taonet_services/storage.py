"""Storage for services: one :class:`Database` over SQLite or PostgreSQL, and the audit chain.

* :class:`Database`, :class:`StorageError`, :class:`StorageReason`: see
  ``taonet_services._db``.
* :func:`redact_url`: a database URL without its password, for messages and reports.
* :class:`AuditStore`: a :mod:`taonet.audit` chain kept in a Database, appended
  atomically with the writes it records, checkpointed with a service's key.
"""

from __future__ import annotations

from taonet_services._audit_log import AuditStore
from taonet_services._db import (
    Cursor,
    Database,
    Dialect,
    StorageError,
    StorageReason,
    redact_url,
)

__all__ = [
    "AuditStore",
    "Cursor",
    "Database",
    "Dialect",
    "StorageError",
    "StorageReason",
    "redact_url",
]

for _public in (AuditStore, Database, StorageError, StorageReason, redact_url):
    _public.__module__ = __name__
del _public
