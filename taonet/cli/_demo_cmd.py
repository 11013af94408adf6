"""``taonet demo``: run simpleexample end to end on a soft Tao host.

The first run in a directory initializes (domain, soft host, each program's key,
attestation, certificate and sealed state); later runs show the operation phase
reusing the sealed state. See ``examples/simpleexample/demo.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run simpleexample end to end on a soft Tao host")
    p.add_argument(
        "--dir",
        metavar="DIR",
        type=Path,
        default=Path(".taonet-demo"),
        help="demo directory; rerun with the same one to reuse sealed state "
        "(default: .taonet-demo)",
    )
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import trio

    from examples.simpleexample.demo import run_demo
    from taonet.cli._logging import configure_logging

    configure_logging("warning")
    trio.run(run_demo, args.dir)
    return 0
