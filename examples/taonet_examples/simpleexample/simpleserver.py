#!/usr/bin/env python3
"""simpleserver: hands its secret to clients the domain allows to read it.

Its secret is kept by the domain's secret server (:mod:`taonet.secrets`), not in a
file: at start it reads ``/simpleexample/secret`` (its latest active epoch) over a
Tao channel to the secret server, and on the very first start asks the server to
make it (a random AES-256 key, made and kept encrypted by the server; the guard
gives simpleserver ``Create`` and ``Read`` on ``/simpleexample``). It then watches
``/simpleexample``: when an operator rotates the secret (``taonet secret rotate``),
the event arrives at once and simpleserver reads the new epoch and hands out that
one from then on.

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
from taonet.channel import (
    ChannelIdentity,
    ChannelRevokedError,
    MessageStream,
    TaoStream,
    serve_channels,
)
from taonet.domain import Domain, Guard
from taonet.hosts import Tao, parent
from taonet.protected import SecretObject
from taonet.provision import RevocationWatcher, load_or_provision
from taonet.secrets import ConflictError, NotFoundError, SecretStore, connect

SECRET_REQUEST = b"secret please"
#: Where simpleserver's secret lives in the secret server.
SECRET_NAME = "/simpleexample/secret"  # noqa: S105 - a name, not a secret
#: The prefix simpleserver may Create and Read under, and watches.
SECRET_PREFIX = "/simpleexample"  # noqa: S105 - a name prefix
#: Where simpleserver's watch starts: just after the log's first event, so that a
#: rotation between its read and its first Watch request is not missed (events for
#: epochs it already holds are skipped).
WATCH_FROM = 1
#: Bound on closing the channel to the secret server as simpleserver stops.
CLOSE_TIMEOUT = 2.0


async def load_secret(store: SecretStore, say: Callable[[str], None]) -> SecretObject:
    """The latest active epoch of :data:`SECRET_NAME`; made by the server on the first run."""
    try:
        secret = await store.read(SECRET_NAME)
    except NotFoundError:
        try:
            # No value given: the secret server makes a random AES-256 key.
            await store.create(SECRET_NAME)
            say(f"asked the secret server to make its secret {SECRET_NAME} (a random key)")
        except ConflictError:  # another instance made it first: read that one
            pass
        secret = await store.read(SECRET_NAME)
    say(f"read its secret {SECRET_NAME} epoch {secret.id.epoch} from the secret server")
    return secret


class _Held:
    """The secret simpleserver hands out now (replaced when a new epoch arrives)."""

    def __init__(self, secret: SecretObject) -> None:
        self.secret = secret


async def follow_rotations(
    store: SecretStore,
    held: _Held,
    say: Callable[[str], None],
    on_epoch: Callable[[int], None],
) -> None:
    """Watch :data:`SECRET_PREFIX`; on a new epoch (or value) of the secret, read it."""
    async for event in store.watch(SECRET_PREFIX, cursor=WATCH_FROM):
        current = held.secret.id.epoch
        if event.id.name != SECRET_NAME or event.kind not in ("rotated", "written"):
            continue
        if event.id.epoch < current or (event.kind == "rotated" and event.id.epoch == current):
            continue  # an event of an epoch it already holds (the log before its read)
        secret = await store.read(SECRET_NAME)
        if secret.id == held.secret.id and secrets.compare_digest(secret.value, held.secret.value):
            continue
        held.secret = secret
        say(
            f"watch: {SECRET_NAME} {event.kind} (epoch {event.id.epoch}); read it again:"
            f" hands out epoch {secret.id.epoch} from now on"
        )
        on_epoch(secret.id.epoch)


async def run_server(
    tao: Tao,
    *,
    state_dir: Path,
    policy_cert: bytes,
    domain_service: tuple[str, int],
    guard: Guard,
    secret_server: tuple[str, int],
    secret_server_principal: auth.Prin | None,
    say: Callable[[str], None],
    on_epoch: Callable[[int], None] = lambda _: None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Provision or unseal, get the secret from the secret server, then serve on
    127.0.0.1 (a free port, given to task_status).

    ``secret_server_principal``: the principal the secret server must prove it is
    (None: any program of the domain). ``on_epoch(n)`` is called each time the watch
    brings it a new epoch of its secret.
    """
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
        store = await nursery.start(
            functools.partial(
                _open_store,
                secret_server,
                provisioned.identity,
                revocations=crl,
                server=secret_server_principal,
            )
        )
        say(f"connected to the secret server {store.address[0]}:{store.address[1]}")
        held = _Held(await load_secret(store, say))
        nursery.start_soon(follow_rotations, store, held, say, on_epoch)
        say(f"watches {SECRET_PREFIX} for new epochs")

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
            secret = held.secret
            say(f"the guard allows it: sending the secret (epoch {secret.id.epoch})")
            return b"OK " + secret.value

        listeners = await nursery.start(
            functools.partial(serve_channels, handle, 0, provisioned.identity, revocations=crl)
        )
        port = int(listeners[0].socket.getsockname()[1])
        say(f"serving Tao channels on 127.0.0.1:{port} as {provisioned.principal}")
        task_status.started(port)


async def _open_store(
    address: tuple[str, int],
    identity: ChannelIdentity,
    *,
    revocations: RevocationWatcher,
    server: auth.Prin | None,
    task_status: trio.TaskStatus[SecretStore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A :class:`SecretStore` open for as long as the nursery runs; closed politely (the
    channel's TLS close sent, shielded from the cancellation that ends it)."""
    async with connect(address, identity, revocations=revocations, server=server) as store:
        task_status.started(store)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await store.aclose()


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


def parse_principal(text: str) -> auth.Prin:
    """A principal's text to a :class:`~taonet.auth.Prin` (argparse type)."""
    try:
        return auth.parse_prin(text)
    except (TaoError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not a principal: {exc}") from None


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
    parser = hosted_arguments("simpleserver, a hosted Tao program")
    parser.add_argument("--secret-server", type=parse_address, required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--secret-server-principal",
        type=parse_principal,
        default=None,
        metavar="PRINCIPAL",
        help="the principal the secret server must prove it is (default: any in the domain)",
    )
    args = parser.parse_args(argv)
    return run_hosted(
        args,
        lambda tao, domain: run_server(
            tao,
            state_dir=args.state,
            policy_cert=domain.policy_cert,
            domain_service=args.domain_service,
            guard=domain.guard,
            secret_server=args.secret_server,
            secret_server_principal=args.secret_server_principal,
            say=say_line,
        ),
    )


__all__ = [
    "SECRET_NAME",
    "SECRET_PREFIX",
    "SECRET_REQUEST",
    "hosted_arguments",
    "load_secret",
    "main",
    "parse_principal",
    "run_hosted",
    "run_server",
]

if __name__ == "__main__":
    sys.exit(main())
