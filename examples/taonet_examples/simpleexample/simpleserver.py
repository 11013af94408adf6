#!/usr/bin/env python3
"""simpleserver: hands its secret to clients the domain allows to read it.

It keeps the domain's CRL current from the domain service (a
:class:`~taonet.provision.RevocationWatcher`): a client whose certificate is
revoked is refused, and its open channel closed, about a second after
``taonet domain revoke``.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from taonet import TaoError, auth, configure_logging
from taonet.channel import ChannelRevokedError, MessageStream, TaoStream, serve_channels
from taonet.domain import Domain, Guard
from taonet.files import atomic_write
from taonet.hosts import Tao, parent
from taonet.provision import RevocationWatcher, load_or_provision

SECRET_REQUEST = b"secret please"


async def load_secret(tao: Tao, path: Path, say: Callable[[str], None]) -> bytes:
    """The server's secret, sealed to the server; made on the first run."""
    if await trio.Path(path).exists():
        data, _ = await tao.unseal(await trio.Path(path).read_bytes())
        say(f"unsealed its secret from {path}")
        return data
    secret = secrets.token_hex(16).encode()
    atomic_write(path, await tao.seal(secret, "self"))
    say(f"made a secret and sealed it to itself in {path}")
    return secret


async def run_server(
    tao: Tao,
    *,
    state_dir: Path,
    policy_cert: bytes,
    domain_service: tuple[str, int],
    guard: Guard,
    say: Callable[[str], None],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Provision or unseal, then serve on 127.0.0.1 (a free port, given to task_status)."""
    async with trio.open_nursery() as nursery:
        # The CRL is kept in the state directory too, for a restart while the
        # domain service is down.
        crl = RevocationWatcher(policy_cert, domain_service, cache=state_dir / "crl.der")
        await nursery.start(crl.run)
        revoked = "?" if crl.crl is None else len(crl.crl)
        say(f"keeps the domain's CRL current ({revoked} revoked certificate(s) now)")
        provisioned = await load_or_provision(
            tao,
            state_dir / "simpleserver.sealed",
            policy_cert=policy_cert,
            domain_service=domain_service,
            on_step=say,
            revocations=crl,
        )
        secret = await load_secret(tao, state_dir / "simpleserver.secret", say)

        async def handle(stream: TaoStream) -> None:
            peer = stream.peer.principal
            try:
                async with MessageStream(stream, max_frame=4096) as messages:
                    while (request := await _next_request(messages)) is not None:
                        await messages.send_message(answer(request, peer))
            except ChannelRevokedError as exc:
                say(f"closed the channel of {peer}: {exc}")

        def answer(request: bytes, peer: auth.Prin | None) -> bytes:
            say(f"request {request!r} from {peer}")
            if request != SECRET_REQUEST or peer is None:
                return b"ERROR unknown request"
            if not guard.is_authorized(peer, "Read", [auth.Str("secret")]):
                say("refused: the guard does not let that principal read the secret")
                return b"ERROR not authorized"
            say("the guard allows it: sending the secret")
            return b"OK " + secret

        listeners = await nursery.start(
            functools.partial(serve_channels, handle, 0, provisioned.identity, revocations=crl)
        )
        port = int(listeners[0].socket.getsockname()[1])
        say(f"serving Tao channels on 127.0.0.1:{port} as {provisioned.principal}")
        task_status.started(port)


async def _next_request(messages: MessageStream) -> bytes | None:
    """The client's next request; None when it closed the channel."""
    try:
        return await messages.receive_message()
    except trio.EndOfChannel:
        return None


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to a tuple (argparse type)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def hosted_arguments(description: str) -> argparse.ArgumentParser:
    """Options simpleserver and simpleclient share when run as hosted programs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--domain", type=Path, required=True, help="the domain directory")
    parser.add_argument("--state", type=Path, required=True, help="where to keep sealed state")
    parser.add_argument("--domain-service", type=parse_address, required=True, metavar="HOST:PORT")
    return parser


def say_line(text: str) -> None:
    print(text, flush=True)


def run_hosted(
    args: argparse.Namespace,
    body: Callable[[Tao, Domain], Awaitable[object]],
) -> int:
    """Run ``body`` with this program's host (``taonet.hosts.parent``) and its domain.

    Logging is set up from ``TAONET_LOG`` and ``TAONET_LOG_FORMAT``. An error a user
    can act on (a :class:`~taonet.TaoError` or ``OSError``, also from inside a
    nursery) is one line on stderr and exit status 2, not a traceback.
    """

    async def hosted() -> None:
        domain = Domain.load(args.domain)
        async with parent() as tao:
            say_line(f"my Tao name is {await tao.get_tao_name()}")
            await body(tao, domain)

    failures: list[str] = []
    try:
        configure_logging()
        trio.run(hosted)
    except* (TaoError, OSError) as group:
        failures.extend(dict.fromkeys(str(leaf) for leaf in _leaves(group)))
    for line in failures:
        print(f"{Path(sys.argv[0]).name}: error: {line}", file=sys.stderr, flush=True)
    return 2 if failures else 0


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``, exception groups opened up."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def main(argv: Sequence[str] | None = None) -> int:
    """Run as a hosted program."""
    args = hosted_arguments("simpleserver, a hosted Tao program").parse_args(argv)
    return run_hosted(
        args,
        lambda tao, domain: run_server(
            tao,
            state_dir=args.state,
            policy_cert=domain.policy_cert,
            domain_service=args.domain_service,
            guard=domain.guard,
            say=say_line,
        ),
    )


__all__ = ["SECRET_REQUEST", "hosted_arguments", "main", "run_hosted", "run_server"]

if __name__ == "__main__":
    sys.exit(main())
