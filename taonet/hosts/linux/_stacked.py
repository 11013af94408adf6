"""Opening a stacked host's keys and counters through its parent Tao.

A stacked host's keyset is sealed by its parent (``keys.sealed``): only the same host
binary on the same parent opens it. At every start the parent attests
``key(host key) speaksfor <the host's name>``, the delegation every attestation of
the host carries: valid one year by default, or ``delegation_validity_ns`` (a host on a
TPM root: a week, renewed by :func:`renew_delegation` while the host runs, so a host
whose PCRs changed stops being believed within a week). Its counter table is sealed with
the parent's rollback-protected sealing, so restoring an older table file is detected.

Fail closed, and write nothing until the start has succeeded: a parent without
counters (one that answers the counter methods with NotSupportedError) or one that will
not unseal the host's keys is a :class:`~taonet.HostError` that says so, raised
before anything is written; the first start writes ``keys.sealed`` only once the
parent has sealed the keys, attested for them and opened the counter table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import trio

from taonet import auth
from taonet._errors import HostError, NotSupportedError
from taonet._files import atomic_write, read_file
from taonet._log import get_logger
from taonet.attestation import Attestation
from taonet.crypto import Keyset
from taonet.hosts._counters import CounterStore, ParentTableSealer
from taonet.hosts._soft import SoftHost
from taonet.hosts._tao import SEAL_POLICY_SELF, Tao
from taonet.hosts.linux._config import COUNTERS_FILE, SEALED_KEYS_FILE

__all__ = ["open_stacked", "renew_delegation"]

log = get_logger(__name__)

#: Largest sealed keyset file read.
_MAX_SEALED_KEYS = 1 << 20


async def open_stacked(
    path: Path,
    parent: Tao,
    clock: Callable[[], int],
    *,
    delegation_validity_ns: int | None = None,
) -> tuple[SoftHost, CounterStore]:
    """The stacked host's key core and counter store, through ``parent`` (its
    delegation valid for ``delegation_validity_ns`` from now; None: the default)."""
    name = await parent.get_tao_name()
    sealer = ParentTableSealer(parent)
    await _check_counters(parent, sealer.label)
    sealed_path = path / SEALED_KEYS_FILE
    new_blob: bytes | None = None
    if await trio.Path(sealed_path).exists():
        blob = await trio.to_thread.run_sync(
            functools.partial(read_file, sealed_path, limit=_MAX_SEALED_KEYS)
        )
        try:
            data, _ = await parent.unseal(blob)
        except HostError as exc:
            raise HostError(
                f"the parent Tao would not unseal this host's keys ({exc}): is this the "
                "same host binary on the same parent?"
            ) from None
        keyset = Keyset.from_private_bytes(data)
    else:
        keyset = Keyset.generate()
        new_blob = await parent.seal(keyset.to_private_bytes(), SEAL_POLICY_SELF)
    key_prin = auth.key_principal(keyset.signer.public_key_der())
    delegation = await _delegate(parent, key_prin, name, clock, delegation_validity_ns)
    core = SoftHost(keyset, name=name, delegation=delegation, directory=path, clock=clock)
    counters = await CounterStore.open(path / COUNTERS_FILE, sealer)
    if new_blob is not None:
        await trio.to_thread.run_sync(
            functools.partial(atomic_write, sealed_path, new_blob, mode=0o600)
        )
        log.info("stacked_host_keys_sealed", path=str(sealed_path))
    return core, counters


async def renew_delegation(
    core: SoftHost, parent: Tao, clock: Callable[[], int], validity_ns: int
) -> int:
    """Have ``parent`` attest ``core``'s delegation again, valid ``validity_ns`` from
    now, and make ``core`` carry it; returns its expiration (ns). A TaoError from the
    parent (a TPM whose PCRs no longer match the name refuses to quote) leaves the
    current delegation in place, to expire."""
    if core.delegation is None:
        raise HostError("this host carries no delegation to renew")
    delegation = await _delegate(parent, core.key_principal, core.name, clock, validity_ns)
    core.replace_delegation(delegation)
    expiration = delegation.statement().expiration
    return 0 if expiration is None else expiration


async def _delegate(
    parent: Tao,
    key_prin: auth.Prin,
    name: auth.Prin,
    clock: Callable[[], int],
    validity_ns: int | None,
) -> Attestation:
    """``parent``'s attestation ``key_prin speaksfor name``, from now for ``validity_ns``."""
    message = auth.Speaksfor(delegate=key_prin, delegator=name)
    if validity_ns is None:
        return await parent.attest(message)
    now = clock()
    return await parent.attest(message, time=now, expiration=now + validity_ns)


async def _check_counters(parent: Tao, label: str) -> None:
    """HostError unless ``parent`` has counters (an unknown label is fine).

    A parent without counters answers :class:`~taonet.NotSupportedError` (over the Tao
    RPC too: the error's kind travels with it); its text is not looked at.
    """
    try:
        await parent.get_counter(label)
    except NotSupportedError as exc:
        raise HostError(
            f"the parent Tao has no counters (it answers {str(exc)[:200]!r}): a stacked "
            "host keeps its counter table rollback-protected with its parent's counters "
            "and does not start without them"
        ) from None
    except HostError:
        pass  # no counter for this label yet: counters exist
