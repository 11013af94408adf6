"""Keeping a domain's CRL current from its domain service: :class:`RevocationWatcher`.

A :class:`RevocationWatcher` is a :class:`taonet.channel.CRLSource` that fetches
from the domain service: ``DomainService.GetCRL`` on a schedule and on demand, and
the long poll ``DomainService.WatchCRL``. A watch sends the cRLNumber the client
holds (``known_crl_number``, unsigned big-endian, at most 20 bytes); the service
answers with its CRL as soon as it has one with a larger number (at once if it
has one already), or with an answer without a CRL after :data:`WATCH_TIMEOUT`
seconds, and the client asks again. A service holds only so many watches at once
from one address and in all; over that it answers ``too_many_watches`` at once,
and the watcher falls back on its schedule for a while.

Every CRL from the service is verified against the policy certificate before it
is taken, a lower-numbered one only for the serials it adds, and no serial a
verified CRL listed is ever un-revoked (see :class:`~taonet.channel.CRLSource`):
the service is trusted to be available, not to be honest.

Given the program's own identity (``identity=``, :meth:`RevocationWatcher.use_identity`,
or :func:`~taonet.provision.load_or_provision`, which sets it), the watcher asks
the domain service as that program: the service keeps a share of its connections
and watches for certified programs, so anonymous clients cannot crowd it out.

With ``cache``, the watcher writes each CRL it takes to that file (atomically) and
reads it back when it starts, before it asks the service: a program restarted
while the domain service is down still has the last CRL until that CRL's
nextUpdate. What is read back is verified like anything from the service (an
expired or foreign file is logged and ignored); whoever can replace the file can
at most hand a restarted program an older CRL of this domain, still within its
nextUpdate, until the service answers. Cache writes happen one at a time and only
for the CRL still held, so the file never falls behind memory. Serials kept only
in memory (dropped by a newer CRL) are not cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from taonet._errors import AuthenticationError, CodecError, ConfigError, ProtocolError
from taonet._files import atomic_write, read_file
from taonet._log import get_logger
from taonet.certs import MAX_CRL_BYTES
from taonet.channel import (
    DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REFRESH_JITTER,
    ChannelIdentity,
    CRLSource,
)
from taonet.provision._client import OP_GET_CRL, _anonymous, _exchange
from taonet.wire import message_class

__all__ = [
    "ERROR_TOO_MANY_WATCHES",
    "OP_WATCH_CRL",
    "WATCH_TIMEOUT",
    "RevocationWatcher",
    "watch_crl",
]

#: The domain service's long poll for a newer CRL.
OP_WATCH_CRL: Final = "DomainService.WatchCRL"
#: The longest a domain service holds a watch before answering "nothing newer".
WATCH_TIMEOUT: Final = 20.0
#: A watch the service will not hold: too many from this address or in all.
ERROR_TOO_MANY_WATCHES: Final = "too_many_watches"
_MAX_NUMBER_BYTES: Final = 20

log = get_logger(__name__)


def encode_crl_number(number: int) -> bytes:
    """A cRLNumber as ``known_crl_number`` carries it (0 to 2**160 - 1)."""
    if not 0 <= number < 1 << (8 * _MAX_NUMBER_BYTES):
        raise ValueError(f"a CRL number is from 0 to 2**160 - 1, not {number}")
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")


def decode_crl_number(data: bytes) -> int:
    """``known_crl_number`` back to a number; CodecError if it is over 20 bytes."""
    if len(data) > _MAX_NUMBER_BYTES:
        raise CodecError(f"known_crl_number is {len(data)} bytes, over {_MAX_NUMBER_BYTES}")
    return int.from_bytes(data, "big")


async def fetch_crl_der(
    host: str, port: int, policy_cert: bytes, *, identity: ChannelIdentity | None = None
) -> bytes:
    """The domain's CRL as the service sent it (DER, not yet verified).

    With ``identity`` (the program's own, certified by this domain) the request is
    made as that program, which the service serves from slots anonymous clients
    cannot take; without it, anonymously.
    """
    request = message_class("DomainServiceRequest")(kind="crl")
    who = identity if identity is not None else _anonymous(policy_cert)
    response = await _exchange(host, port, who, OP_GET_CRL, request)
    if not response.HasField("crl"):
        raise ProtocolError("the domain service answered without a CRL")
    return bytes(response.crl)


async def watch_crl(
    host: str,
    port: int,
    policy_cert: bytes,
    known: int,
    *,
    identity: ChannelIdentity | None = None,
) -> bytes | None:
    """Wait for a CRL with a number above ``known``: its DER (unverified), or None.

    None when the service's wait (:data:`WATCH_TIMEOUT`) ran out with nothing
    newer. DomainServiceError ``too_many_watches`` when the service holds too many
    watches already; the errors of :func:`~taonet.provision.fetch_crl` otherwise.
    ``identity`` as for :func:`fetch_crl_der` (certified watches are counted per
    program, anonymous ones per address).
    """
    request = message_class("DomainServiceRequest")(
        kind="watch_crl", known_crl_number=encode_crl_number(known)
    )
    who = identity if identity is not None else _anonymous(policy_cert)
    response = await _exchange(host, port, who, OP_WATCH_CRL, request)
    return bytes(response.crl) if response.HasField("crl") else None


class RevocationWatcher(CRLSource):
    """A :class:`~taonet.channel.CRLSource` kept current from a domain service.

    ``domain_service`` is its ``(host, port)``. Start it with ``await
    nursery.start(watcher.run)`` (one refresh is tried first) and give it as
    ``revocations=`` to :func:`~taonet.channel.serve_channels`,
    :func:`~taonet.channel.open_channel` and
    :func:`~taonet.provision.load_or_provision`. It refreshes every
    ``refresh_interval`` seconds (with ``jitter``), on :meth:`refresh`, and, unless
    ``watch`` is False, as soon as the service publishes a newer CRL (the long
    poll, module docstring). With ``cache`` (a file path), the CRL held survives a
    restart (module docstring).

    ``identity`` is the program's own (see :meth:`use_identity`): with it, the
    watcher asks the domain service as that program, in the share of the service's
    connections and watches that anonymous clients cannot take, so a flood of
    anonymous connections does not keep revocations from it. Without one it asks
    anonymously; :func:`~taonet.provision.load_or_provision` gives it the program's
    identity once it has one.
    """

    def __init__(
        self,
        policy_cert: bytes,
        domain_service: tuple[str, int],
        *,
        identity: ChannelIdentity | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        jitter: float = DEFAULT_REFRESH_JITTER,
        watch: bool = True,
        cache: str | os.PathLike[str] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        host, port = domain_service
        self.domain_service: Final = (host, port)
        #: Where the CRL held is kept across restarts (None: nowhere).
        self.cache: Final = Path(cache) if cache is not None else None
        self._cache_lock = trio.Lock()

        self._identity: ChannelIdentity | None = None

        async def fetch() -> bytes:
            return await fetch_crl_der(host, port, policy_cert, identity=self._identity)

        async def long_poll(known: int) -> bytes | None:
            return await watch_crl(host, port, policy_cert, known, identity=self._identity)

        super().__init__(
            policy_cert,
            fetch=fetch,
            watch=long_poll if watch else None,
            refresh_interval=refresh_interval,
            jitter=jitter,
            clock=clock,
        )
        if identity is not None:
            self.use_identity(identity)

    @property
    def identity(self) -> ChannelIdentity | None:
        """The identity the watcher asks the domain service as (None: anonymously)."""
        return self._identity

    def use_identity(self, identity: ChannelIdentity | None) -> None:
        """Ask the domain service as ``identity`` from now on (None: anonymously).

        ValueError for an identity without a certificate or of another domain.
        """
        if identity is not None:
            if identity.certificate is None:
                raise ValueError("an anonymous identity: pass None to ask anonymously")
            if identity.anchor.public_key_der != self.anchor.public_key_der:
                raise ValueError("the identity belongs to another domain")
        self._identity = identity

    async def update(self, crl_der: bytes) -> bool:
        """Take ``crl_der`` as :meth:`CRLSource.update` does; write it to the cache if taken.

        Cache writes are one at a time, and one whose CRL is no longer the one held
        (a newer one was taken meanwhile) is skipped, so the file never goes back to
        an older CRL than memory holds.
        """
        changed = await super().update(crl_der)
        if changed and self.cache is not None:
            cache = self.cache
            async with self._cache_lock:
                if self._crl_der != crl_der:
                    return changed  # a newer CRL was taken (and written) meanwhile
                try:
                    await trio.to_thread.run_sync(lambda: atomic_write(cache, crl_der, mode=0o644))
                except (OSError, ConfigError) as exc:
                    log.warning("crl_cache_failed", path=str(cache), reason=str(exc)[:300])
        return changed

    async def load_cache(self) -> bool:
        """Take the cached CRL, if there is one that verifies; True if it was taken."""
        cache = self.cache
        if cache is None or self.crl is not None:
            await trio.lowlevel.checkpoint()
            return False
        try:
            der = await trio.to_thread.run_sync(lambda: read_file(cache, limit=MAX_CRL_BYTES))
        except ConfigError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                log.warning("crl_cache_unreadable", path=str(cache), reason=str(exc)[:300])
            return False
        try:
            return await CRLSource.update(self, der)
        except AuthenticationError as exc:
            log.warning("crl_cache_refused", path=str(cache), reason=str(exc)[:300])
            return False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the cache (if any), then keep the CRL current (see :meth:`CRLSource.run`)."""
        await self.load_cache()
        await super().run(task_status=task_status)
