"""Time and peak memory of ``taonet audit verify`` with and without --against-rows.

Builds a secret server's SQLite database of N names (default 100,000) as the server
writes them (rows by ``SecretTables.create_in``, each with its ``secret_created``
audit entry, and one release of each name), then runs each verify in a subprocess
of its own and prints seconds and peak RSS of each, and their ratio. Last line JSON.

    .venv/bin/python tests/services/measure_against_rows.py [--names N]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import resource, sys, time
from taonet.cli import main
t = time.perf_counter()
status = main(["audit", "verify", "--db", sys.argv[1], *sys.argv[2:], "-o", "json"])
elapsed = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("MEASURE", status, elapsed, peak, file=sys.stderr)
"""


def build(path: Path, names: int) -> Path:
    """The database, with a checkpoint signed over it; returns its key's PEM file."""
    from cryptography.hazmat.primitives import serialization

    from taonet.crypto import Signer
    from taonet_services.secret_server import SecretTables, new_master_key
    from taonet_services.secret_server._store import utc_now
    from taonet_services.storage import AuditStore, Database

    db = Database.open_sync(f"sqlite:///{path}")
    try:
        db.transaction_sync(lambda cur: SecretTables.create_tables_in(db, cur))
        signer = Signer.generate()
        audit = AuditStore.open_sync(db, signer=signer)
        tables = SecretTables(db, new_master_key())
        now = utc_now()

        def fill(cur: object, start: int, stop: int) -> None:
            for i in range(start, stop):
                name = f"/bench/{i:06d}"
                oid, tag = tables.create_in(cur, name, b"v" * 32, "bytes", None, None, None, now)
                audit.append_in(
                    cur,
                    kind="secret_created",
                    actor="key([aa])",
                    subject=str(oid),
                    outcome="ok",
                    details={"peer": "127.0.0.1:1", "tag": tag.hex(), "type": "bytes"},
                )
                known = audit.known[0] if audit.known else 0
                audit.append_in(
                    cur,
                    kind="secret_released",
                    actor="key([aa])",
                    subject=str(oid),
                    outcome="ok",
                    details={
                        "op": "Read",
                        "peer": "127.0.0.1:1",
                        "tag": tag.hex(),
                        "read_after": str(known),
                    },
                )

        for start in range(0, names, 10_000):
            db.transaction_sync(
                functools.partial(fill, start=start, stop=min(start + 10_000, names))
            )
        audit.checkpoint_sync()
    finally:
        db.close_sync()
    key = path.with_suffix(".pub")
    key.write_bytes(
        serialization.load_der_public_key(signer.public_key_der()).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def run(path: Path, *extra: str) -> tuple[int, float, int]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("MEASURE")][-1].split()
    return int(line[1]), float(line[2]), int(line[3])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "secrets.db"
        t = time.perf_counter()
        key = build(path, args.names)
        print(f"built {args.names} names in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        status, chain_s, chain_kb = run(path, "--key", str(key))
        status_rows, rows_s, rows_kb = run(path, "--key", str(key), "--against-rows")
    figures = {
        "names": args.names,
        "verify_s": round(chain_s, 2),
        "verify_peak_rss_mb": round(chain_kb / 1024, 1),
        "against_rows_s": round(rows_s, 2),
        "against_rows_peak_rss_mb": round(rows_kb / 1024, 1),
        "time_ratio": round(rows_s / chain_s, 2),
        "rss_ratio": round(rows_kb / chain_kb, 2),
        "status": [status, status_rows],
    }
    print(
        f"verify: {chain_s:.2f} s, {chain_kb / 1024:.0f} MB; --against-rows: {rows_s:.2f} s,"
        f" {rows_kb / 1024:.0f} MB"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
