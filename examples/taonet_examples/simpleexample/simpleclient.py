#!/usr/bin/env python3
"""simpleclient: asks simpleserver for its secret over a Tao channel.

The secret is simpleserver's key from the secret server (32 bytes); the client
prints it in hex, as a demo does (a real client would keep it to itself).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from taonet import ProtocolError
from taonet.channel import MessageStream, open_channel
from taonet.hosts import Tao
from taonet.provision import load_or_provision
from taonet_examples.simpleexample.simpleserver import (
    SECRET_REQUEST,
    hosted_arguments,
    parse_address,
    run_hosted,
    say_line,
)


async def run_client(
    tao: Tao,
    *,
    state_dir: Path,
    policy_cert: bytes,
    domain_service: tuple[str, int],
    server: tuple[str, int],
    say: Callable[[str], None],
) -> bytes:
    """Provision or unseal, then fetch the server's secret; returns it."""
    provisioned = await load_or_provision(
        tao,
        state_dir / "simpleclient.sealed",
        policy_cert=policy_cert,
        domain_service=domain_service,
        on_step=say,
    )
    stream = await open_channel(server[0], server[1], provisioned.identity)
    say(f"opened a Tao channel; the server proved it is {stream.peer.principal}")
    async with MessageStream(stream, max_frame=4096) as messages:
        await messages.send_message(SECRET_REQUEST)
        answer = await messages.receive_message()
    if not answer.startswith(b"OK "):
        raise ProtocolError(f"the server said {answer.decode(errors='replace')}")
    secret = answer[3:]
    say(f"received the secret {secret.hex()}")
    return secret


def main(argv: Sequence[str] | None = None) -> int:
    """Run as a hosted program."""
    parser = hosted_arguments("simpleclient, a hosted Tao program")
    parser.add_argument("--server", type=parse_address, required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    return run_hosted(
        args,
        lambda tao, domain: run_client(
            tao,
            state_dir=args.state,
            policy_cert=domain.policy_cert,
            domain_service=args.domain_service,
            server=args.server,
            say=say_line,
        ),
    )


__all__ = ["main", "run_client"]

if __name__ == "__main__":
    sys.exit(main())
