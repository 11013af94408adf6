"""``DomainService.WatchCRL``: a long poll that brings a new CRL to servers in about a second.

A server that watches sends the cRLNumber it holds; :class:`CRLWatches` answers
with the current CRL as soon as its number is larger (at once if it is already),
or with an answer that carries no CRL after ``timeout`` seconds (default
:data:`taonet.provision.WATCH_TIMEOUT`, 20 s), and the server asks again.

Revocations are written into the audit log by another process (``taonet domain
revoke``), so while any watch waits, the service rereads the revoked serials every
``poll_interval`` seconds (default 0.5: one indexed SQLite query, and a CRL signed
only when they changed); a revocation reaches the waiting watches within that.

Each watch holds a connection and a task for up to ``timeout``, so they are
bounded: ``max_total`` in all (default 512, half the channel server's default
connection cap, so watches cannot crowd out certificate requests). A watch from a
program that presented its certificate counts against that program (at most
``max_per_principal`` at once, default 4), wherever it comes from, so any number
of servers behind one address (a host, a NAT) each hold their own. An anonymous
watch counts against its address (IPv4 address or IPv6 /64: at most
``max_per_address``, default 8) and against the anonymous share
(``max_anonymous``, default 384), so anonymous clients from any number of
addresses leave the rest (128 by default) to certified servers. A watch over a
bound is answered at once with ``too_many_watches`` (logged once per burst as
``crl_watch_refused``); the server then relies on its scheduled refresh.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
import trio

from taonet import CodecError, certs
from taonet.provision import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_TOO_MANY_WATCHES,
    WATCH_TIMEOUT,
    decode_crl_number,
)
from taonet.wire import message_class

__all__ = [
    "DEFAULT_MAX_ANONYMOUS_WATCHES",
    "DEFAULT_MAX_WATCHES",
    "DEFAULT_MAX_WATCHES_PER_ADDRESS",
    "DEFAULT_MAX_WATCHES_PER_PRINCIPAL",
    "DEFAULT_WATCH_POLL_INTERVAL",
    "CRLWatches",
]

log = structlog.get_logger(__name__)

#: Watches held at once from one client address (IPv6: one /64).
DEFAULT_MAX_WATCHES_PER_ADDRESS: Final = 8
#: Watches held at once in all.
DEFAULT_MAX_WATCHES: Final = 512
#: Anonymous watches held at once (the rest of ``max_total`` is for certified servers).
DEFAULT_MAX_ANONYMOUS_WATCHES: Final = 384
#: Watches held at once by one certified program.
DEFAULT_MAX_WATCHES_PER_PRINCIPAL: Final = 4
#: Seconds between rereads of the revoked serials while a watch waits.
DEFAULT_WATCH_POLL_INTERVAL: Final = 0.5
# Without a reread for this long, the next watch rereads first (the poller sleeps
# while nobody watches).
_STALE_AFTER: Final = 1.0


class _Bursts:
    """One warning when refusals start (after 10 s without one), then one a minute."""

    def __init__(self, event: str = "crl_watch_refused") -> None:
        self.event = event
        self.last = -1e18
        self.logged = -1e18
        self.since = 0

    def note(self, **fields: Any) -> None:
        now = trio.current_time()
        self.since += 1
        if now - self.last >= 10 or now - self.logged >= 60:
            log.warning(self.event, events=self.since, **fields)
            self.logged, self.since = now, 0
        self.last = now


class CRLWatches:
    """The watches waiting for a newer CRL, and the poller that wakes them."""

    def __init__(
        self,
        current_crl: Callable[[], Awaitable[bytes]],
        anchor: certs.PolicyAnchor,
        *,
        timeout: float = WATCH_TIMEOUT,
        poll_interval: float = DEFAULT_WATCH_POLL_INTERVAL,
        max_per_address: int = DEFAULT_MAX_WATCHES_PER_ADDRESS,
        max_total: int = DEFAULT_MAX_WATCHES,
        max_anonymous: int = DEFAULT_MAX_ANONYMOUS_WATCHES,
        max_per_principal: int = DEFAULT_MAX_WATCHES_PER_PRINCIPAL,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``max_anonymous`` above ``max_total`` counts as ``max_total``."""
        for name, value in (
            ("max_per_address", max_per_address),
            ("max_total", max_total),
            ("max_anonymous", max_anonymous),
            ("max_per_principal", max_per_principal),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if not (timeout > 0 and poll_interval > 0):
            raise ValueError("timeout and poll_interval must be positive")
        self._current_crl = current_crl
        self._anchor = anchor
        self._clock = clock
        self.timeout: Final = timeout
        self.poll_interval: Final = poll_interval
        self.max_per_address: Final = max_per_address
        self.max_total: Final = max_total
        self.max_anonymous: Final = min(max_anonymous, max_total)
        self.max_per_principal: Final = max_per_principal
        self._per_client: dict[tuple[str, str], int] = {}
        self._total = 0
        self._anonymous = 0
        self._published: tuple[int, bytes] | None = None
        self._published_at = -1e18
        self._changed = trio.Event()
        self._someone_waits = trio.Event()
        self._refused = _Bursts()

    @property
    def waiting(self) -> int:
        """Watches held now."""
        return self._total

    async def publish(self) -> tuple[int, bytes]:
        """Reread the revocations; wake the watches if the CRL changed. Returns it."""
        der = await self._current_crl()
        number = certs.verify_crl(self._anchor, der, now_ns=self._clock()).number
        self._published_at = trio.current_time()
        if self._published is None or number != self._published[0]:
            self._published = (number, der)
            self._changed.set()
            self._changed = trio.Event()
        return self._published

    async def answer(self, request: Any, client: str, *, certified: bool = False) -> Any:
        """The answer to one WatchCRL request (see the module docstring).

        ``client`` is what the watch counts against: the program's principal (or a
        key naming it) when ``certified``, the client's address otherwise.
        """
        try:
            known = decode_crl_number(bytes(request.known_crl_number))
        except CodecError as exc:
            return _error(ERROR_BAD_REQUEST, str(exc))
        key = ("p", client) if certified else ("a", client)
        held = self._per_client.get(key, 0)
        over = (
            held >= self.max_per_principal
            if certified
            else held >= self.max_per_address or self._anonymous >= self.max_anonymous
        )
        if self._total >= self.max_total or over:
            self._refused.note(
                client=client[:64],
                certified=certified,
                held=held,
                total=self._total,
                anonymous=self._anonymous,
            )
            await trio.lowlevel.checkpoint()
            return _error(
                ERROR_TOO_MANY_WATCHES,
                "too many CRL watches from this program, this address or in all;"
                " fetch the CRL on a schedule",
            )
        self._per_client[key] = held + 1
        self._total += 1
        if not certified:
            self._anonymous += 1
        self._someone_waits.set()
        try:
            with trio.move_on_after(self.timeout):
                while True:
                    changed = self._changed
                    if (
                        self._published is None
                        or trio.current_time() - self._published_at > _STALE_AFTER
                    ):
                        try:
                            await self.publish()
                        except Exception:  # the audit log failed: say so, keep serving
                            log.exception("crl_publish_failed")
                            return _error(ERROR_INTERNAL, "the CRL could not be read")
                    assert self._published is not None
                    number, der = self._published
                    if number > known:
                        return message_class("DomainServiceResponse")(crl=der)
                    await changed.wait()
            return message_class("DomainServiceResponse")()
        finally:
            self._total -= 1
            if not certified:
                self._anonymous -= 1
            left = self._per_client[key] - 1
            if left:
                self._per_client[key] = left
            else:
                del self._per_client[key]
            if not self._total:
                self._someone_waits = trio.Event()

    async def run(self) -> None:
        """Reread the revocations every ``poll_interval`` while a watch waits (forever)."""
        while True:
            await self._someone_waits.wait()
            await trio.sleep(self.poll_interval)
            if self._total:
                try:
                    await self.publish()
                except Exception:  # the audit log failed: say so, keep serving
                    log.exception("crl_publish_failed")


def _error(code: str, reason: str) -> Any:
    return message_class("DomainServiceResponse")(error_code=code, reason=reason[:1000])
