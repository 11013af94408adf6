"""Revocation that reaches open channels: a domain's current CRL, kept and enforced.

A :class:`CRLSource` holds the newest revocation list of one domain that it has
verified, and enforces it on the Tao channels handed to it (``revocations=`` of
:func:`~taonet.channel.open_channel` and :func:`~taonet.channel.serve_channels`):

* a CRL is taken only when :func:`taonet.certs.verify_crl` accepts it (signed by
  this domain's policy key, inside its update window on the source's clock) and
  its cRLNumber is not below the one held;
* revocation only ever grows: a serial that any verified CRL listed stays revoked.
  A newer CRL that no longer lists a serial the source holds (a domain service
  restored from a backup of its audit log, say) is taken for everything else it
  says, and the dropped serials stay revoked, logged as a warning
  ``crl_dropped_serials``. A CRL numbered below the one held (a service whose
  clock stepped back) is taken only for the serials it adds, never for removals;
  one that adds nothing (a replayed list) is refused with
  :class:`~taonet.AuthenticationError`. An expired CRL held does not block a fresh
  lower-numbered one. The serials kept beyond the current CRL are bounded:
  at most ``MAX_KEPT_SERIALS`` (262,144) for the life of the source, the oldest
  forgotten first (``crl_kept_serials_forgotten``); they are not written to a
  cache, so a restarted program knows only what the current CRL lists;
* :meth:`CRLSource.check`, run on every handshake, refuses a revoked serial and
  fails closed: with no CRL yet, or once the one held is past its nextUpdate, it
  refuses every certificate and says why;
* every channel given to it is tracked while it is open. When a newer CRL lists
  the peer's serial or this program's own, or the CRL held expires without a
  newer one, the channel is closed: its connection is dropped without a TLS
  close_notify, and each later (or blocked) read or write on it raises
  :class:`ChannelRevokedError` naming the serial. It is logged as
  ``channel_revoked`` (peer, serial, reason).

The peer on the other end learns why without anything new on the wire (a Tao
channel stays plain TLS 1.3, as the original CloudProxy peers speak it): it sees a
connection cut without close_notify, and a client stream with ``revocations=``
that sees that asks its own source for a fresh CRL (at most one fetch in flight;
see :meth:`CRLSource.refresh`) and raises :class:`ChannelRevokedError` if its own
or the server's serial is listed there.

:meth:`CRLSource.run` keeps the CRL current when the source has a fetcher (see
:class:`taonet.provision.RevocationWatcher`, which fetches from the domain
service): a refresh every ``refresh_interval`` seconds (default 300, spread by
``jitter``), a long poll that brings a new CRL about a second after it is
published, retries with back-off after failures (logged as ``crl_refresh_failed``,
a line per burst), and, when the CRL held expires, ``crl_expired`` and the sweep
above. The expiry check also wakes every 30 seconds, so a wall clock that jumps past
nextUpdate (a virtual machine resumed after a pause, an NTP step) closes the
channels within that, not when the monotonic wait ends. Without a fetcher,
:meth:`CRLSource.update` feeds it by hand.
"""

from __future__ import annotations

import datetime as _dt
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio

from taonet import certs
from taonet._bursts import Bursts
from taonet._errors import AuthenticationError, ConfigError, TaoError
from taonet._log import bounded, get_logger

if TYPE_CHECKING:
    from taonet.channel._stream import TaoStream

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "DEFAULT_REFRESH_JITTER",
    "CRLSource",
    "ChannelRevokedError",
]

log = get_logger(__name__)

