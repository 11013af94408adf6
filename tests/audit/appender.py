"""A process that appends to an audit chain: ``python -m tests.audit.appender URL COUNT TAG``.

It opens the chain, prints ``ready``, waits for a line on stdin, then appends COUNT
entries (actor TAG) and prints ``done``. Two of them started together append at once.
"""

from __future__ import annotations

import sys

import trio

from taonet.crypto import Signer
from taonet_services.storage import AuditStore, Database


async def main(url: str, count: int, tag: str) -> None:
    db = await Database.open(url)
    try:
        store = await AuditStore.open(db, signer=Signer.generate(), checkpoint_every=7)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        for i in range(count):
            await store.append(
                kind="test_append", actor=tag, subject=f"/{tag}/{i}", outcome="ok", details={}
            )
        print("done", flush=True)
    finally:
        await db.aclose()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3])
