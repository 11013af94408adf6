"""``taonet demo [--hosted]``: run simpleexample end to end.

The first run in a directory initializes (domain, host, each program's key,
attestation, certificate and sealed state); later runs show the operation phase
reusing the sealed state. The secret server runs with the others: simpleserver reads
its secret from it, the operator rotates that secret (a request signed by the policy
key) and simpleserver's watch brings it the new epoch. By default everything runs in
one process on a soft Tao host (``taonet_examples.simpleexample.demo``); with
``--hosted`` the programs are child processes of a Linux host
(``taonet_examples.simpleexample.hosted``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from taonet import ConfigError, configure_logging


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run simpleexample end to end on a soft Tao host")
    p.add_argument(
        "--dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="demo directory; rerun with the same one to reuse sealed state "
        "(default: .taonet-demo, or .taonet-demo-hosted with --hosted)",
    )
    p.add_argument(
        "--hosted",
        action="store_true",
        help="run the domain service, the secret server, simpleserver and simpleclient as "
        "hosted programs of a Linux host started for the demo "
        "(default directory: .taonet-demo-hosted)",
    )
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import trio

    # The demo's own lines tell the story: log events only from warning up, unless
    # TAONET_LOG asks for more.
    configure_logging(level=None if os.environ.get("TAONET_LOG") else "warning")
    directory: Path = args.dir or Path(".taonet-demo-hosted" if args.hosted else ".taonet-demo")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot use {directory} as the demo directory: {exc.strerror or exc}"
        ) from None
    if args.hosted:
        from taonet_examples.simpleexample.hosted import run_hosted_demo

        trio.run(run_hosted_demo, directory)
    else:
        from taonet_examples.simpleexample.demo import run_demo

        trio.run(run_demo, directory)
    return 0
