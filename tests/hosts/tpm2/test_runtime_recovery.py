"""The host's kept primary flushed behind its back (as another client's clean-up on a
swtpm without a resource manager does), no TPM reset: the failing call is an error,
and the next call rebuilds instead of failing the same way forever."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from taonet import HostError
from tests.hosts.tpm2.tpm2_host_helpers import make_host


async def test_flushed_primary_is_rebuilt_by_the_next_call(tmp_path: Path, swtpm_tcti: str) -> None:
    from taonet.hosts.tpm2 import _wire

    host = await make_host(tmp_path / "host", swtpm_tcti)
    try:
        runtime = host._runtime
        tao = host.tao()
        with trio.fail_after(60):
            await tao.seal(b"before")
            await runtime.run(lambda: runtime.call(_wire.flush_command(runtime.primary)))
            with pytest.raises(HostError, match="rc"):
                await tao.seal(b"primary gone")
            blob = await tao.seal(b"after")
            assert (await tao.unseal(blob))[0] == b"after"
    finally:
        with trio.fail_after(60):
            await host.aclose()
