"""CPU of the secret server's read miss and audit append, without the network.

A read the cache cannot answer runs ``SecretTables.read_verified_in`` in one read
snapshot (since A4 F3 it also reads the audit head there); every release appends an
entry (since A4 F1 with a MAC). This times both on a SQLite file in this process,
so two trees can be compared on one machine (run it from each checkout)::

    python tests/secrets/measure_read_miss.py [--reads 3000] [--entries 20000]

Prints one JSON line: CPU microseconds per read miss (a key and a child under it)
and per audit entry appended in batches of 50, with the ratio of each to a bare
``SELECT 1`` transaction measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from taonet.protected import KEY_TYPE
from taonet_services.secret_server._store import SecretTables, new_master_key
from taonet_services.storage import AuditStore, Database


def cpu_per(n: int, fn: Any) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--entries", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.open_sync(f"sqlite:///{Path(tmp) / 's.db'}")
        try:
            db.transaction_sync(lambda cur: SecretTables.create_tables_in(db, cur))
            tables = SecretTables(db, new_master_key())
            options: dict[str, Any] = {}
            if hasattr(tables, "audit_mac_key"):
                options["mac_key"] = tables.audit_mac_key
            audit = AuditStore.open_sync(db, **options)
            now = datetime.now(UTC)
            db.transaction_sync(
                lambda cur: tables.create_in(cur, "/k", None, KEY_TYPE, None, None, None, now)
            )
            db.transaction_sync(
                lambda cur: tables.create_in(cur, "/k/c", b"v", "secret", "/k", None, None, now)
            )
            audit.append_sync(kind="secret_created", actor="a", subject="/k/c#1", outcome="ok")

            def bare() -> None:
                db.transaction_sync(lambda cur: cur.execute("SELECT 1"), write=False)

            def read() -> None:
                db.transaction_sync(
                    lambda cur: tables.read_verified_in(cur, "/k/c", None, now),
                    write=False,
                    serializable=True,
                )

            details = {"op": "Read", "peer": "key([" + "ab" * 32 + "])", "tag": "cd" * 16}
            batch = [
                {"kind": "secret_released", "actor": "a", "subject": "/k/c#1", "outcome": "ok"}
                | {"details": details}
            ] * 50

            def append() -> None:
                entries = db.transaction_sync(lambda cur: audit.append_many_in(cur, batch))
                audit.committed(entries[-1])

            bare_us = cpu_per(args.reads, bare)
            read_us = cpu_per(args.reads, read)
            entry_us = cpu_per(args.entries // 50, append) / 50
        finally:
            db.close_sync()
    print(
        json.dumps(
            {
                "bare_transaction_cpu_us": round(bare_us, 1),
                "read_miss_cpu_us": round(read_us, 1),
                "read_miss_ratio_vs_bare": round(read_us / bare_us, 2),
                "audit_entry_cpu_us": round(entry_us, 2),
                "audit_entry_ratio_vs_bare": round(entry_us / bare_us, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
