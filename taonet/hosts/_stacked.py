"""Opening a stacked host's keys and counters through its parent Tao.

A stacked host's keyset is sealed by its parent (``keys.sealed``): only the same host
binary on the same parent opens it. At every start the parent attests
``key(host key) speaksfor <the host's name>``, the delegation every attestation of
the host carries. Its counter table is sealed with the parent's rollback-protected
sealing, so restoring an older table file is detected; a parent without counters
leaves the table protected by the host's own key only (logged as
``counters_not_rollback_protected``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from taonet import auth
from taonet._errors import HostError
from taonet._files import atomic_write, read_file
from taonet.crypto import Keyset
from taonet.hosts._counters import CounterStore, ParentTableSealer, SoftTableSealer
from taonet.hosts._linux_config import COUNTERS_FILE, SEALED_KEYS_FILE
from taonet.hosts._soft import SoftHost
from taonet.hosts._tao import NOT_SUPPORTED, SEAL_POLICY_SELF, Tao

__all__ = ["open_stacked_core", "open_stacked_counters"]

log = structlog.get_logger(__name__)


async def open_stacked_core(path: Path, parent: Tao, clock: Callable[[], int]) -> SoftHost:
    name = await parent.get_tao_name()
    sealed_path = path / SEALED_KEYS_FILE
    if await trio.Path(sealed_path).exists():
        blob = await trio.to_thread.run_sync(
            functools.partial(read_file, sealed_path, limit=1 << 20)
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
        blob = await parent.seal(keyset.to_private_bytes(), SEAL_POLICY_SELF)
        await trio.to_thread.run_sync(
            functools.partial(atomic_write, sealed_path, blob, mode=0o600)
        )
    key_prin = auth.key_principal(keyset.signer.public_key_der())
    delegation = await parent.attest(auth.Speaksfor(delegate=key_prin, delegator=name))
    return SoftHost(keyset, name=name, delegation=delegation, directory=path, clock=clock)


async def open_stacked_counters(path: Path, core: SoftHost, parent: Tao) -> CounterStore:
    sealer: ParentTableSealer | SoftTableSealer = ParentTableSealer(parent)
    try:
        await parent.get_counter(sealer.label)
    except HostError as exc:
        if NOT_SUPPORTED in str(exc):
            log.warning("counters_not_rollback_protected", reason=str(exc))
            sealer = SoftTableSealer(core)
    return await CounterStore.open(path / COUNTERS_FILE, sealer)
