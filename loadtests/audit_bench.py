"""Audit chain appends per second, against a bare INSERT of the same row, same run.

For each database (an SQLite file in a temporary directory, WAL and
synchronous=FULL as services use it; and PostgreSQL: ``--pg-url``, or a private
server started like the tests' one, with fsync on), one client appends entries
one transaction at a time through :class:`taonet_services.storage.Database`:

* ``insert``: the baseline, one ``INSERT`` of a row with the same columns and
  values an audit entry has (hashes included, computed beforehand) into a plain
  table, in its own transaction;
* ``append``: :meth:`AuditStore.append` without a signer: lock and read the head,
  hash, insert, move the head;
* ``append_cp``: the same with a P-256 signer and a checkpoint every 100 entries
  (the domain service's setting);
* ``append_cp10``: a checkpoint every 10 entries.

Subjects run in blocks of ``--block`` operations, in the order insert, append,
append_cp, append_cp10, then reversed, for ``--rounds`` rounds, so that a change of
machine load lands on every subject; rates are medians over the blocks and each
ratio the median of the per-round ratios to ``insert``.

    python loadtests/audit_bench.py [--quick] [--rounds N] [--block N] [--pg-url URL] [--no-pg]

Prints a table, then as its last line one JSON object: ``<db>_<subject>_per_s`` and
``<db>_<subject>_ratio_vs_insert`` for each database and subject.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taonet.audit import AuditEntry, encode_details
from taonet.crypto import Signer
from taonet_services.storage import AuditStore, Database

SUBJECTS = ("insert", "append", "append_cp", "append_cp10")
DETAILS = {"epoch": "3", "object": "/acme/key/us-zone/file-key", "bytes": "32"}


def _fields(i: int) -> dict[str, Any]:
    return {
        "kind": "secret_read",
        "actor": "key([3f2a9c0b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c]).Program(x)",
        "subject": f"/acme/key/us-zone/file-key-{i}",
        "outcome": "ok",
        "details": DETAILS,
    }


class Bench:
    def __init__(self, db: Database, prefix: str) -> None:
        self.db = db
        self.prefix = prefix
        self.counter = 0
        self.stores: dict[str, AuditStore] = {}

    async def setup(self) -> None:
        signer = Signer.generate()
        blob = self.db.blob_type
        await self.db.transaction(
            lambda cur: cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.prefix}bare (seq BIGINT PRIMARY KEY,"
                " time_ns BIGINT NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL,"
                " subject TEXT NOT NULL, outcome TEXT NOT NULL, details TEXT NOT NULL,"
                f" prev_hash {blob} NOT NULL, entry_hash {blob} NOT NULL,"
                " checkpoint_seq BIGINT NOT NULL)"
            )
        )
        # One chain per subject would need one table set each; the chain's cost does not
        # depend on its length, so the three append subjects share one chain.
        base = await AuditStore.open(self.db)
        self.stores = {
            "append": base,
            "append_cp": AuditStore(self.db, signer=signer, checkpoint_every=100),
            "append_cp10": AuditStore(self.db, signer=signer, checkpoint_every=10),
        }

    async def run(self, subject: str, n: int) -> float:
        rows = []
        if subject == "insert":
            for _ in range(n):
                self.counter += 1
                entry = AuditEntry(
                    seq=self.counter, time_ns=time.time_ns(), **_fields(self.counter)
                )
                rows.append(
                    (
                        entry.seq,
                        entry.time_ns,
                        entry.kind,
                        entry.actor,
                        entry.subject,
                        entry.outcome,
                        encode_details(entry.details),
                        entry.prev_hash,
                        entry.hash,
                        0,
                    )
                )
            query = self.db.sql(
                f"INSERT INTO {self.prefix}bare VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            start = time.perf_counter()
            for row in rows:
                await self.db.transaction(lambda cur, row=row: cur.execute(query, row))
            return n / (time.perf_counter() - start)
        store = self.stores[subject]
        start = time.perf_counter()
        for i in range(n):
            await store.append(**_fields(i))
        return n / (time.perf_counter() - start)


async def measure(url: str, label: str, rounds: int, block: int) -> dict[str, float]:
    db = await Database.open(url, pool_size=1)
    try:
        bench = Bench(db, "bench_")
        await bench.setup()
        await bench.run("insert", max(10, block // 10))  # warm up
        await bench.run("append", max(10, block // 10))
        rates: dict[str, list[float]] = {s: [] for s in SUBJECTS}
        ratios: dict[str, list[float]] = {s: [] for s in SUBJECTS[1:]}
        for r in range(rounds):
            order = SUBJECTS if r % 2 == 0 else tuple(reversed(SUBJECTS))
            this: dict[str, float] = {}
            for subject in order:
                this[subject] = await bench.run(subject, block)
                rates[subject].append(this[subject])
            for subject in SUBJECTS[1:]:
                ratios[subject].append(this[subject] / this["insert"])
        result: dict[str, float] = {}
        for subject in SUBJECTS:
            result[f"{label}_{subject}_per_s"] = round(statistics.median(rates[subject]), 1)
        for subject in SUBJECTS[1:]:
            result[f"{label}_{subject}_ratio_vs_insert"] = round(
                statistics.median(ratios[subject]), 3
            )
        summary = await bench.stores["append"].verify()
        result[f"{label}_entries_verified"] = summary.entries
        return result
    finally:
        await db.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of well under a minute")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--block", type=int, default=None, help="operations per block")
    parser.add_argument("--pg-url", help="a PostgreSQL to use (default: start a private one)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 10)
    block = args.block or (100 if args.quick else 400)

    results: dict[str, Any] = {"rounds": rounds, "block": block}
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    server = None
    try:
        results.update(trio.run(measure, f"sqlite:///{tmp / 'bench.db'}", "sqlite", rounds, block))
        pg_url = args.pg_url
        if pg_url is None and not args.no_pg:
            try:
                from tests.pg import PgServer

                if shutil.which("initdb") is None:
                    raise RuntimeError("initdb not on PATH")
                server = PgServer(fsync=True)
                server.start()
                pg_url = server.url()
            except Exception as exc:
                print(f"no PostgreSQL: {exc}", file=sys.stderr)
                results["postgresql"] = f"not measured: {exc}"
        if pg_url is not None:
            results.update(trio.run(measure, pg_url, "postgresql", rounds, block))
    finally:
        if server is not None:
            server.remove()
        shutil.rmtree(tmp, ignore_errors=True)

    for label in ("sqlite", "postgresql"):
        if f"{label}_insert_per_s" not in results:
            continue
        print(f"{label}:")
        for subject in SUBJECTS:
            rate = results[f"{label}_{subject}_per_s"]
            ratio = results.get(f"{label}_{subject}_ratio_vs_insert")
            shown = "" if ratio is None else f"  ratio vs insert {ratio:.3f}"
            print(f"  {subject:<12} {rate:>9.1f}/s{shown}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    os.environ.setdefault("TAONET_LOG", "warning")
    main()
