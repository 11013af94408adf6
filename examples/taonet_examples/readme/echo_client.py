#!/usr/bin/env python3
"""echo_client: a hosted Tao program that sends a message to echo_server over a Tao channel.

Run it on a Linux host: taonet run --wait echo_client.py --domain DIR --state DIR ...
"""

import argparse
import sys
from pathlib import Path

import trio

from taonet import TaoError, configure_logging
from taonet.channel import MessageStream, open_channel
from taonet.domain import Domain
from taonet.hosts import parent
from taonet.provision import RevocationWatcher, load_or_provision


async def send(args: argparse.Namespace) -> None:
    domain = Domain.load(args.domain)
    domain_service: tuple[str, int] = args.domain_service
    server: tuple[str, int] = args.server
    args.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with parent() as tao, trio.open_nursery() as nursery:
        crl = RevocationWatcher(
            domain.policy_cert, domain_service, cache=args.state / "echo_client.crl"
        )
        await nursery.start(crl.run)  # the domain's CRL, kept current while this runs
        me = await load_or_provision(
            tao,
            args.state / "echo_client.sealed",
            policy_cert=domain.policy_cert,
            domain_service=domain_service,
            revocations=crl,
        )
        stream = await open_channel(*server, me.identity, revocations=crl)
        print(f"the server is {stream.peer.principal}", flush=True)
        async with MessageStream(stream, max_frame=4096) as messages:
            await messages.send_message(args.message.encode())
            answer = await messages.receive_message()
            print(f"it echoed {answer.decode()!r}", flush=True)
            if args.keep_open:  # until the server closes the channel
                await messages.receive_message()
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
    parser.add_argument("--server", type=address, required=True, metavar="HOST:PORT")
    parser.add_argument("--keep-open", action="store_true", help="then wait for the server")
    parser.add_argument("message", help="what to send")
    args = parser.parse_args()
    configure_logging()
    failed = False
    try:
        trio.run(send, args)
    except* (TaoError, OSError) as group:
        for error in errors(group):
            print(f"echo_client: error: {error}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