#: Seconds between scheduled CRL refreshes. A revocation reaches servers through the
#: long poll in about a second; the schedule is the floor when that poll is refused
#: or fails: at most five minutes, for one small request per server per five
#: minutes (1000 servers: about 3 a second, each answered from the signed CRL the
#: service keeps), and hundreds of retries before a CRL the domain service signs
#: (valid a day) runs out.
DEFAULT_REFRESH_INTERVAL: Final = 300.0
#: Each scheduled wait is the interval times a random factor in 1 +- this, so that
#: servers started together do not refresh together.
DEFAULT_REFRESH_JITTER: Final = 0.1
# After a failed refresh, retry after this long, doubling up to the interval.
_RETRY_FIRST: Final = 1.0
# A long poll that failed or was refused waits this long, doubling, before the next.
_WATCH_RETRY_FIRST: Final = 1.0
_WATCH_RETRY_MAX: Final = 60.0
# A client stream cut by its server asks for a fresh CRL for at most this long.
_EXPLAIN_TIMEOUT: Final = 5.0
# The expiry check looks at the wall clock at least this often (seconds).
_EXPIRY_RECHECK: Final = 30.0
#: Most serials a source keeps revoked beyond those its current CRL lists (dropped
#: by a newer CRL, or added by a lower-numbered one): about 200,000, what the
#: largest CRL parsed can list, in a few tens of MB at most.
MAX_KEPT_SERIALS: Final = 1 << 18
# Serials named in one log line at most.
_LOGGED_SERIALS: Final = 10

Fetch = Callable[[], Awaitable[bytes]]
Watch = Callable[[int], Awaitable[bytes | None]]
OnRevoked = Callable[["ChannelRevokedError"], None]


class ChannelRevokedError(AuthenticationError, trio.BrokenResourceError):
    """A channel closed because a certificate on it was revoked or can no longer be checked.

    Both an :class:`~taonet.AuthenticationError` and a ``trio.BrokenResourceError``,
    so code written for either catches it. ``serial`` is the certificate's serial
    number; ``own`` is True when it is this program's certificate, False when it is
    the peer's.
    """

    def __init__(self, message: str, *, serial: int, own: bool) -> None:
        super().__init__(message)
        self.serial = serial
        self.own = own


def _iso(ns: int) -> str:
    moment = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
    return moment.isoformat(timespec="seconds")


