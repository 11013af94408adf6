"""Running services follow the domain's signed configuration: a retracted rule ends.

A service that read the guard once at start kept honouring a rule the policy key had
retracted (and ignored one it had added) until it was restarted. :class:`DomainReloader`
watches the files the policy key signs (``domain.sig``, the ACL file ``acls``,
``domain.toml`` and the manufacturer CA list ``manufacturer_cas.pem``) by their stat
(inode, size, mtime; a few microseconds for the four):

* when the service asks (:meth:`DomainReloader.fresh`: the secret server before each
  new channel's first request, the domain service before each certification) and
  every ``interval`` seconds (:meth:`DomainReloader.run`), when the contents are
  compared as well (a SHA-256 of the three files, in a thread), for a file rewritten
  in place to the same size within the clock step of the last look keeps its stat;
  files that do not load are tried again no more often than once per ``interval``
  (or at their next change), so nothing polls in a loop;
* when they changed, the domain is loaded again, every signature checked
  (:meth:`taonet.domain.Domain.load`, in a thread), and the service is handed the new
  :class:`~taonet.domain.Domain` (``adopt``); a task that asks while a reload runs
  waits for it, so whatever it does next is under the configuration on disk;
* a configuration that does not load (half-written, edited by hand without the policy
  key's signature, tampered), one for another policy key, or one whose serial is below
  the one in force (a rollback) opens nothing: the configuration in force is kept.
  Files that do not load are tried again at their next change, or once per
  ``interval``;
* what happened is reported (``report``, and a log line): every configuration put in
  force (``domain_reloaded``), and every refusal (``domain_reload_refused``) once it
  is settled: a rollback or another policy key at once, files that do not load once
  they have failed for at least ``interval`` (so the moment between the two writes of
  ``taonet domain policy``, whose rules are on disk before their signature, is not
  reported as a failure). Refusals are bounded: the first of a run of failures is
  reported, then at most one every :data:`REPORT_EVERY` seconds, each with the count
  of refusals since the last report; the error text is cut to :data:`MAX_ERROR_CHARS`.
  A configuration that loads again after reported refusals ends the run: the refusals
  not yet reported are, then the outcome (``reloaded``, or ``unchanged`` when the
  files are back to the configuration in force).

The first look loads the domain once (the stamp of the files the service loaded is
not known: they may have changed between its load and the reloader's start).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Literal

import attrs
import structlog
import trio

from taonet import TaoError
from taonet.audit import bounded
from taonet.domain import Domain

__all__ = [
    "MAX_ERROR_CHARS",
    "RELOAD_INTERVAL",
    "REPORT_EVERY",
    "DomainReloader",
    "ReloadReport",
]

log = structlog.get_logger(__name__)

#: Seconds between two looks at the domain's files besides those the service asks for.
RELOAD_INTERVAL: Final = 1.0
#: After the first refusal of a run, at most one report per this many seconds.
REPORT_EVERY: Final = 60.0
#: Longest error text a report carries (the rest is cut with a marker and a digest).
MAX_ERROR_CHARS: Final = 300
#: The files whose change means the signed configuration may have changed.
WATCHED: Final = ("domain.sig", "acls", "domain.toml", "manufacturer_cas.pem")
#: Most bytes of each file the content digest reads (the signed files are a few kB).
_MAX_DIGESTED: Final = 1 << 20

_Stamp = tuple[tuple[int, int, int] | None, ...]

Outcome = Literal["reloaded", "refused", "unchanged"]


@attrs.frozen(kw_only=True)
class ReloadReport:
    """What a look at the domain's files changed (see the module docstring).

    ``outcome``: ``reloaded`` (a new configuration in force), ``refused`` (the files
    opened nothing; the configuration in force kept) or ``unchanged`` (after refusals,
    the files are back to the configuration in force). ``serial``: the serial of the
    configuration in force after it. ``error``: why a refusal (bounded). ``events``:
    the refusals this report stands for (1, or more after a quiet period).
    """

    outcome: Outcome
    serial: int
    error: str | None = None
    events: int = 1
    domain: Domain | None = attrs.field(default=None, eq=False, repr=False)


class DomainReloader:
    """Keeps ``adopt`` fed with the domain's current signed configuration."""

    def __init__(
        self,
        domain: Domain,
        adopt: Callable[[Domain], None],
        *,
        interval: float = RELOAD_INTERVAL,
        report: Callable[[ReloadReport], Awaitable[None]] | None = None,
        report_every: float = REPORT_EVERY,
    ) -> None:
        """``domain`` is the configuration the service runs with now; ``adopt`` is
        called (synchronously, in the reloading task) with each newer one; ``report``
        is awaited with each :class:`ReloadReport` (after the log line)."""
        self.path: Final = Path(domain.path)
        self.interval: Final = interval
        self.report_every: Final = report_every
        self._adopt = adopt
        self._report = report
        self._policy_cert: Final = domain.policy_cert
        #: The serial of the configuration in force.
        self.serial = domain.config_serial
        self._stamp: _Stamp | None = None  # unknown: the first look loads
        self._digest = b""  # of the files' contents when they were last loaded
        self._failed: tuple[_Stamp, float] | None = None  # a stamp that did not load, until
        self._run_start: float | None = None  # first refusal since the last good load
        self._reported: float | None = None  # last report in the run of refusals
        self._unreported = 0
        self._last_error = ""
        self._lock = trio.Lock()
        #: Bumped after each report (for tests and tools that wait on one).
        self.reports = 0
        self._reported_event = trio.Event()

    def look(self) -> _Stamp:
        """The stamp of the watched files (None for one that is missing)."""
        stamps: list[tuple[int, int, int] | None] = []
        for name in WATCHED:
            try:
                st = os.stat(self.path / name)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    async def fresh(self) -> None:
        """Reload now if the files changed since the last look (cheap when they did not)."""
        stamp = self.look()
        if stamp == self._stamp or self._waiting(stamp):
            return
        await self.reload()

    def _waiting(self, stamp: _Stamp) -> bool:
        """Whether ``stamp`` is of files that did not load, not yet due again."""
        failed = self._failed
        return failed is not None and failed[0] == stamp and trio.current_time() < failed[1]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every ``interval`` seconds until cancelled (:meth:`tick`)."""
        task_status.started()
        while True:
            await self.tick()
            await trio.sleep(self.interval)

    async def tick(self) -> None:
        """:meth:`fresh`, and when the stat says nothing changed, compare the contents too.

        A file rewritten in place to the same size within the clock tick of the last
        look keeps its stat (mtimes move in steps of a few milliseconds); its contents
        give it away, read in a thread, once per ``interval``.
        """
        stamp = self.look()
        if stamp != self._stamp:
            await self.fresh()
        elif await trio.to_thread.run_sync(self.digest) != self._digest:
            await self.reload(force=True)

    async def wait_report(self, after: int) -> None:
        """Return once :attr:`reports` is above ``after``."""
        while self.reports <= after:
            await self._reported_event.wait()

    def digest(self) -> bytes:
        """SHA-256 over the watched files' contents (blocking: call it in a thread).

        Only regular files are read (a FIFO is never waited on), each up to
        :data:`_MAX_DIGESTED` bytes; its size stands for the rest.
        """
        h = hashlib.sha256()
        for name in WATCHED:
            try:
                fd = os.open(self.path / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                h.update(b"missing %d\0" % (exc.errno or 0))
                continue
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    h.update(b"not a file %d\0" % st.st_mode)
                    continue
                data = f.read(_MAX_DIGESTED)
            h.update(b"%d %d\0" % (st.st_size, len(data)))
            h.update(data)
        return h.digest()

    def _load(self) -> tuple[bytes, Domain]:
        """The contents' digest, then the domain (in a thread): a change between the two
        is seen at the next look."""
        digest = self.digest()
        return digest, Domain.load(self.path)

    async def reload(self, *, force: bool = False) -> bool:
        """Load the domain again and hand it to ``adopt``; whether a new one is in force.

        Without ``force``, nothing is done when the files' stat did not change since
        the last load, or they are files that did not load and are not yet due again.
        """
        async with self._lock:
            stamp = self.look()
            if not force and (stamp == self._stamp or self._waiting(stamp)):
                return False  # another task reloaded (or tried) it meanwhile
            now = trio.current_time()
            try:
                digest, domain = await trio.to_thread.run_sync(self._load)
            except (TaoError, OSError) as exc:
                failed = self._failed
                settled = (failed is not None and failed[0] == stamp) or (
                    self._run_start is not None and now - self._run_start >= self.interval
                )
                self._failed = (stamp, now + self.interval)
                await self._refused(str(exc), now, settled=settled)
                return False  # tried again at the next change or tick
            self._failed = None
            self._stamp, self._digest = stamp, digest
            if domain.policy_cert != self._policy_cert:
                await self._refused("signed by another policy key", now, settled=True)
                return False
            if domain.config_serial < self.serial:
                error = f"serial {domain.config_serial} below {self.serial} (a rollback)"
                await self._refused(error, now, settled=True)
                return False
            reported = self._reported is not None
            if reported and self._unreported:
                # The refusals counted since the run's last report, before it ends.
                await self._report_refused(self._last_error, now)
            self._run_start = self._reported = None
            self._unreported = 0
            if domain.config_serial == self.serial:
                # The same signed configuration (files touched, or put back as they were).
                if reported:
                    log.info("domain_reload_unchanged", serial=self.serial)
                    await self._tell(ReloadReport(outcome="unchanged", serial=self.serial))
                return False
            self.serial = domain.config_serial
            self._adopt(domain)
            log.info("domain_reloaded", serial=domain.config_serial)
            await self._tell(ReloadReport(outcome="reloaded", serial=self.serial, domain=domain))
            return True

    async def _refused(self, error: str, now: float, *, settled: bool) -> None:
        """Count a refusal; report it if it is settled and the run's bound allows."""
        if self._run_start is None:
            self._run_start = now
        self._unreported += 1
        self._last_error = error = bounded(error, MAX_ERROR_CHARS)
        if not settled:
            return
        if self._reported is not None and now - self._reported < self.report_every:
            return
        await self._report_refused(error, now)

    async def _report_refused(self, error: str, now: float) -> None:
        events, self._unreported, self._reported = self._unreported, 0, now
        log.warning("domain_reload_refused", serial=self.serial, events=events, error=error)
        await self._tell(
            ReloadReport(outcome="refused", serial=self.serial, error=error, events=events)
        )

    async def _tell(self, report: ReloadReport) -> None:
        try:
            if self._report is not None:
                await self._report(report)
        finally:
            self.reports += 1
            self._reported_event.set()
            self._reported_event = trio.Event()
