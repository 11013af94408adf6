"""The domain service: validates program attestations and issues program certificates.

See ``_service`` for the protocol and checks, ``_audit`` for the audit log.
"""

from __future__ import annotations

from services.domain_service._audit import AuditEvent, AuditLog, format_events
from services.domain_service._service import AUDIT_FILE, DomainService

__all__ = ["AUDIT_FILE", "AuditEvent", "AuditLog", "DomainService", "format_events"]
