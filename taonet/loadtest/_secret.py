"""The secret target: a mix of read, write, list and rotate against a real secret server.

The tool runs, in a process of its own (:func:`serve_secrets_process`), everything
the secret server needs, made for the run in a temporary directory (or the run's
``state_dir``): a local domain (:func:`make_world`, from
:func:`taonet.loadtest._domain.make_local_domain`: a fresh policy key, ACL guard) whose
rules let one client program Read, Write, Create, Delete and Own the names under
:data:`PREFIX`, a soft host certified by it, the domain service, and the secret server
itself (``taonet_services.secret_server`` as ``taonet secret-server`` runs it,
provisioned through that domain service, its objects and audit log in an SQLite file;
on PostgreSQL, with replicas, see ``_replicas``, which reuses :func:`make_world`,
:func:`provision_client` and :func:`create_objects`), its Prometheus metrics served on
127.0.0.1 when prometheus-client is there. It creates ``objects`` names of
``value_size`` bytes each, provisions the client program's identity, and sends the
server's port, the client's credentials and the metrics port to the parent.

A request (:class:`SecretClient`) is one operation of a fixed weighted cycle (no
randomness: each client starts at another place in it) on the names in turn, over
one persistent channel per client, or a fresh channel per request.
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
import tempfile
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

import trio

from taonet.channel import ChannelIdentity
from taonet.loadtest._config import OPERATIONS
from taonet.loadtest._domain import (
    LocalDomain,
    make_local_domain,
    running_domain_service,
    service_metrics,
    start_metrics,
)
from taonet.loadtest._handshake import LocalCredentials
from taonet.provision import load_or_provision
from taonet.secrets import SecretStore, connect

__all__ = [
    "OPERATIONS",
    "PREFIX",
    "SecretClient",
    "create_objects",
    "make_world",
    "object_name",
    "provision_client",
    "serve_secrets_process",
    "weighted_cycle",
]

#: The names the load test works on.
PREFIX: Final = "/loadtest"
#: Names per List page.
_LIST_LIMIT: Final = 100


def object_name(index: int) -> str:
    """The name of object ``index`` (from 0)."""
    return f"{PREFIX}/k{index:06d}"


#: The client program's rules: every operation the mix uses, on :data:`PREFIX`.
CLIENT_RULES: Final = tuple(
    f'Authorized({{client}}, "{op}", "{PREFIX}")'
    for op in ("Read", "Write", "Create", "Delete", "Own")
)


def make_world(base: Path) -> LocalDomain:
    """In ``base``: the run's domain (a fresh policy key, ACL guard, the rules of the
    module's text), a soft host it certifies, and the client program's file."""
    from taonet_services.secret_server import PROGRAM_FILE

    return make_local_domain(base, programs=(PROGRAM_FILE,), client_rules=CLIENT_RULES)


async def provision_client(local: LocalDomain, ds: tuple[str, int]) -> LocalCredentials:
    """The client program's identity, certified by the domain service at ``ds``."""
    client = await load_or_provision(
        local.host.tao_for(local.client_name),
        local.client_file.parent / "client.sealed",
        policy_cert=local.domain.policy_cert,
        domain_service=ds,
    )
    identity = client.identity
    assert identity.signer is not None
    assert identity.certificate is not None
    return LocalCredentials(
        local.domain.policy_cert, b"", b"", identity.signer.to_pkcs8_der(), identity.certificate.der
    )


async def create_objects(
    address: tuple[str, int], identity: ChannelIdentity, objects: int, value_size: int
) -> None:
    """Create the ``objects`` names of the run, ``value_size`` random bytes each."""
    async with connect(address, identity) as store:
        for index in range(objects):
            await store.create(object_name(index), secrets.token_bytes(value_size))


