"""A root Linux host on a TPM 2.0: the TPM host opened in-process, the Linux host on it.

A root host with ``root_tao = "tpm2"`` in ``host.toml`` has no keyset of its own under
a password. Its directory holds the TPM 2.0 host's state in ``tpm2/`` (see
:class:`taonet.hosts.tpm2.Tpm2Host`: the quote key's blobs, the PCR list, the tcti,
the quote-key certificate once certified), and when it opens, it opens that
:class:`~taonet.hosts.tpm2.Tpm2Host` in this process and runs *stacked* on it
(:func:`taonet.hosts.linux._stacked.open_stacked`): its keyset is sealed by the TPM to
the PCR values, its counter table protected by the TPM's NV counters, and its name is
the TPM host's, ``tpm2([sha256 of the quote key]).PCRs("nums", "hexvals")``. Its
programs' attestations chain to the TPM's quote: the domain accepts them once the
quote service has certified the quote key, and its policy trusts the host's PCR
values (``taonet domain policy --add-host``).

The TPM's delegation ``key(host key) speaksfor tpm2([q]).PCRs(...)`` is valid
:data:`TPM2_DELEGATION_VALIDITY_NS` (a week), not a year: while the host runs,
:func:`keep_tpm2_delegation_fresh` has the TPM quote it again every half of that. A
TPM whose PCRs no longer match the name (a PCR extended after the start) refuses to
quote: the refresh is logged as an error and retried, and the host's attestations, and
the program certificates a domain issues from them (never valid past the delegation),
stop validating when the last good delegation expires.

The TPM host is closed when the Linux host is (:meth:`LinuxHost.aclose`, or the end of
:meth:`LinuxHost.run`). ``taonet.hosts.tpm2`` (the ``tpm2`` extra) is imported only
here, only for such a host.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from taonet import auth
from taonet._errors import ConfigError, TaoError
from taonet._log import get_logger
from taonet.attestation.tpm2 import DEFAULT_PCRS
from taonet.hosts._counters import CounterStore
from taonet.hosts._soft import SoftHost
from taonet.hosts.linux._config import TPM2_DIR, LinuxHostConfig
from taonet.hosts.linux._stacked import open_stacked, renew_delegation

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Tpm2Host

__all__ = [
    "TPM2_DELEGATION_VALIDITY_NS",
    "certify_tpm2_root",
    "create_tpm2_root",
    "keep_tpm2_delegation_fresh",
    "open_tpm2_root",
    "open_tpm2_state",
    "refresh_tpm2_delegation",
]

log = get_logger(__name__)

#: How long the TPM's delegation of a Linux host on a TPM root is valid (ns).
#: A week: a PCR changed after the start stops being believed within a week, and a
#: program certificate from a TPM-rooted chain (never valid past the delegation) lasts
#: a week, so a long-running program re-provisions (restarts) at least that often.
TPM2_DELEGATION_VALIDITY_NS: Final = 7 * 24 * 3600 * 1_000_000_000


def tpm2_dir(path: Path) -> Path:
    """The TPM 2.0 host's state directory in a root host's directory."""
    return path / TPM2_DIR


async def create_tpm2_root(
    path: Path, *, tcti: str, pcrs: Sequence[int] | None = None
) -> auth.Prin:
    """Create the TPM 2.0 host's state in ``path`` (its quote key, made by the TPM);
    returns its name, ``tpm2([...]).PCRs(...)`` with the PCR values now."""
    from taonet.hosts.tpm2 import Tpm2Host

    state = tpm2_dir(path)
    if await trio.Path(state).exists():
        raise ConfigError(f"{state} already holds a TPM host")
    numbers = DEFAULT_PCRS if pcrs is None else tuple(pcrs)
    await trio.to_thread.run_sync(
        functools.partial(Tpm2Host.create, state, tcti=tcti, pcrs=numbers)
    )
    async with await Tpm2Host.open(state) as host:
        return host.name


async def open_tpm2_state(path: Path) -> Tpm2Host:
    """Open the TPM 2.0 host of the root host in ``path`` (close it with ``aclose``)."""
    from taonet.hosts.tpm2 import Tpm2Host

    state = tpm2_dir(path)
    if not await trio.Path(state).is_dir():
        raise ConfigError(f"{path}: no TPM host state in {state} (made by taonet host init --tpm2)")
    return await Tpm2Host.open(state)


async def certify_tpm2_root(path: Path, quote_service: str) -> auth.Prin:
    """Have the quote service at ``quote_service`` (``HOST:PORT``) of the host's domain
    (the one ``host.toml`` pins, checked as signed) certify the TPM's quote key; the
    certificate is kept in the TPM host's state. Returns its name."""
    config = await trio.to_thread.run_sync(LinuxHostConfig.load, path)
    if config.domain is None:
        raise ConfigError(f"{path}: a host without a domain has no quote service to certify it")
    domain = await trio.to_thread.run_sync(config.load_domain)  # the pinned one, as signed
    tpm = await open_tpm2_state(path)
    try:
        await tpm.certify(quote_service, policy_cert=domain.policy_cert)
        log.info("tpm2_root_certified", name=str(tpm.name), quote_service=quote_service)
        return tpm.name
    finally:
        await tpm.aclose()


