"""The domain target: program certificates issued by a real domain service.

The tool runs, in a process of its own (:func:`serve_domain_process`), a domain
service for a local domain made for the run (:func:`make_local_domain`, which the
secret target shares: a fresh policy key, an ACL guard, a soft host certified by it
and a client program the guard lets in), with its audit log in SQLite, and serves
its Prometheus metrics on ``127.0.0.1`` (port 0) when prometheus-client is there.
It sends the parent the service's port, the metrics port (or None) and
:class:`DomainCredentials`: the policy certificate, and the soft host's key and
endorsement, so that each worker can attest as that host does.

A request (:class:`DomainClient`) is what a program does to get its certificate: an
attestation by its host that a new key speaks for the program, sent with that key
to the domain service (``DomainService.Certify``), and the certificate that comes
back checked against the policy key and the key. Making a key and having it attested
is client-side CPU (the host's, in a real deployment); done in the timed path it
would make the workers measure themselves on a machine whose cores the service
shares, so each worker makes :data:`POOL` of them before the run starts, one fresh
key each, and its clients take them in turn (past the pool they are sent again, as a
program re-provisioning its key does: the service checks each in full every time).

With ``fresh`` each request is :func:`taonet.provision.request_certificate`, the
client real programs use (a new anonymous channel per certificate); otherwise a
client keeps one anonymous channel and sends its requests on it one after another.

The service's limits on anonymous clients (16 connections per address, each closed
after 16 requests or 60 s; anonymous connections at most three quarters of the
connection cap) would refuse clients past 16 from 127.0.0.1 and close persistent
channels every 16 requests: the tool's own service lifts them
(:func:`loadtest_connection_limits`: anonymous clients may take every connection, any
number from one address, each for any number of requests). Its connection cap stays
:func:`taonet.channel.default_max_connections` (1024, or three quarters of the soft
``RLIMIT_NOFILE`` if less): raise ``ulimit -n`` for more clients than that. A domain
service run with the defaults can be loaded by at most 16 clients from one address,
each channel recycled after 16 certificates.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import tempfile
from collections.abc import AsyncIterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import trio

from taonet import AuthenticationError, AuthorizationError, ProtocolError, auth, certs
from taonet.attestation import Attestation
from taonet.channel import ChannelIdentity, TaoStream, open_channel
from taonet.crypto import Signer
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.hosts import SoftHost
from taonet.loadtest._config import MAX_CLIENTS
from taonet.provision import (
    ERROR_INTERNAL,
    OP_CERTIFY,
    DomainServiceError,
    request_certificate,
)
from taonet.provision._client import (
    checked_certificate,
    decoded_answer,
    new_envelope,
    principal_is_service,
    read_answer,
)
from taonet.wire import Envelope, message_class
from taonet.wire import serialize as serialize_message

if TYPE_CHECKING:
    from taonet_services.domain_service import ConnectionLimits, DomainService
    from taonet_services.metrics import ServiceMetrics

__all__ = [
    "POOL",
    "DomainClient",
    "DomainCredentials",
    "LocalDomain",
    "domain_error_kind",
    "make_attestations",
    "make_local_domain",
    "serve_domain_process",
]

#: Fresh keys (and their attestations) each worker makes before the run.
POOL: Final = 512
#: The refusal codes a domain service answers with (others count as ``refused_other``).
_CODES: Final = frozenset(
    {"bad_request", "invalid_attestation", "unauthorized", "rate_limited", "too_many_watches"}
)


@attrs.frozen
class LocalDomain:
    """A local domain made for a run, a soft host it certified, and the client program."""

    domain: Domain
    host: SoftHost
    password: bytes = attrs.field(repr=False)
    #: The client program's file (what the guard's rules name) and its principal.
    client_file: Path
    client_name: auth.Prin


def make_local_domain(
    base: Path, *, programs: Sequence[Path] = (), client_rules: Sequence[str] = ()
) -> LocalDomain:
    """A fresh local domain in ``base/domain`` (ACL guard, random password) whose
    guard lets in the client program (``base/loadtest-client.py``) and ``programs``,
    with ``client_rules`` besides (``{client}`` in each stands for the client
    program's principal tail), and a soft host in ``base/host`` certified by it."""
    password = secrets.token_bytes(32)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    client_file = base / "loadtest-client.py"
    client_file.write_text("# the taonet loadtest client program\n")
    subprin = program_subprin(measure_file(client_file))
    tail = auth.PrinTail(subprin)
    rules = tuple(rule.format(client=tail) for rule in client_rules)
    domain = Domain.create(
        base / "domain",
        DomainTemplate(guard="ACL", rules=rules, programs=(*programs, client_file)),
        password,
    )
    host = SoftHost.create(base / "host", password)
    host.set_root_endorsement(domain.certify_host(domain.unlock(password), host.public_key_der()))
    return LocalDomain(domain, host, password, client_file, host.name.extend(subprin))


def loadtest_connection_limits() -> ConnectionLimits:
    """The tool's own domain service's limits: every client of a run may be anonymous,
    on 127.0.0.1, and keep its channel for the whole run (see the module's text)."""
    from taonet_services.domain_service import ConnectionLimits

    return ConnectionLimits(
        anonymous_share=1.0,
        anonymous_per_address=MAX_CLIENTS + 16,
        anonymous_requests=2**31,
        anonymous_lifetime=7 * 24 * 3600.0,
    )


def service_metrics(service: str) -> ServiceMetrics | None:
    """A service's metrics, or None without prometheus-client (no server section)."""
    from taonet import ConfigError
    from taonet_services.metrics import ServiceMetrics

    try:
        return ServiceMetrics(service)
    except ConfigError:
        return None


async def start_metrics(nursery: trio.Nursery, metrics: ServiceMetrics | None) -> int | None:
    """Serve ``metrics`` on 127.0.0.1 (a free port) in ``nursery``; the port, or None.

    A new exposition for every scrape (``min_interval=0``): the parent scrapes once
    per interval, which may be shorter than the endpoint's default second."""
    if metrics is None:
        return None
    from taonet_services.metrics import serve_metrics

    listeners = await nursery.start(
        functools.partial(serve_metrics, metrics.exposition, 0, min_interval=0.0)
    )
    return int(listeners[0].socket.getsockname()[1])


@contextlib.asynccontextmanager
async def running_domain_service(
    local: LocalDomain,
    *,
    metrics: ServiceMetrics | None = None,
    connections: ConnectionLimits | None = None,
) -> AsyncIterator[tuple[DomainService, tuple[str, int]]]:
    """The domain service of ``local`` on 127.0.0.1 (a free port) while the block runs."""
    from taonet_services.domain_service import DomainService

    with DomainService.open(
        local.domain.path, local.password, metrics=metrics, connections=connections
    ) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            yield service, ("127.0.0.1", int(listeners[0].socket.getsockname()[1]))
            nursery.cancel_scope.cancel()


@attrs.frozen
class DomainCredentials:
    """What a worker needs to attest as the run's soft host (its directory and
    password: the host's keys stay in the run's directory) and check what it gets."""

    policy_cert: bytes
    host_dir: str
    password: bytes = attrs.field(repr=False)
    program: auth.Prin


async def _domain_world(
    base: Path, conn: Connection
) -> None:  # pragma: no cover - runs in the server process (tests drive it there)
    local = make_local_domain(base)
    metrics = service_metrics("domain_service")
    async with (
        running_domain_service(
            local, metrics=metrics, connections=loadtest_connection_limits()
        ) as (_, address),
        trio.open_nursery() as nursery,
    ):
        metrics_port = await start_metrics(nursery, metrics)
        credentials = DomainCredentials(
            local.domain.policy_cert, str(base / "host"), local.password, local.client_name
        )
        conn.send((address[1], metrics_port, credentials))
        await trio.to_thread.run_sync(_wait_quietly, conn, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


def serve_domain_process(conn: Connection, state_dir: str | None) -> None:
    """A process's main: run a domain service for a local domain (see the module's
    text) in ``state_dir`` (None: a temporary directory, removed after), send
    ``(port, metrics_port, credentials)`` over ``conn``, stop when it closes."""
    import signal

    from taonet import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us when it is done
    configure_logging(level="warning")  # a line per certificate would drown the live line
    with contextlib.ExitStack() as stack:
        base = state_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="taonet-loadtest-domain-")
        )
        trio.run(_domain_world, Path(base), conn)


