"""What keeping each name's epoch floor costs a Create and a Delete.

Run: ``.venv/bin/python -m tests.secrets.measure_epoch_floor [NAMES]``

The secret server's tables on an SQLite file (``SecretTables``, as the server uses
them, each call in a transaction of its own as a request's is; no audit entry, no
channel), in rounds of ``NAMES`` (default 2,000) each:

* ``create_new``: Create of a name never used (the floor is looked up, not found);
* ``delete``: Delete of every epoch of a name (the floor row written);
* ``create_again``: Create of a name deleted before (the floor row read and its MAC
  checked).

Prints median microseconds per call over the rounds, then one JSON line with them
and ``create_again / create_new``. Run it on the code before the floor (the same
script) to compare: there ``create_again`` makes epoch 1 again.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(names: int) -> dict[str, float]:
    from taonet_services.secret_server import SecretTables, new_master_key
    from taonet_services.secret_server._store import utc_now
    from taonet_services.storage import Database

    def _one(call: Callable[[Any, str], object], name: str, cur: Any) -> object:
        return call(cur, name)

    figures: dict[str, list[float]] = {"create_new": [], "delete": [], "create_again": []}
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.open_sync(f"sqlite:///{Path(tmp) / 'secrets.db'}")
        try:
            db.transaction_sync(lambda cur: SecretTables.create_tables_in(db, cur))
            tables, now = SecretTables(db, new_master_key()), utc_now()

            def timed(what: str, call: Callable[[Any, str], object], prefix: str) -> None:
                start = time.perf_counter()
                for i in range(names):
                    db.transaction_sync(functools.partial(_one, call, f"{prefix}/{i:06d}"))
                figures[what].append((time.perf_counter() - start) / names * 1e6)

            def create(cur: Any, name: str) -> object:
                return tables.create_in(cur, name, b"v" * 32, "bytes", None, None, None, now)

            def delete(cur: Any, name: str) -> object:
                return tables.delete_in(cur, name, None)

            for r in range(5):
                timed("create_new", create, f"/m/{r}")
                timed("delete", delete, f"/m/{r}")
                timed("create_again", create, f"/m/{r}")
        finally:
            db.close_sync()
    result = {k: round(statistics.median(v), 1) for k, v in figures.items()}
    result["create_again_ratio_vs_create_new"] = round(
        result["create_again"] / result["create_new"], 3
    )
    return result


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    for key, value in result.items():
        print(f"{key:>36}: {value}")
    print(json.dumps(result))
