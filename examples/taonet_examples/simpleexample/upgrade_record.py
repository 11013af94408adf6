"""The data both versions of the upgrade demo's program share: a record kept encrypted
under a content key, and the names they use.

The record is a protected object (:mod:`taonet.protected`): AES-256-GCM under the
content key, the record's id and the key's id (name and epoch) bound as associated
data, written atomically. The content key is ``/upgrade/content`` at some epoch; a
program keeps its copy sealed by its Tao (policy ``self``) in the same format that
:func:`taonet.disclosure.peer.fetch_and_seal` writes, so :func:`open_keys` reads
both.
"""

from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import trio

from taonet.disclosure.peer import open_sealed
from taonet.files import atomic_write, read_file
from taonet.hosts import Tao
from taonet.protected import (
    KEY_BYTES,
    KEY_TYPE,
    ObjectId,
    SecretObject,
    Status,
    decode_protected_object,
    encode_object_store,
    encode_protected_object,
    protect,
    unprotect,
)

__all__ = [
    "CONTENT_KEY",
    "PREFIX",
    "RECORD",
    "RECORD_FILE",
    "new_key",
    "open_keys",
    "read_record",
    "record_protector",
    "seal_keys",
    "write_record",
]

#: The names under which the program keeps its data, in the secret server too.
PREFIX: Final = "/upgrade"
#: The content key's name (its epoch changes on rotation).
CONTENT_KEY: Final = f"{PREFIX}/content"
#: The record's id (it keeps it when the record is protected anew).
RECORD: Final = ObjectId(f"{PREFIX}/record", 1)
#: The record's file, in the program's data directory.
RECORD_FILE: Final = "record.protected"
# A record file is small: a bound on what is read.
_MAX_RECORD: Final = 64 * 1024


def new_key(epoch: int = 1) -> SecretObject:
    """A fresh random content key at ``epoch``."""
    return SecretObject(
        ObjectId(CONTENT_KEY, epoch), KEY_TYPE, Status.ACTIVE, None, None, os.urandom(KEY_BYTES)
    )


async def seal_keys(tao: Tao, path: Path, keys: list[SecretObject]) -> None:
    """Seal ``keys`` with ``tao`` (policy ``self``) and write them at ``path`` atomically."""
    sealed = await tao.seal(encode_object_store(keys), "self")
    await trio.to_thread.run_sync(functools.partial(atomic_write, path, sealed, mode=0o600))


async def open_keys(tao: Tao, path: Path) -> dict[ObjectId, SecretObject]:
    """The keys sealed at ``path`` (HostError unless ``tao``'s program sealed them)."""
    return await open_sealed(tao, path)


def write_record(path: Path, text: bytes, key: SecretObject) -> None:
    """Encrypt the record ``text`` under ``key`` and write it at ``path`` atomically."""
    record = SecretObject(RECORD, "file", Status.ACTIVE, None, None, text)
    atomic_write(path, encode_protected_object(protect(record, key)), mode=0o600)


def record_protector(path: Path) -> ObjectId:
    """The id of the key the record at ``path`` is encrypted under."""
    return decode_protected_object(read_file(path, limit=_MAX_RECORD)).protector_id


def read_record(path: Path, key: SecretObject) -> bytes:
    """The record at ``path``, decrypted with ``key`` (WrongKeyError for another key)."""
    protected = decode_protected_object(read_file(path, limit=_MAX_RECORD))
    return unprotect(protected, key, now=datetime.now(UTC)).value