def _wait_quietly(conn: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv()


#: One request: the attestation, its bytes, and the attested key's public DER.
Certification = tuple[Attestation, bytes, bytes]


def make_attestations(credentials: DomainCredentials, count: int) -> list[Certification]:
    """``count`` fresh keys, each attested by the run's host to speak for the client
    program, as the host's Tao attests for a program that asks."""
    host = SoftHost.load(credentials.host_dir, credentials.password)
    out = []
    for _ in range(count):
        key_der = Signer.generate().public_key_der()
        statement = auth.Speaksfor(auth.key_principal(key_der), credentials.program)
        attestation = host.attest_for(credentials.program, statement)
        out.append((attestation, attestation.to_bytes(), key_der))
    return out


def domain_error_kind(exc: BaseException) -> str | None:
    """The kind of a failed certification (``refused_<code>``, ``internal``,
    ``timeout``, ``connection_broken``), or None for a failure of another kind."""
    if isinstance(exc, AuthorizationError) and "refused (unauthorized)" in str(exc):
        return "refused_unauthorized"
    if isinstance(exc, DomainServiceError):
        if exc.code == ERROR_INTERNAL:
            return "internal"
        return f"refused_{exc.code if exc.code in _CODES else 'other'}"
    if isinstance(exc, ProtocolError):
        cause = _cause(exc, (trio.TooSlowError, trio.BrokenResourceError,
                             trio.ClosedResourceError))  # fmt: skip
        if isinstance(cause, trio.TooSlowError):
            return "timeout"
        if cause is not None or "closed without answering" in str(exc):
            return "connection_broken"
    return None


def _cause(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    seen = 0
    each: BaseException | None = exc
    while each is not None and seen < 8:
        if isinstance(each, kinds):
            return each
        each = each.__cause__ or each.__context__
        seen += 1
    return None


class DomainClient:
    """One program asking for certificates: each request one certificate issued."""

    #: What a request of this client is (the report's operation).
    last_op = "certify"

    def __init__(
        self,
        address: tuple[str, int],
        credentials: DomainCredentials,
        identity: ChannelIdentity,
        requests: Sequence[Certification],
        *,
        start: int,
        step: int,
        fresh: bool,
    ) -> None:
        self._address = address
        self._credentials = credentials
        self._identity = identity
        self._requests = requests
        self._turn = start
        self._step = step
        self._fresh = fresh
        self._stream: TaoStream | None = None
        self._envelope: Envelope | None = None
        self._seq = 0
        self._broken = False
        #: The certificate the latest request got (checked).
        self.last_certificate: certs.ProgramCertificate | None = None

    async def prepare(self) -> None:
        """Open the persistent channel if none is open (``open_channel``'s handshake
        timeout bounds it); nothing for fresh channels."""
        if self._fresh or self._stream is not None:
            return
        stream = await open_channel(self._address[0], self._address[1], self._identity)
        try:
            principal_is_service(stream.peer.principal, self._identity)
        except AuthenticationError:
            await trio.aclose_forcefully(stream)
            raise
        self._stream = stream
        self._envelope = new_envelope()
        self._seq = 0

    async def request(self) -> None:
        """Ask for one certificate and check it (raises on any failure)."""
        attestation, attestation_bytes, key_der = self._requests[self._turn % len(self._requests)]
        self._turn += self._step
        try:
            if self._fresh:
                host, port = self._address
                self.last_certificate = await request_certificate(
                    host, port, self._credentials.policy_cert, attestation, key_der
                )
            else:
                self.last_certificate = await self._certify(attestation_bytes, key_der)
        except BaseException:
            self._broken = True
            raise

    async def _certify(self, attestation: bytes, key_der: bytes) -> certs.ProgramCertificate:
        stream, envelope = self._stream, self._envelope
        if stream is None or envelope is None:
            raise RuntimeError("prepare() first")
        self._seq += 1
        request = message_class("DomainServiceRequest")(
            kind="certify", attestation=attestation, program_key=key_der
        )
        await stream.send_all(b"".join(envelope.request(OP_CERTIFY, self._seq,
                                                        serialize_message(request))))  # fmt: skip
        try:
            event = await read_answer(stream, envelope)
        except trio.BrokenResourceError as exc:
            raise ProtocolError("the domain service broke the channel") from exc
        response = decoded_answer(event, OP_CERTIFY)
        return checked_certificate(self._identity, response, key_der)

    async def settle(self) -> None:
        """After a request, outside its time bound: close a failed channel."""
        if self._broken:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the channel (the next request opens another)."""
        stream, self._stream, self._envelope = self._stream, None, None
        self._broken = False
        if stream is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await trio.aclose_forcefully(stream)
