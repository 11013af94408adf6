"""Helpers for the TPM host tests: making and opening hosts, and TPM inspection via tpm2-pytss."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Tpm2Host

#: The PCRs test hosts use: fixed ones plus 16 and 23, which tests extend and reset.
TEST_PCRS = (0, 7, 16, 23)


async def make_host(directory: Path, tcti: str, *, pcrs: tuple[int, ...] = TEST_PCRS) -> Tpm2Host:
    """Create a host's state directory (in a thread, as the CLI does) and open it."""
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(60):
        await trio.to_thread.run_sync(lambda: Tpm2Host.create(directory, tcti=tcti, pcrs=pcrs))
        return await Tpm2Host.open(directory)


@contextlib.asynccontextmanager
async def opened_host(
    directory: Path, tcti: str, *, pcrs: tuple[int, ...] = TEST_PCRS
) -> AsyncIterator[Tpm2Host]:
    """:func:`make_host`, closed (within 60 s) when the ``with`` ends."""
    host = await make_host(directory, tcti, pcrs=pcrs)
    try:
        yield host
    finally:
        with trio.fail_after(60):
            await host.aclose()


def loaded_handles(tcti: str) -> list[int]:
    """Transient objects and loaded sessions on the TPM (GetCapability HANDLES, pytss)."""
    from tpm2_pytss.constants import TPM2_CAP

    from taonet.hosts.tpm2._setup import _esapi

    found = []
    with _esapi(tcti) as ectx:
        for first in (0x80000000, 0x02000000, 0x03000000):
            _, data = ectx.get_capability(TPM2_CAP.HANDLES, first, 64)
            found += [int(h) for h in data.data.handles if int(h) >> 24 == first >> 24]
    return found


def extend(tcti: str, pcr: int, data: bytes = b"something else ran") -> bytes:
    from taonet.hosts.tpm2._setup import extend_pcr

    return extend_pcr(tcti, pcr, data)


def reset(tcti: str, pcr: int) -> None:
    from taonet.hosts.tpm2._setup import reset_pcr

    reset_pcr(tcti, pcr)