async def open_tpm2_root(
    path: Path,
    clock: Callable[[], int],
    *,
    delegation_validity_ns: int = TPM2_DELEGATION_VALIDITY_NS,
) -> tuple[Tpm2Host, SoftHost, CounterStore]:
    """The TPM host, and the Linux host's key core and counters stacked on it (the
    TPM's delegation valid ``delegation_validity_ns`` from now).

    :class:`~taonet.HostError` if the TPM will not unseal the host's keys (other PCR
    values than when they were sealed: another boot) or its counters are missing; the
    TPM host is closed again on any failure.
    """
    tpm = await open_tpm2_state(path)
    if tpm.root_endorsement is None:
        log.warning(
            "tpm2_quote_key_uncertified",
            name=str(tpm.name)[:200],
            note="no domain accepts this host's attestations until the quote service "
            "certifies its quote key: taonet host certify --quote-service HOST:PORT",
        )
    try:
        core, counters = await open_stacked(
            path, tpm.tao(), clock, delegation_validity_ns=delegation_validity_ns
        )
    except BaseException:
        await tpm.aclose()
        raise
    return tpm, core, counters


async def refresh_tpm2_delegation(
    tpm: Tpm2Host, core: SoftHost, clock: Callable[[], int], validity_ns: int
) -> bool:
    """Have the TPM quote ``core``'s delegation again (valid ``validity_ns`` from now)
    and carry it. False, logged as an error, when the TPM refuses (its PCRs no longer
    match the host's name) or fails: the current delegation stays, to expire."""
    failure: TaoError | None = None
    try:
        expiration = await renew_delegation(core, tpm.tao(), clock, validity_ns)
    except TaoError as exc:
        failure = exc
    if failure is not None:
        current = core.delegation
        expires = None if current is None else current.statement().expiration
        log.error(
            "tpm2_delegation_refresh_failed",
            name=str(core.name)[:200],
            error=str(failure)[:300],
            expires_ns=expires,
            note="the host's attestations stop validating when its delegation expires; "
            "if its PCRs changed, restart it (and trust the new state) once checked",
        )
        return False
    log.info("tpm2_delegation_refreshed", name=str(core.name)[:200], expires_ns=expiration)
    return True


async def keep_tpm2_delegation_fresh(
    refresh: Callable[[], Awaitable[bool]], validity_ns: int
) -> None:
    """Run ``refresh`` every half of ``validity_ns``, or every twelfth of it after a
    failure (a transient TPM error gets several tries before the delegation expires);
    until cancelled."""
    interval = validity_ns / 2 / 1e9
    retry = validity_ns / 12 / 1e9
    wait = interval
    while True:
        await trio.sleep(wait)
        wait = interval if await refresh() else retry
