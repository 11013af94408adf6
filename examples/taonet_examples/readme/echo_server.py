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
from taonet.channel import ChannelRevokedError, MessageStream, TaoStream, serve_channels
from taonet.domain import Domain
from taonet.hosts import parent
from taonet.provision import RevocationWatcher, load_or_provision


async def echo(stream: TaoStream) -> None:
    try:
        async with MessageStream(stream, max_frame=4096) as messages:
            while True:  # until the client closes the channel
                try:
                    message = await messages.receive_message()
                except trio.EndOfChannel:
                    return
                print(f"{stream.peer.principal} sent {message!r}", flush=True)
                await messages.send_message(message)
    except ChannelRevokedError as error:  # the CRL changed while the channel was open
        print(f"closed a channel: {error}", flush=True)


async def serve(args: argparse.Namespace) -> None:
    domain = Domain.load(args.domain)
    domain_service: tuple[str, int] = args.domain_service
    args.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with parent() as tao, trio.open_nursery() as nursery:
        # The domain's CRL, kept current from the domain service (a long poll brings a
        # revocation in about a second) and cached for a restart while it is down.
        crl = RevocationWatcher(
            domain.policy_cert, domain_service, cache=args.state / "echo_server.crl"
        )
        await nursery.start(crl.run)
        # First run: attest, get a certificate from the domain service, seal both.
        # Later runs: unseal them (a certificate revoked since is replaced by a new one).
        me = await load_or_provision(
            tao,
            args.state / "echo_server.sealed",
            policy_cert=domain.policy_cert,
            domain_service=domain_service,
            revocations=crl,
        )
        host, port = args.listen
        # Handshakes from revoked peers are refused, open channels closed.
        serving = functools.partial(
            serve_channels, echo, port, me.identity, host=host, revocations=crl
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