async def _world(
    base: Path, objects: int, value_size: int, conn: Connection
) -> None:  # pragma: no cover - runs in the server process (tests drive it there)
    from taonet_services.secret_server import program_name as server_program_name
    from taonet_services.secret_server import run_secret_server

    local = make_world(base)
    host = local.host
    metrics = service_metrics("secret_server")
    async with running_domain_service(local) as (_, ds), trio.open_nursery() as nursery:
        running = await nursery.start(
            functools.partial(
                run_secret_server,
                host.tao_for(host.name.extend(server_program_name())),
                domain=local.domain,
                state_dir=base / "secret-server",
                domain_service=ds,
                metrics=metrics,
            )
        )
        metrics_port = await start_metrics(nursery, metrics)
        credentials = await provision_client(local, ds)
        address = ("127.0.0.1", int(running.port))
        await create_objects(address, credentials.client(), objects, value_size)
        conn.send((address[1], credentials, metrics_port))
        await trio.to_thread.run_sync(_wait_quietly, conn, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


def serve_secrets_process(
    conn: Connection, objects: int, value_size: int, state_dir: str | None = None
) -> None:
    """A process's main: run a domain service and a secret server (see the module's
    text) in ``state_dir`` (None: a temporary directory, removed after), send
    ``(port, credentials, metrics_port)`` over ``conn`` (the metrics port None without
    prometheus-client), stop when it closes."""
    import signal

    from taonet import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us when it is done
    configure_logging(level="warning")  # the servers' own lines would drown the live line
    with contextlib.ExitStack() as stack:
        base = state_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="taonet-loadtest-secrets-")
        )
        trio.run(_world, Path(base), objects, value_size, conn)


def _wait_quietly(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


def weighted_cycle(mix: Sequence[tuple[str, int]]) -> list[str]:
    """The operations of ``mix`` interleaved by weight (smooth weighted round robin)."""
    weights = {op: weight for op, weight in mix if weight > 0}
    divisor = functools.reduce(math.gcd, weights.values())
    weights = {op: weight // divisor for op, weight in weights.items()}
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0)
    out = []
    for _ in range(total):
        for op, weight in weights.items():
            current[op] += weight
        chosen = max(current, key=lambda op: current[op])
        current[chosen] -= total
        out.append(chosen)
    return out


class SecretClient:
    """One client of the secret server: each request the next operation of the cycle."""

    def __init__(
        self,
        address: tuple[str, int],
        identity: ChannelIdentity,
        *,
        cycle: Sequence[str],
        start: int,
        objects: int,
        value_size: int,
        fresh: bool,
    ) -> None:
        self._address = address
        self._identity = identity
        self._cycle = cycle
        self._turn = start
        self._objects = objects
        self._value = b"v" * value_size
        self._fresh = fresh
        self._stack: contextlib.AsyncExitStack | None = None
        self._store: SecretStore | None = None
        self._broken = False
        #: The operation of the latest request (the report's operation).
        self.last_op = self._cycle[start % len(self._cycle)]

    async def prepare(self) -> None:
        """Open the channel if none is open (outside the request's time bound: the
        store's reader task lives in a nursery that must outlast every request;
        ``open_channel``'s handshake timeout bounds it)."""
        if self._store is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            self._store = await stack.enter_async_context(connect(self._address, self._identity))
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def request(self) -> None:
        """Run the next operation (raises on any failure; :meth:`settle` then closes)."""
        store = self._store
        if store is None:
            raise RuntimeError("prepare() first")
        op = self.last_op = self._cycle[self._turn % len(self._cycle)]
        name = object_name(self._turn % self._objects)
        self._turn += 1
        try:
            if op == "read":
                await store.read(name)
            elif op == "write":
                await store.write(name, self._value)
            elif op == "list":
                await store.list_page(PREFIX, limit=_LIST_LIMIT)
            else:
                await store.rotate(name, self._value)
        except BaseException:
            self._broken = True
            raise

    async def settle(self) -> None:
        """After a request, outside its time bound: close a failed or fresh channel."""
        if self._broken or self._fresh:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the channel (the next request opens another)."""
        stack, self._stack, self._store = self._stack, None, None
        self._broken = False
        if stack is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stack.aclose()
