"""Run simpleexample end to end on a soft Tao host in a local domain directory.

The first run initializes: it creates the domain (policy key, ACL guard that lets
the secret server, simpleserver and simpleclient execute, simpleserver create and
read the names under ``/simpleexample`` in the secret server, and simpleclient read
simpleserver's secret), a soft Tao host certified by the policy key, and then each
program provisions its identity through the domain service and seals it. Later runs
in the same directory show the operation phase: each program unseals what it sealed
and they talk at once.

The secret server (``taonet_services.secret_server``, what ``taonet secret-server
--soft-host`` runs) is one of the programs: its identity sealed in
``secret-server/``, its master key sealed by its Tao, its objects (encrypted) and
its audit log in ``domain/secrets.db``. simpleserver keeps its secret there, not in
a file: on the first run it asks the secret server to make
``/simpleexample/secret`` (a random key), on every run it reads the latest epoch,
and it watches ``/simpleexample``. Each run then shows an operator rotation (what
``taonet secret rotate /simpleexample/secret`` does: a request signed by the policy
key) and the watch event that brings simpleserver the new epoch at once.

Each run ends by showing a revocation reach a live channel: a second instance of
simpleclient (its own key and certificate) holds a channel open to simpleserver,
the operator revokes that certificate (what ``taonet domain revoke`` does), and
simpleserver, which keeps the domain's CRL current by long poll, closes the channel
about a second later; both ends say why, and the instance cannot connect again.

Everything runs in one process on 127.0.0.1: the domain service, the secret server,
simpleserver and simpleclient are tasks, each with the Tao a host gives a program
named by the SHA-256 of its source file. The demo's passwords are kept in the demo
directory (mode 0600) so that reruns work: a demo convenience, not how to keep a
policy key.
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import attrs
import trio

from taonet import AuthorizationError, ConfigError, ProtocolError, auth
from taonet.channel import ChannelIdentity, ChannelRevokedError, MessageStream, open_channel
from taonet.crypto import KdfParams, Signer
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.files import atomic_write
from taonet.hosts import SoftHost, Tao
from taonet.protected import ObjectId
from taonet.provision import RevocationWatcher, load_or_provision
from taonet.secrets import (
    Changed,
    InfoRequest,
    RotateRequest,
    ServerInfo,
    connect,
    sign_operator_request,
)
from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from taonet_services.secret_server import PROGRAM_FILE, Running, run_secret_server

__all__ = [
    "SECRET_SERVER_STATE",
    "STEP_TIMEOUT",
    "DemoServices",
    "PolicyKey",
    "demo_rules",
    "rotate_as_operator",
    "run_demo",
    "running_services",
]

#: The secret server's state directory, in the demo directory.
SECRET_SERVER_STATE: Final = "secret-server"  # noqa: S105 - a directory name
#: Bound on a step that waits for another program (a stuck one fails the demo).
STEP_TIMEOUT: Final = 60.0


def demo_rules(server: auth.SubPrin, client: auth.SubPrin) -> tuple[str, ...]:
    """The guard rules (besides Execute) of the demo's domain.

    simpleserver may create and read the names under ``/simpleexample`` in the secret
    server (nothing else: not Write, Delete or Own; rotation is the operator's);
    simpleclient may read simpleserver's secret (the name ``secret``, which
    simpleserver checks; it gives no right in the secret server).
    """
    tail = auth.PrinTail(server)
    prefix = simpleserver.SECRET_PREFIX
    return (
        f'Authorized({tail}, "Create", "{prefix}")',
        f'Authorized({tail}, "Read", "{prefix}")',
        f'Authorized({auth.PrinTail(client)}, "Read", "secret")',
    )


class PolicyKey:
    """The operator's policy key for the demo's rotation, unlocked in a worker thread
    while the programs start (its KDF is slow on purpose), or given when the demo has
    just unlocked it to set the domain up."""

    def __init__(self, domain: Domain, password: bytes, signer: Signer | None = None) -> None:
        self.domain = domain
        self._password = password
        self._signer = signer
        self._ready = trio.Event()
        if signer is not None:
            self._ready.set()

    async def unlock(self) -> None:
        """Unlock it (a task for a nursery; it raises what unlocking raises)."""
        if self._signer is None:
            self._signer = await trio.to_thread.run_sync(self.domain.unlock, self._password)
            self._ready.set()

    async def signer(self) -> Signer:
        """The unlocked key (waits for :meth:`unlock`)."""
        await self._ready.wait()
        assert self._signer is not None
        return self._signer


@attrs.frozen
class DemoServices:
    """The domain service and the secret server, running (see :func:`running_services`)."""

    domain_service: tuple[str, int]
    secret_server: tuple[str, int]
    secret_server_principal: auth.Prin
    running: Running


@contextlib.asynccontextmanager
async def running_services(
    base: Path, domain: Domain, host: SoftHost, password: bytes, say: Callable[[str], None]
) -> AsyncIterator[DemoServices]:
    """Run the demo's domain service and secret server (on ``host``) until the block ends."""
    with DomainService.open(domain.path, password) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            ds = ("127.0.0.1", int(listeners[0].socket.getsockname()[1]))
            _banner(say, f"Domain service on {ds[0]}:{ds[1]} as {service.principal}")
            _banner(say, f"Secret server (state in {base / SECRET_SERVER_STATE})")
            name = host.name.extend(program_subprin(measure_file(PROGRAM_FILE)))
            running: Running = await nursery.start(
                functools.partial(
                    run_secret_server,
                    host.tao_for(name),
                    domain=domain,
                    state_dir=base / SECRET_SERVER_STATE,
                    domain_service=ds,
                    say=lambda text: say(f"[secret server] {text}"),
                )
            )
            principal = running.server.identity.principal
            assert principal is not None  # a provisioned server has its certificate
            address = ("127.0.0.1", running.port)
            say(f"[secret server] serving on {address[0]}:{address[1]} as {principal}")
            yield DemoServices(ds, address, principal, running)
            nursery.cancel_scope.cancel()


