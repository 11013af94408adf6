#!/usr/bin/env python3
"""echo_server: a hosted Tao program that echoes each message back over a Tao channel.

Run it on a Linux host: taonet run echo_server.py --domain DIR --state DIR ...
"""

import argparse
import functools
import sys
from pathlib import Path

import trio

from taonet import TaoError, configure_logging
from taonet.channel import MessageStream, TaoStream, serve_channels
from taonet.domain import Domain
from taonet.hosts import parent
from taonet.provision import fetch_crl, load_or_provision


async def echo(stream: TaoStream) -> None:
    async with MessageStream(stream, max_frame=4096) as messages:
        message = await messages.receive_message()
        print(f"{stream.peer.principal} sent {message!r}", flush=True)
        await messages.send_message(message)


async def serve(args: argparse.Namespace) -> None:
    domain = Domain.load(args.domain)
    domain_service: tuple[str, int] = args.domain_service
    async with parent() as tao:  # the Tao of the host that started this program
        # First run: attest, get a certificate from the domain service, seal both.
        # Later runs: unseal them.
        me = await load_or_provision(
            tao,
            args.state / "echo_server.sealed",
            policy_cert=domain.policy_cert,
            domain_service=domain_service,
        )
        crl = await fetch_crl(*domain_service, domain.policy_cert)
        host, port = args.listen
        async with trio.open_nursery() as nursery:
            serving = functools.partial(
                serve_channels, echo, port, me.identity, host=host, revoked=crl.serials
            )
            await nursery.start(serving)
            certificate = me.identity.certificate
            assert certificate is not None  # provisioned: it has one
            print(f"serving on {host}:{port} as {me.principal}", flush=True)
            print(f"my certificate has serial {certificate.serial}", flush=True)


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
    parser.add_argument("--listen", type=address, required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    configure_logging()
    failed = False
    try:
        trio.run(serve, args)
    except* (TaoError, OSError) as group:
        for error in errors(group):
            print(f"echo_server: error: {error}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
