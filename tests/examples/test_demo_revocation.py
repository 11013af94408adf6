"""The demo shows a revocation reaching a live channel, and says so on both ends."""

from __future__ import annotations

from pathlib import Path

import trio

from taonet.crypto import KdfParams
from taonet_examples.simpleexample.demo import run_demo


async def test_demo_revokes_a_live_channel(tmp_path: Path) -> None:
    lines: list[str] = []
    with trio.fail_after(60):
        await run_demo(tmp_path, say=lines.append, kdf=KdfParams.for_tests())
    text = "\n".join(lines)
    assert "== Revocation" in text
    revoke = next(line for line in lines if line.startswith("[operator] taonet domain revoke"))
    serial = revoke.split()[4]
    closed = next(line for line in lines if "[simpleclient #2] channel closed" in line)
    assert f"certificate (serial {serial}) was revoked" in closed
    server = next(line for line in lines if line.startswith("[simpleserver] closed the channel"))
    assert f"(serial {serial}) was revoked" in server
    refused = next(line for line in lines if "connecting again is refused" in line)
    assert f"serial {serial} is revoked" in refused
    # The order a reader follows: revoked, then closed, then refused.
    assert lines.index(revoke) < lines.index(closed) < lines.index(refused)
