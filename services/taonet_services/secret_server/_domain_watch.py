"""The running server follows the domain's signed configuration: a retracted rule ends.

The guard used to be read once at start, so a rule retracted by the policy key (or a
re-signed domain) kept allowing reads, and the master key, until a restart.
:class:`GuardReloader` watches the files the policy key signs (``domain.sig`` and the
ACL file) by their stat (inode, size, mtime; a few microseconds):

* on each new channel (:meth:`GuardReloader.fresh`, awaited before its first
  request) and every ``interval`` seconds (:meth:`GuardReloader.run`);
* when they changed, the domain is loaded again, every signature checked
  (:meth:`taonet.domain.Domain.load`, in a thread), and its guard replaces the
  server's (``server.guard``); decisions channels remembered were taken under the
  old guard object and are asked again (``_Seen`` keys them on it), and the master
  key's release asks ``server.guard`` each time;
* a configuration for another policy key, or with a serial below the one in force
  (a rollback), is refused and the guard in force kept (``domain_reload_refused``);
  so is one that does not load (half-written, tampered): it is tried again at the
  next change, or once per ``interval``, and logged once per burst.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog
import trio

from taonet import TaoError
from taonet.audit import bounded
from taonet.domain import Domain, Guard
from taonet_services.secret_server._anonymous import Bursts

__all__ = ["GuardReloader"]

log = structlog.get_logger(__name__)

#: Seconds between two looks at the domain's files besides those at new channels.
RELOAD_INTERVAL: Final = 1.0
#: The files whose change means the signed configuration may have changed.
_WATCHED: Final = ("domain.sig", "acls", "domain.toml")

_Stamp = tuple[tuple[int, int, int] | None, ...]


class GuardReloader:
    """Keeps ``set_guard`` fed with the guard of the domain's current signed configuration."""

    def __init__(
        self,
        domain: Domain,
        set_guard: Callable[[Guard], None],
        *,
        interval: float = RELOAD_INTERVAL,
    ) -> None:
        self.path: Final = Path(domain.path)
        self.interval: Final = interval
        self._set_guard = set_guard
        self._policy_cert: Final = domain.policy_cert
        #: The serial of the configuration whose guard is in force.
        self.serial = domain.config_serial
        self._stamp = self._look()
        self._failed: tuple[_Stamp, float] | None = None  # a stamp that did not load, until
        self._lock = trio.Lock()
        self._failing = Bursts("domain_reload_refused", log)

    def _look(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for name in _WATCHED:
            try:
                st = os.stat(self.path / name)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    async def fresh(self) -> None:
        """Reload now if the files changed since the last look (cheap when they did not)."""
        stamp = self._look()
        if stamp == self._stamp:
            return
        failed = self._failed
        if failed is not None and failed[0] == stamp and trio.current_time() < failed[1]:
            return  # files that did not load: tried again once per interval
        await self.reload()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.fresh()

    async def reload(self) -> bool:
        """Load the domain again and swap its guard in; whether a new guard is in force."""
        async with self._lock:
            stamp = self._look()
            if stamp == self._stamp:
                return False  # another task reloaded it meanwhile
            try:
                domain = await trio.to_thread.run_sync(Domain.load, self.path)
            except (TaoError, OSError) as exc:
                self._failing.note(error=bounded(str(exc), 300))
                self._failed = (stamp, trio.current_time() + self.interval)
                return False  # tried again at the next change or tick
            if domain.policy_cert != self._policy_cert:
                self._failing.note(error="signed by another policy key")
                self._stamp = stamp
                return False
            if domain.config_serial < self.serial:
                self._failing.note(
                    error=f"serial {domain.config_serial} below {self.serial} (a rollback)"
                )
                self._stamp = stamp
                return False
            self._stamp = stamp
            if domain.config_serial == self.serial:
                return False  # the same signed configuration, files touched
            self.serial = domain.config_serial
            self._set_guard(domain.guard)
            log.info("domain_reloaded", serial=domain.config_serial)
            return True
