#!/usr/bin/env python3
"""secret_reader: a hosted Tao program that reads a secret, then follows its rotations.

Run it on a Linux host: taonet run secret_reader.py --domain DIR --state DIR ... NAME
"""

import argparse
import sys
from pathlib import Path

import trio

from taonet import TaoError, auth, configure_logging
from taonet.domain import Domain
from taonet.hosts import parent
from taonet.provision import RevocationWatcher, load_or_provision
from taonet.secrets import connect


async def read(args: argparse.Namespace) -> None:
    domain = Domain.load(args.domain)
    args.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with parent() as tao, trio.open_nursery() as nursery:
        crl = RevocationWatcher(
            domain.policy_cert, args.domain_service, cache=args.state / "secret_reader.crl"
        )
        await nursery.start(crl.run)
        me = await load_or_provision(
            tao,
            args.state / "secret_reader.sealed",
            policy_cert=domain.policy_cert,
            domain_service=args.domain_service,
            revocations=crl,
        )
        # A Tao channel to the secret server, which must be the program named.
        async with connect(
            args.secret_server, me.identity, revocations=crl, server=args.server_principal
        ) as store:
            secret = await store.read(args.name)
            print(f"read {secret.id.name} epoch {secret.id.epoch}: {secret.value!r}", flush=True)
            # Changes under the name after the log's first event (the create), so a
            # rotation made before the watch's first request is not missed.
            async for event in store.watch(args.name, cursor=1):
                if event.kind == "rotated" and event.id.epoch > secret.id.epoch:
                    secret = await store.read(args.name)
                    print(f"rotated: epoch {secret.id.epoch}: {secret.value!r}", flush=True)
                    break
        nursery.cancel_scope.cancel()  # done: stop watching the CRL


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)  # argparse says a ValueError here is a bad argument


def errors(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in errors(inner)]
    return [group]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domain", type=Path, required=True, help="the domain directory")
    parser.add_argument("--state", type=Path, required=True, help="where to seal my state")
    parser.add_argument("--domain-service", type=address, required=True, metavar="HOST:PORT")
    parser.add_argument("--secret-server", type=address, required=True, metavar="HOST:PORT")
    parser.add_argument("--server-principal", type=auth.parse_prin, required=True)
    parser.add_argument("name", help="the secret's name")
    args = parser.parse_args()
    configure_logging()
    failed = False
    try:
        trio.run(read, args)
    except* (TaoError, OSError) as group:
        for error in errors(group):
            print(f"secret_reader: error: {error}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
