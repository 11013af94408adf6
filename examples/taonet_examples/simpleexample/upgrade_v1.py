"""Version 1 of the upgrade demo's program (``taonet demo --upgrade``).

Its name is the SHA-256 of this file, so version 2 (:mod:`.upgrade_v2`, other code)
has another name and cannot unseal what this version sealed. Version 1:

* :func:`keep_record`: makes a content key, keeps it in the secret server (it holds
  Create, Read and Own on :data:`~.upgrade_record.PREFIX` by the operator's grant), seals
  its own copy with its Tao (policy ``self``) and writes a record encrypted under it;
* :func:`read_with_own_key`: reads the record with the keys it sealed (after
  version 2 protected it under a new epoch, they no longer open it);
* :func:`serve_keys`: serves its sealed keys with the disclosure peer protocol
  (:func:`taonet.disclosure.peer.serve_disclosure`): a successor that presents a
  directive of the policy key (or of version 1 itself, which owns the keys it
  holds) gets exactly what the directive grants it, on a Tao channel whose verified
  peer is the principal the directive names. Each release and refusal is told.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from taonet.audit import bounded
from taonet.channel import ChannelIdentity, CRLSource
from taonet.disclosure.peer import serve_disclosure
from taonet.hosts import Tao
from taonet.protected import KEY_BYTES, KEY_TYPE, SecretObject, Status, WrongKeyError
from taonet.secrets import ConflictError, SecretStore
from taonet_examples.simpleexample.upgrade_record import (
    CONTENT_KEY,
    RECORD_FILE,
    open_keys,
    read_record,
    seal_keys,
    write_record,
)

__all__ = [
    "KEYS_FILE",
    "RECORD_TEXT",
    "VERSION",
    "keep_record",
    "read_with_own_key",
    "serve_keys",
]

VERSION: Final = 1
#: Version 1's keys, sealed with its Tao, in the data directory.
KEYS_FILE: Final = "v1-keys.sealed"
#: What version 1 writes in its record.
RECORD_TEXT: Final = b"order 1042: 3 crates of apples, paid"


async def keep_record(
    tao: Tao, store: SecretStore, data: Path, *, say: Callable[[str], None]
) -> SecretObject:
    """Make the content key (in the secret server, and sealed here), write the record
    under it; returns the key. The key is a new epoch when the name exists already
    (a rerun of the demo): an (name, epoch) is never made again with another value,
    so a directive for an earlier key never covers a later one."""
    value = os.urandom(KEY_BYTES)
    try:
        oid = await store.create(CONTENT_KEY, value, type=KEY_TYPE)
    except ConflictError:  # a name an earlier run left: a new epoch of it, never reused
        oid = await store.rotate(CONTENT_KEY, value)
        say(f"made the content key {oid}: a new epoch of the name an earlier run left")
    else:
        say(f"made the content key {oid}; created it in the secret server too")
    key = SecretObject(oid, KEY_TYPE, Status.ACTIVE, None, None, value)
    await seal_keys(tao, data / KEYS_FILE, [key])
    say(f"sealed the key with its Tao (policy self) in {KEYS_FILE}")
    await trio.to_thread.run_sync(write_record, data / RECORD_FILE, RECORD_TEXT, key)
    say(f"wrote the record, AES-256-GCM under {oid}, in {RECORD_FILE}")
    return key


async def serve_keys(
    tao: Tao,
    identity: ChannelIdentity,
    data: Path,
    *,
    revocations: CRLSource | None,
    say: Callable[[str], None],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the keys sealed in ``data`` by the disclosure peer protocol on 127.0.0.1
    (a free port, given to ``task_status``) until cancelled."""
    keys = await open_keys(tao, data / KEYS_FILE)

    async def told(**entry: Any) -> None:  # the audit hook: before anything leaves
        details = entry["details"]
        if entry["outcome"] == "ok":
            say(
                f"released {entry['subject']} to the channel's peer {entry['actor']}"
                f" (directive by {details['delegator']})"
            )
        else:
            say(f"refused {entry['actor']}: {bounded(details['reason'], 400)}")

    async def serve(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
        await serve_disclosure(
            keys, 0, identity, revocations=revocations, audit=told, task_status=task_status
        )

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve)
        port = int(listeners[0].socket.getsockname()[1])
        say(f"serving its keys (disclosure peer protocol) on 127.0.0.1:{port}")
        task_status.started(port)


async def read_with_own_key(tao: Tao, data: Path, *, say: Callable[[str], None]) -> bytes | None:
    """Read the record with the keys this version sealed; None when none opens it."""
    keys = await open_keys(tao, data / KEYS_FILE)
    for key in keys.values():
        try:
            text = await trio.to_thread.run_sync(read_record, data / RECORD_FILE, key)
        except WrongKeyError as exc:
            say(f"its own {key.id} does not open the record: {exc}")
        else:
            say(f"read the record with its own {key.id}: {text.decode()!r}")
            return text
    return None
