"""``taonet demo [--hosted | --upgrade | --tpm2]``: run simpleexample end to end.

The first run in a directory initializes (domain, host, each program's key,
attestation, certificate and sealed state); later runs show the operation phase
reusing the sealed state. The secret server runs with the others: simpleserver reads
its secret from it, the operator rotates that secret (a request signed by the policy
key) and simpleserver's watch brings it the new epoch. By default everything runs in
one process on a soft Tao host (``taonet_examples.simpleexample.demo``); with
``--hosted`` the programs are child processes of a Linux host
(``taonet_examples.simpleexample.hosted``). With ``--upgrade`` it shows an upgrade
that keeps its data (``taonet_examples.simpleexample.upgrade``): version 1 of a
program keeps a record under a content key; version 2, another name, gets the key by
a disclosure directive of the policy key, from version 1 over a Tao channel and from
the secret server, then rotates it; version 1 cannot read the new epoch. With
``--tpm2`` the hosted demo runs on a Linux host whose root is a software TPM started
for it (``taonet_examples.simpleexample.tpm2``): swtpm, the quote service, the domain
trusting the TPM's manufacturer CA and the host's PCR values; swtpm is stopped at the
end, on an error or Ctrl-C too.
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
        "(default: .taonet-demo, .taonet-demo-hosted with --hosted, "
        ".taonet-demo-upgrade with --upgrade)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--hosted",
        action="store_true",
        help="run the domain service, the secret server, simpleserver and simpleclient as "
        "hosted programs of a Linux host started for the demo "
        "(default directory: .taonet-demo-hosted)",
    )
    mode.add_argument(
        "--upgrade",
        action="store_true",
        help="show an upgrade that keeps its data: version 2 of a program gets version 1's "
        "key by a disclosure directive (from version 1 and from the secret server), then "
        "rotates it (default directory: .taonet-demo-upgrade)",
    )
    mode.add_argument(
        "--tpm2",
        action="store_true",
        help="run the hosted demo on a Linux host whose root is a software TPM (swtpm) "
        "started for the demo, its quote key certified by the quote service; each run "
        "starts afresh (default directory: .taonet-demo-tpm2; needs the tpm2 extra)",
    )
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import trio

    # The demo's own lines tell the story: log events only from warning up, unless
    # TAONET_LOG asks for more.
    # The upgrade demo shows the refusals it provokes in its own lines: from error up.
    quiet = "error" if args.upgrade else "warning"
    configure_logging(level=None if os.environ.get("TAONET_LOG") else quiet)
    default = ".taonet-demo-hosted" if args.hosted else ".taonet-demo"
    if args.upgrade:
        default = ".taonet-demo-upgrade"
    if args.tpm2:
        default = ".taonet-demo-tpm2"
    directory: Path = args.dir or Path(default)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot use {directory} as the demo directory: {exc.strerror or exc}"
        ) from None
    if args.tpm2:
        from taonet_examples.simpleexample.tpm2 import run_tpm2_demo

        trio.run(run_tpm2_demo, directory)
    elif args.hosted:
        from taonet_examples.simpleexample.hosted import run_hosted_demo

        trio.run(run_hosted_demo, directory)
    elif args.upgrade:
        from taonet_examples.simpleexample.upgrade import run_upgrade_demo

        trio.run(run_upgrade_demo, directory)
    else:
        from taonet_examples.simpleexample.demo import run_demo

        trio.run(run_demo, directory)
    return 0
