"""The domain service: validates program attestations and issues program certificates.

See ``_service`` for the protocol, checks and limits, ``_audit`` for the audit log and
``_limits`` for how refusals are rate limited and summarized. The guard follows the
domain's signed configuration while the service runs (a rule retracted or added with
``taonet domain policy`` holds from the next certification; files that do not load
keep the guard in force and are reported): ``taonet_services._domain_watch``.
"""

from __future__ import annotations

from taonet_services.domain_service._audit import AuditEvent, AuditLog, bounded, format_events
from taonet_services.domain_service._limits import ConnectionLimits, RefusalLimits
from taonet_services.domain_service._service import (
    AUDIT_FILE,
    ERROR_RATE_LIMITED,
    MAX_REQUEST,
    DomainService,
)

__all__ = [
    "AUDIT_FILE",
    "ERROR_RATE_LIMITED",
    "MAX_REQUEST",
    "AuditEvent",
    "AuditLog",
    "ConnectionLimits",
    "DomainService",
    "RefusalLimits",
    "bounded",
    "format_events",
]

# What this package exports reports it as its home (reprs, tracebacks, docs).
for _public in (
    AuditEvent,
    AuditLog,
    ConnectionLimits,
    DomainService,
    RefusalLimits,
    bounded,
    format_events,
):
    _public.__module__ = __name__
del _public