class CRLSource:
    """A domain's current verified CRL, enforced on channels (see the module docstring).

    ``policy_cert`` is the domain's policy certificate (DER) or its
    :class:`~taonet.certs.PolicyAnchor`. ``clock`` gives the time in ns since the
    epoch against which CRLs are checked. ``fetch`` returns the domain's CRL (DER);
    ``watch(number)`` waits for one newer than ``number`` and returns it, or None
    when its wait ran out. Without ``fetch``, :meth:`run` only watches for expiry.
    """

    def __init__(
        self,
        policy_cert: bytes | certs.PolicyAnchor,
        *,
        fetch: Fetch | None = None,
        watch: Watch | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        jitter: float = DEFAULT_REFRESH_JITTER,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be positive, not {refresh_interval}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be from 0 to below 1, not {jitter}")
        anchor = (
            policy_cert
            if isinstance(policy_cert, certs.PolicyAnchor)
            else certs.PolicyAnchor(policy_cert, now_ns=clock())
        )
        #: The domain's policy certificate, checked: the only signer of CRLs taken.
        self.anchor: Final = anchor
        self.refresh_interval: Final = refresh_interval
        self.jitter: Final = jitter
        self._fetch = fetch
        self._watch = watch
        self._clock = clock
        self._crl: certs.RevocationList | None = None
        self._crl_der: bytes | None = None
        # Serials revoked beyond those the CRL held lists, oldest first (see update).
        self._kept: dict[int, int] = {}
        self._changed = trio.Event()
        self._tracked: weakref.WeakKeyDictionary[TaoStream, OnRevoked | None] = (
            weakref.WeakKeyDictionary()
        )
        self._refresh_lock = trio.Lock()
        self._fetches_started = 0
        self._last_ok_fetch = 0
        self._failing = False
        self._failures: Final = Bursts("crl_refresh_failed", log)

    # -- state ------------------------------------------------------------------------

    @property
    def crl(self) -> certs.RevocationList | None:
        """The CRL held (None before the first one), even if it has expired since."""
        return self._crl

    def _unusable(self) -> str | None:
        """Why no serial can be checked now (None: the CRL held is current)."""
        crl = self._crl
        if crl is None:
            return "no verified CRL from the domain yet"
        if self._clock() > crl.next_update_ns:
            return (
                f"the CRL held (number {crl.number}) expired at"
                f" {_iso(crl.next_update_ns)} and no newer one could be had"
            )
        return None

    @property
    def kept_serials(self) -> frozenset[int]:
        """Serials held revoked that the current CRL does not list (module docstring)."""
        return frozenset(self._kept)

    def _listed(self, serial: int) -> bool:
        crl = self._crl
        return serial in self._kept or (crl is not None and serial in crl)

    def is_revoked(self, serial: int) -> bool:
        """Whether ``serial`` is revoked (listed by the current CRL or kept from an
        earlier one); AuthenticationError if there is no current CRL."""
        unusable = self._unusable()
        if unusable is not None:
            raise AuthenticationError(f"cannot check revocation: {unusable}")
        return self._listed(serial)

    def check(self, serial: int) -> None:
        """Raise AuthenticationError if ``serial`` is revoked or cannot be checked now."""
        unusable = self._unusable()
        if unusable is not None:
            raise AuthenticationError(f"certificate serial {serial} cannot be checked: {unusable}")
        if self.is_revoked(serial):
            assert self._crl is not None
            raise AuthenticationError(
                f"certificate serial {serial} is revoked (CRL number {self._crl.number})"
            )

    async def update(self, crl_der: bytes) -> bool:
        """Take ``crl_der`` if it verifies (see the module docstring for which it takes).

        Returns True if it changed what is revoked or the CRL held (then the channels
        it tracks are checked against it at once), False if it is the one held.
        Raises AuthenticationError (and keeps the CRL held) for a CRL that does not
        verify, or that is numbered below the one held and revokes nothing new.
        """
        crl = certs.verify_crl(self.anchor, crl_der, now_ns=self._clock())
        held = self._crl
        if held is not None and crl.number <= held.number:
            if crl.number < held.number and self._clock() > held.next_update_ns:
                pass  # an expired list must not block a fresh one: take it below
            else:
                await trio.lowlevel.checkpoint()
                return await self._add_only(crl, held)
        if held is not None:
            dropped = [s for s in held.serials if s not in crl.serials]
            if dropped:
                log.warning(
                    "crl_dropped_serials",
                    number=crl.number,
                    previous=held.number,
                    dropped=len(dropped),
                    serials=sorted(dropped)[:_LOGGED_SERIALS],
                    reason="a newer CRL no longer lists serials an earlier one revoked"
                    " (a domain service restored from a backup?); they stay revoked",
                )
                for serial in dropped:
                    self._kept[serial] = held.number
        for serial in crl.serials & self._kept.keys():
            del self._kept[serial]
        self._forget_over_bound()
        self._crl = crl
        self._crl_der = crl_der
        log.info(
            "crl_updated",
            number=crl.number,
            revoked=len(crl) + len(self._kept),
            next_update=_iso(crl.next_update_ns),
        )
        self._changed.set()
        self._changed = trio.Event()
        await self.sweep()
        return True

    async def _add_only(self, crl: certs.RevocationList, held: certs.RevocationList) -> bool:
        """A CRL numbered at or below the one held: take the serials it adds, nothing else."""
        added = [s for s in crl.serials if s not in held.serials and s not in self._kept]
        if not added:
            if crl.number == held.number:
                return False
            raise AuthenticationError(
                f"refused a CRL older than the one held (number {crl.number} < {held.number})"
                " that revokes nothing the held one does not: a replayed list, or a domain"
                " service whose clock or audit log went back"
            )
        for serial in added:
            self._kept[serial] = crl.number
        self._forget_over_bound()
        log.warning(
            "crl_serials_added_from_older_crl",
            number=crl.number,
            held=held.number,
            added=len(added),
            serials=sorted(added)[:_LOGGED_SERIALS],
            reason="a CRL numbered below the one held revokes more (the domain service's"
            " clock stepped back?): its additions are taken, the held CRL kept",
        )
        self._changed.set()
        self._changed = trio.Event()
        await self.sweep()
        return True

    def _forget_over_bound(self) -> None:
        over = len(self._kept) - MAX_KEPT_SERIALS
        if over > 0:
            forgotten = list(self._kept)[:over]
            for serial in forgotten:
                del self._kept[serial]
            log.warning(
                "crl_kept_serials_forgotten",
                forgotten=over,
                serials=forgotten[:_LOGGED_SERIALS],
                limit=MAX_KEPT_SERIALS,
            )

    # -- channels -----------------------------------------------------------------------

    def _problem(self, stream: TaoStream) -> ChannelRevokedError | None:
        """Why ``stream`` must close now (None: it may stay open)."""
        peer = stream.peer.certificate
        local = stream._local
        crl = self._crl
        if crl is not None:
            if peer is not None and self._listed(peer.serial):
                return ChannelRevokedError(
                    f"the peer's certificate (serial {peer.serial}) was revoked"
                    f" (CRL number {crl.number})",
                    serial=peer.serial,
                    own=False,
                )
            if local is not None and self._listed(local.serial):
                return ChannelRevokedError(
                    f"this program's certificate (serial {local.serial}) was revoked"
                    f" (CRL number {crl.number})",
                    serial=local.serial,
                    own=True,
                )
        unusable = self._unusable()
        if unusable is not None and peer is not None:
            return ChannelRevokedError(
                f"the peer's certificate (serial {peer.serial}) can no longer be checked:"
                f" {unusable}",
                serial=peer.serial,
                own=False,
            )
        return None

    async def _track(self, stream: TaoStream, on_revoked: OnRevoked | None = None) -> None:
        """Enforce this source on ``stream`` until it is untracked (or collected).

        ``on_revoked`` is called when it is closed for a revocation (by default that
        is logged as ``channel_revoked``). A stream already revoked is closed now.
        """
        self._tracked[stream] = on_revoked
        problem = self._problem(stream)
        if problem is not None:
            await self._revoke(stream, problem)

    def _untrack(self, stream: TaoStream) -> None:
        self._tracked.pop(stream, None)

    async def sweep(self) -> int:
        """Close every tracked channel the CRL held no longer allows; returns how many."""
        closed = 0
        for stream in list(self._tracked.keys()):
            if stream not in self._tracked:
                continue  # closed meanwhile (by another sweep, say)
            problem = self._problem(stream)
            if problem is not None:
                await self._revoke(stream, problem)
                closed += 1
        return closed

    async def _revoke(self, stream: TaoStream, error: ChannelRevokedError) -> None:
        on_revoked = self._tracked.pop(stream, None)
        await stream._revoke(error)
        if on_revoked is not None:
            on_revoked(error)
        else:
            log.warning(
                "channel_revoked",
                peer=bounded(str(stream.peer)),
                serial=error.serial,
                side="server" if stream.server_side else "client",
                reason=bounded(str(error), 1024),
            )

    async def _explain(self, stream: TaoStream, *, fetch: bool) -> ChannelRevokedError | None:
        """Why ``stream``'s peer cut it: a revocation, if the CRL (a fresh one with
        ``fetch``) says so."""
        problem = self._problem(stream)
        if problem is None and fetch and self._fetch is not None:
            with trio.move_on_after(_EXPLAIN_TIMEOUT):
                try:
                    await self.refresh()
                except TaoError as exc:
                    self._failures.note(via="explain", reason=str(exc)[:300])
            problem = self._problem(stream)
        else:
            await trio.lowlevel.checkpoint()
        if problem is not None:
            self._tracked.pop(stream, None)
        return problem

    # -- keeping the CRL current ------------------------------------------------------------

    async def refresh(self) -> bool:
        """Fetch the CRL now and take it (see :meth:`update`); True if it was newer.

        Callers that arrive while a fetch is under way wait for the next one to
        finish (one that started after they asked) rather than starting their own.
        Raises what the fetch raised (a :class:`~taonet.TaoError`) or what
        :meth:`update` raised; ConfigError for a source without a fetcher.
        """
        if self._fetch is None:
            raise ConfigError("this CRLSource has no fetcher: feed it with update()")
        wanted = self._fetches_started + 1
        async with self._refresh_lock:
            if self._last_ok_fetch >= wanted:
                return False
            self._fetches_started += 1
            number = self._fetches_started
            der = await self._fetch()
            changed = await self.update(der)
            self._last_ok_fetch = number
            return changed

    async def _refresh_logged(self, *, via: str) -> bool:
        """Refresh; log a failure (a line per burst) and return whether it worked."""
        try:
            await self.refresh()
        except TaoError as exc:
            self._failing = True
            crl = self._crl
            self._failures.note(
                via=via,
                reason=str(exc)[:300],
                held=None if crl is None else crl.number,
                held_until=None if crl is None else _iso(crl.next_update_ns),
            )
            return False
        if self._failing:
            self._failing = False
            log.info("crl_refresh_recovered", via=via)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the CRL current until cancelled (Trio's start protocol).

        With a fetcher, one refresh is tried before ``task_status.started()`` (a
        failure is logged, and until a CRL arrives every certificate is refused);
        then the schedule, the long poll (with a watcher) and the expiry check run.
        """
        if self._fetch is not None:
            await self._refresh_logged(via="start")
        async with trio.open_nursery() as nursery:
            if self._fetch is not None:
                nursery.start_soon(self._schedule)
            if self._watch is not None:
                nursery.start_soon(self._long_poll, self._watch)
            nursery.start_soon(self._expiry)
            task_status.started()

    def _interval(self) -> float:
        return self.refresh_interval * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311

    async def _schedule(self) -> None:
        retry = _RETRY_FIRST
        ok = self._crl is not None
        while True:
            if ok:
                retry = _RETRY_FIRST
                await trio.sleep(self._interval())
            else:
                await trio.sleep(min(retry, self._interval()))
                retry = min(retry * 2, self.refresh_interval)
            ok = await self._refresh_logged(via="schedule")

    async def _long_poll(self, watch: Watch) -> None:
        retry = _WATCH_RETRY_FIRST
        while True:
            known = self._crl.number if self._crl is not None else 0
            try:
                der = await watch(known)
                changed = der is not None and await self.update(der)
            except TaoError as exc:
                self._failures.note(via="watch", reason=str(exc)[:300])
                await trio.sleep(retry * random.uniform(1, 1.5))  # noqa: S311
                retry = min(retry * 2, _WATCH_RETRY_MAX)
                continue
            if der is not None and not changed:
                # A watch answers with a newer CRL or not at all: one that did not
                # change anything is a service out of step. Do not spin on it.
                await trio.sleep(retry)
                retry = min(retry * 2, _WATCH_RETRY_MAX)
            else:
                retry = _WATCH_RETRY_FIRST

    async def _expiry(self) -> None:
        while True:
            changed = self._changed
            crl = self._crl
            if crl is None:
                await changed.wait()
                continue
            remaining = crl.next_update_ns - self._clock()
            if remaining >= 0:
                # Also wakes on a schedule: the wall clock may jump past nextUpdate
                # while the monotonic clock this waits on does not.
                with trio.move_on_after(min(remaining / 1e9 + 0.01, _EXPIRY_RECHECK)):
                    await changed.wait()
                continue
            closed = await self.sweep()
            log.error(
                "crl_expired",
                number=crl.number,
                next_update=_iso(crl.next_update_ns),
                closed=closed,
                reason="cannot check revocation: refusing certificates until a fresh CRL arrives",
            )
            await changed.wait()
