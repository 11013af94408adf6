"""Version 2 of the upgrade demo's program (``taonet demo --upgrade``).

Other code than :mod:`.upgrade_v1`, so another name: its Tao will not unseal what
version 1 sealed. It takes over version 1's record with a disclosure directive of
the policy key, by either of the two ways the directive works:

* :func:`fetch_from_peer`: asks version 1 itself over a Tao channel
  (:func:`taonet.disclosure.peer.fetch_and_seal`), seals the key for itself;
* :func:`read_from_store`: presents the same directive to the secret server
  (``store.read(name, epoch, directive=...)``).

Then, owning the key after the upgrade, :func:`rotate` makes a new epoch in the
secret server and protects the record anew under it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from taonet import ConfigError, auth
from taonet.channel import ChannelIdentity, CRLSource
from taonet.disclosure.peer import fetch_and_seal
from taonet.hosts import Tao
from taonet.protected import ObjectId, SecretObject
from taonet.secrets import SecretStore
from taonet_examples.simpleexample.upgrade_record import (
    CONTENT_KEY,
    RECORD_FILE,
    open_keys,
    read_record,
    record_protector,
    seal_keys,
    write_record,
)

__all__ = ["KEYS_FILE", "VERSION", "fetch_from_peer", "read_from_store", "rotate"]

VERSION: Final = 2
#: Version 2's keys, sealed with its Tao, in the data directory.
KEYS_FILE: Final = "v2-keys.sealed"


async def fetch_from_peer(
    tao: Tao,
    identity: ChannelIdentity,
    data: Path,
    *,
    peer: tuple[str, int],
    peer_principal: auth.Prin,
    directive: bytes,
    key: ObjectId,
    revocations: CRLSource | None,
    say: Callable[[str], None],
) -> bytes:
    """Fetch ``key`` from version 1 at ``peer`` (it must prove it is
    ``peer_principal``) under ``directive``, seal it, read the record; returns it."""
    got = await fetch_and_seal(
        peer,
        identity,
        directive,
        [key],
        tao=tao,
        path=data / KEYS_FILE,
        revocations=revocations,
        server=peer_principal,
    )
    say(f"got {key} from {peer_principal} over a Tao channel")
    say(f"sealed it with its own Tao (policy self) in {KEYS_FILE}")
    text = await trio.to_thread.run_sync(read_record, data / RECORD_FILE, got[key])
    say(f"read the record: {text.decode()!r}")
    return text


async def read_from_store(
    store: SecretStore,
    data: Path,
    *,
    directive: bytes,
    key: ObjectId,
    say: Callable[[str], None],
) -> bytes:
    """Read ``key`` from the secret server under ``directive``, then the record."""
    got = await store.read(key.name, key.epoch, directive=directive)
    say(f"read {got.id} from the secret server with the directive")
    text = await trio.to_thread.run_sync(read_record, data / RECORD_FILE, got)
    say(f"read the record: {text.decode()!r}")
    return text


async def rotate(
    tao: Tao, store: SecretStore, data: Path, *, say: Callable[[str], None]
) -> SecretObject:
    """Rotate the content key (Own), protect the record under the new epoch; returns
    the new key. The keys are sealed before the record is rewritten (each file
    atomically), so a crash between the two leaves a record some sealed key opens."""
    new_id = await store.rotate(CONTENT_KEY)
    say(f"rotated {CONTENT_KEY} in the secret server: epoch {new_id.epoch} (Own)")
    new = await store.read(CONTENT_KEY, new_id.epoch)
    keys = await open_keys(tao, data / KEYS_FILE)
    path = data / RECORD_FILE
    protector = await trio.to_thread.run_sync(record_protector, path)
    old = keys.get(protector)
    if old is None:
        raise ConfigError(f"the record is under {protector}, which {KEYS_FILE} does not hold")
    text = await trio.to_thread.run_sync(read_record, path, old)
    await seal_keys(tao, data / KEYS_FILE, [*keys.values(), new])
    await trio.to_thread.run_sync(write_record, path, text, new)
    say(f"protected the record anew under {new.id} (written atomically)")
    again = await trio.to_thread.run_sync(read_record, path, new)
    say(f"read the record under {new.id}: {again.decode()!r}")
    return new
