"""CPU cost of a release's audit entry with and without the F8 details (tag, read_after).

Builds, hashes and encodes a ``secret_released`` entry as the secret server's batcher
does, with the details of before (op, peer) and of now (plus tag and read_after).

    .venv/bin/python tests/services/measure_release_details.py
"""

from __future__ import annotations

import functools
import json
import timeit

from taonet.audit import AuditEntry, encode_details

_BEFORE = {"op": "Read", "peer": "127.0.0.1:54321"}


def _entry(with_tag: bool) -> None:
    details = dict(_BEFORE)
    if with_tag:
        details["tag"] = bytes(16).hex()
        details["read_after"] = str(123456)
    entry = AuditEntry(
        seq=123457,
        time_ns=1,
        kind="secret_released",
        actor="key([aa]).Program([bb])",
        subject="/app/key#1",
        outcome="ok",
        details=details,
        prev_hash=bytes(32),
    )
    _ = entry.hash
    encode_details(entry.details)


def main() -> None:
    n = 20_000
    us = {}
    for name, flag in (("before", False), ("after", True)):
        best = min(timeit.repeat(functools.partial(_entry, flag), number=n, repeat=5)) / n
        us[name] = round(best * 1e6, 1)
    print(
        json.dumps({"release_entry_us_before": us["before"], "release_entry_us_after": us["after"]})
    )


if __name__ == "__main__":
    main()
