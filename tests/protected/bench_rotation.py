"""Measure protect/unprotect and a rotation plan against bare AES-256-GCM (not a test).

    .venv/bin/python -m tests.protected.bench_rotation [--children 10000] [--rounds 5]

Each figure is the median of ``--rounds`` runs, in the same process: per object,
protect and unprotect of a 32-byte key; per child, plan_rotation over N children;
and the baseline, a bare ``AESGCM.encrypt`` + ``decrypt`` of the same plaintext with
the same associated data. The last line is one JSON object with the figures and
ratios (per-child cost / baseline cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taonet.protected import (
    KEY_TYPE,
    ObjectId,
    SecretObject,
    Status,
    associated_data,
    encode_object,
    plan_rotation,
    protect,
    unprotect,
)

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _median(fn: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.children
    key = SecretObject(ObjectId("/srv/key", 1), KEY_TYPE, Status.ACTIVE, None, None, os.urandom(32))
    objs = [
        SecretObject(
            ObjectId(f"/srv/key/obj{i}", 1), KEY_TYPE, Status.ACTIVE, NOW, None, os.urandom(32)
        )
        for i in range(n)
    ]
    children = [protect(o, key) for o in objs]

    def do_protect() -> None:
        for o in objs:
            protect(o, key)

    def do_unprotect() -> None:
        for c in children:
            unprotect(c, key)

    def do_rotate() -> None:
        plan_rotation(key, children, now=NOW)

    aead = AESGCM(key.value)
    plains = [encode_object(o) for o in objs]
    aads = [associated_data(o.id, key.id) for o in objs]

    def bare() -> None:
        for p, a in zip(plains, aads, strict=True):
            nonce = os.urandom(12)
            aead.decrypt(nonce, aead.encrypt(nonce, p, a), a)

    base = _median(bare, args.rounds) / n
    prot = _median(do_protect, args.rounds) / n
    unprot = _median(do_unprotect, args.rounds) / n
    rot_total = _median(do_rotate, args.rounds)
    rot = rot_total / n
    figures = {
        "children": n,
        "bare_aesgcm_encrypt_decrypt_us": round(base * 1e6, 2),
        "protect_us": round(prot * 1e6, 2),
        "unprotect_us": round(unprot * 1e6, 2),
        "rotation_per_child_us": round(rot * 1e6, 2),
        "rotation_total_s": round(rot_total, 4),
        "protect_ratio_vs_bare": round(prot / base, 2),
        "unprotect_ratio_vs_bare": round(unprot / base, 2),
        "rotation_per_child_ratio_vs_bare": round(rot / base, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
