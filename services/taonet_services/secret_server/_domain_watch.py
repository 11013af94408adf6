"""The running secret server follows the domain's signed configuration: a retracted rule ends.

The guard used to be read once at start, so a rule retracted by the policy key (or a
re-signed domain) kept allowing reads, and the master key, until a restart. The
watching itself is :class:`taonet_services._domain_watch.DomainReloader` (shared with
the domain service; its docstring says when it looks, what it refuses and what it
reports). :class:`GuardReloader` hands each newer configuration's guard to the server
(``server.guard``); :meth:`GuardReloader.fresh` is awaited before each new channel's
first request. Decisions channels remembered were taken under the old guard object and
are asked again (``_Seen`` keys them on it), and the master key's release asks
``server.guard`` each time.
"""

from __future__ import annotations

from collections.abc import Callable

from taonet.domain import Domain, Guard
from taonet_services._domain_watch import RELOAD_INTERVAL, DomainReloader

__all__ = ["RELOAD_INTERVAL", "GuardReloader"]


class GuardReloader(DomainReloader):
    """Keeps ``set_guard`` fed with the guard of the domain's current signed configuration."""

    def __init__(
        self,
        domain: Domain,
        set_guard: Callable[[Guard], None],
        *,
        interval: float = RELOAD_INTERVAL,
    ) -> None:
        super().__init__(domain, lambda loaded: set_guard(loaded.guard), interval=interval)
