"""Time and peak memory of opening a keyset whose header was edited by hand (review item 7).

Run each case in a fresh interpreter so that its peak RSS is its own::

    .venv/bin/python -m tests.crypto.measure_keyset_header 1048576 8 1

Prints one line: the parameters, seconds, peak RSS and growth, and the error.
Before the fix n=2**20, r=8, p=1 took 2.6 to 5.6 s (a shared 2-core machine) and
+1024 MiB before "wrong password"; after it, no time and no memory.
"""

from __future__ import annotations

import resource
import struct
import sys
import time

from taonet import ConfigError
from taonet.crypto import KdfParams, Keyset, open_keyset, seal_keyset


def main(argv: list[str]) -> None:
    n, r, p = (int(x) for x in argv[:3])
    blob = seal_keyset(Keyset.generate(), b"pw", kdf=KdfParams.for_tests())
    edited = blob[:9] + struct.pack(">III", n, r, p) + blob[21:]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        open_keyset(edited, b"pw")
        outcome = "opened"
    except ConfigError as exc:
        outcome = str(exc)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        f"n={n} r={r} p={p}: {seconds:.3f} s, peak RSS {peak // 1024} MiB "
        f"(+{(peak - base) // 1024} MiB): {outcome}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