def _banner(say: Callable[[str], None], text: str) -> None:
    say("")
    say(f"== {text}")


async def run_demo(
    base: Path, *, say: Callable[[str], None] = print, kdf: KdfParams | None = None
) -> bytes:
    """Run the demo in ``base`` (created if needed); returns the secret the client got."""
    base = Path(base)
    password_file = base / "demo-password"
    signer: Signer | None = None
    server_path = Path(simpleserver.__file__)
    client_path = Path(simpleclient.__file__)
    server_name = program_subprin(measure_file(server_path))
    client_name = program_subprin(measure_file(client_path))
    if not password_file.exists():
        _banner(say, f"Setting up a domain and a soft Tao host in {base}")
        base.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(16).encode()
        atomic_write(password_file, password + b"\n", mode=0o600)
        domain = Domain.create(
            base / "domain",
            DomainTemplate(
                name="simpleexample",
                rules=demo_rules(server_name, client_name),
                programs=(PROGRAM_FILE, server_path, client_path),
            ),
            password,
            kdf=kdf or KdfParams.default(),
        )
        say(f"policy key:   {domain.policy_principal}")
        for rule in domain.guard.rules:  # type: ignore[attr-defined]
            say(f"guard rule:   {rule}")
        host = SoftHost.create(base / "host", password, kdf=kdf or KdfParams.default())
        signer = domain.unlock(password)
        host.set_root_endorsement(domain.certify_host(signer, host.public_key_der()))
        say(f"soft Tao host {host.name}, certified by the policy key")
    else:
        password = password_file.read_bytes().strip()
        domain = Domain.load(base / "domain")
        host = SoftHost.load(base / "host", password)
        _check_programs(
            base,
            domain,
            host.name,
            {
                "the secret server": PROGRAM_FILE,
                "simpleserver": server_path,
                "simpleclient": client_path,
            },
        )
    state = base / "programs"
    state.mkdir(exist_ok=True)
    phase = (
        "Operation: the programs unseal their identities"
        if (state / "simpleclient.sealed").exists()
        else "Initialization: each program gets its key, attestation, certificate, sealed blobs"
    )

    epochs_in, epochs = trio.open_memory_channel[int](math.inf)
    policy_key = PolicyKey(domain, password, signer)
    async with (
        running_services(base, domain, host, password, say) as services,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(policy_key.unlock)
        ds = services.domain_service
        _banner(say, phase)
        port = await nursery.start(
            functools.partial(
                simpleserver.run_server,
                host.tao_for(host.name.extend(server_name)),
                state_dir=state,
                policy_cert=domain.policy_cert,
                domain_service=ds,
                guard=domain.guard,
                secret_server=services.secret_server,
                secret_server_principal=services.secret_server_principal,
                say=lambda text: say(f"[simpleserver] {text}"),
                on_epoch=epochs_in.send_nowait,
            )
        )
        secret = await simpleclient.run_client(
            host.tao_for(host.name.extend(client_name)),
            state_dir=state,
            policy_cert=domain.policy_cert,
            domain_service=ds,
            server=("127.0.0.1", port),
            say=lambda text: say(f"[simpleclient] {text}"),
        )
        _banner(say, "Rotation: the operator rotates simpleserver's secret; a watch tells it")
        name = simpleserver.SECRET_NAME
        say(f"[operator] taonet secret rotate {name}  (a request signed by the policy key)")
        new = await rotate_as_operator(
            domain.policy_cert,
            await policy_key.signer(),
            services.secret_server,
            services.secret_server_principal,
            name,
        )
        say(f"[operator] rotated {new.name} to epoch {new.epoch}")
        with trio.fail_after(STEP_TIMEOUT):
            async for epoch in epochs:
                if epoch >= new.epoch:
                    break
        _banner(say, "Revocation: the operator revokes a certificate while its channel is open")
        await show_revocation(
            host.tao_for(host.name.extend(client_name)),
            domain=domain,
            state_dir=state / "second-instance",
            domain_service=ds,
            server=("127.0.0.1", port),
            say=say,
        )
        nursery.cancel_scope.cancel()
    _banner(say, "Done")
    if phase.startswith("Initialization"):
        say(f"Run it again to see the operation phase reuse the sealed state in {state}.")
    return secret


def _check_programs(base: Path, domain: Domain, host: auth.Prin, programs: dict[str, Path]) -> None:
    """ConfigError unless the domain's guard lets each program run (a directory made by
    another version of the demo names other hashes)."""
    for label, path in programs.items():
        name = domain.program_name(measure_file(path), host=host)
        assert isinstance(name, auth.Prin)
        if not domain.guard.is_authorized(name, "Execute"):
            raise ConfigError(
                f"the domain in {base} was made for other versions of the programs"
                f" ({label}, {path.name}, is not allowed to run): remove that directory"
                " and run the demo again"
            )


async def rotate_as_operator(
    policy_cert: bytes,
    signer: Signer,
    address: tuple[str, int],
    server: auth.Prin,
    name: str,
) -> ObjectId:
    """What ``taonet secret rotate NAME`` does: a Rotate request signed by the policy
    key (``signer``) for the secret server ``server`` at ``address``, sent over an
    anonymous Tao channel (the operator's tool has no program certificate), for the
    store that server says it serves (an Info request first); returns the new epoch's
    id."""
    async with connect(address, ChannelIdentity.anonymous(policy_cert), server=server) as store:
        info = await store.call(InfoRequest())
        if not isinstance(info, ServerInfo):
            raise ProtocolError(f"the secret server answered Info with {type(info).__name__}")
        request = sign_operator_request(
            RotateRequest(name), signer, server=server, store=info.store_id, now_ns=time.time_ns()
        )
        answer = await store.call(request)
    if not isinstance(answer, Changed):
        raise ProtocolError(f"the secret server answered Rotate with {type(answer).__name__}")
    return answer.id


async def show_revocation(
    tao: Tao,
    *,
    domain: Domain,
    state_dir: Path,
    domain_service: tuple[str, int],
    server: tuple[str, int],
    say: Callable[[str], None],
) -> float:
    """A second simpleclient instance holds a channel; revoke its certificate; watch it close.

    Returns the seconds from the revocation to the channel closing.
    """

    def said(text: str) -> None:
        say(f"[simpleclient #2] {text}")

    shutil.rmtree(state_dir, ignore_errors=True)  # a new instance on every run
    async with trio.open_nursery() as nursery:
        # No long poll here: the instance learns of its revocation when the server
        # cuts its channel (its stream then fetches the CRL and names the reason).
        crl = RevocationWatcher(domain.policy_cert, domain_service, watch=False)
        await nursery.start(crl.run)
        provisioned = await load_or_provision(
            tao,
            state_dir / "simpleclient.sealed",
            policy_cert=domain.policy_cert,
            domain_service=domain_service,
            revocations=crl,
        )
        identity = provisioned.identity
        assert identity.certificate is not None
        serial = identity.certificate.serial
        said(f"a second instance, with its own key and certificate (serial {serial})")
        stream = await open_channel(*server, identity, revocations=crl)
        async with MessageStream(stream, max_frame=4096) as messages:
            await messages.send_message(simpleserver.SECRET_REQUEST)
            answer = await messages.receive_message()
            said(f"got {answer[:2].decode()}; keeps the channel open and waits on it")
            say(f"[operator] taonet domain revoke {serial} --reason 'demo: key leaked'")
            with AuditLog.open(domain.path / AUDIT_FILE) as audit:
                audit.revoke(serial, reason="demo: key leaked")
            revoked_at = trio.current_time()
            try:
                await messages.receive_message()
            except ChannelRevokedError as exc:
                seconds = trio.current_time() - revoked_at
                said(f"channel closed {seconds:.2f} s after the revocation: {exc}")
            else:  # pragma: no cover - the server answered a request nobody sent
                raise AssertionError("the revoked channel stayed open")
        retry = await open_channel(*server, identity)
        try:
            await retry.wait_accepted()
        except AuthorizationError as exc:
            said(f"connecting again is refused: {exc}")
        finally:
            await retry.aclose()
        nursery.cancel_scope.cancel()
    return seconds
