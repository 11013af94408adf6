"""The running secret server follows the domain's signed configuration: a retracted rule ends.

The guard used to be read once at start, so a rule retracted by the policy key (or a
re-signed domain) kept allowing reads, and the master key, until a restart. The
watching itself is :class:`taonet_services._domain_watch.DomainReloader` (shared with
the domain service; its docstring says when it looks, what it refuses and what it
reports). :class:`GuardReloader` hands each newer configuration's guard to the server
(``server.guard``); :meth:`GuardReloader.fresh` is awaited before each new channel's
first request. Decisions channels remembered were taken under the old guard object and
are asked again (``_Seen`` keys them on it, and the server-wide decisions too), and
the master key's release asks ``server.guard`` each time. ``report`` (the server passes
:func:`audit_reload`) records each reload and refusal in the server's audit chain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from taonet import TaoError
from taonet.audit import bounded
from taonet.domain import Domain, Guard
from taonet_services._domain_watch import RELOAD_INTERVAL, DomainReloader, ReloadReport

__all__ = ["RELOAD_INTERVAL", "GuardReloader", "audit_reload"]

log = structlog.get_logger(__name__)


class GuardReloader(DomainReloader):
    """Keeps ``set_guard`` fed with the guard of the domain's current signed configuration."""

    def __init__(
        self,
        domain: Domain,
        set_guard: Callable[[Guard], None],
        *,
        interval: float = RELOAD_INTERVAL,
        report: Callable[[ReloadReport], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            domain, lambda loaded: set_guard(loaded.guard), interval=interval, report=report
        )


def audit_reload(
    record: Callable[..., Awaitable[None]],
) -> Callable[[ReloadReport], Awaitable[None]]:
    """A ``report`` for :class:`GuardReloader` that appends a ``domain_guard`` entry
    (outcome ``reloaded``, ``refused`` or ``unchanged``; the serial in force, the
    refusals it stands for and why) with ``record`` (the server's ``record_audit``)."""

    async def report(event: ReloadReport) -> None:
        details = {"config_serial": str(event.serial), "count": str(event.events)}
        if event.error is not None:
            details["error"] = bounded(event.error, 1000)
        try:
            await record(
                kind="domain_guard",
                actor="domain",
                subject=f"configuration serial {event.serial}",
                outcome=event.outcome,
                details=details,
            )
        except TaoError as exc:  # logged by the watcher already; the chain may be down
            log.error("audit_failed", error=bounded(str(exc), 500))  # noqa: TRY400

    return report
