"""Run simpleexample end to end on a soft Tao host in a local domain directory.

The first run initializes: it creates the domain (policy key, ACL guard that lets
simpleserver and simpleclient execute and simpleclient read the secret), a soft Tao
host certified by the policy key, and then each program provisions its identity
through the domain service and seals it. Later runs in the same directory show the
operation phase: each program unseals what it sealed and they talk at once.

Each run ends by showing a revocation reach a live channel: a second instance of
simpleclient (its own key and certificate) holds a channel open to simpleserver,
the operator revokes that certificate (what ``taonet domain revoke`` does), and
simpleserver, which keeps the domain's CRL current by long poll, closes the channel
about a second later; both ends say why, and the instance cannot connect again.

Everything runs in one process on 127.0.0.1: the domain service, simpleserver and
simpleclient are tasks, each with the Tao a host gives a program named by the
SHA-256 of its source file. The demo's passwords are kept in the demo directory
(mode 0600) so that reruns work: a demo convenience, not how to keep a policy key.
"""

from __future__ import annotations

import functools
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import trio

from taonet import AuthorizationError, auth
from taonet.channel import ChannelRevokedError, MessageStream, open_channel
from taonet.crypto import KdfParams
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.files import atomic_write
from taonet.hosts import SoftHost, Tao
from taonet.provision import RevocationWatcher, load_or_provision
from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService

__all__ = ["run_demo"]


def _banner(say: Callable[[str], None], text: str) -> None:
    say("")
    say(f"== {text}")


async def run_demo(
    base: Path, *, say: Callable[[str], None] = print, kdf: KdfParams | None = None
) -> bytes:
    """Run the demo in ``base`` (created if needed); returns the secret the client got."""
    base = Path(base)
    password_file = base / "demo-password"
    server_path = Path(simpleserver.__file__)
    client_path = Path(simpleclient.__file__)
    server_name = program_subprin(measure_file(server_path))
    client_name = program_subprin(measure_file(client_path))
    if not password_file.exists():
        _banner(say, f"Setting up a domain and a soft Tao host in {base}")
        base.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(16).encode()
        atomic_write(password_file, password + b"\n", mode=0o600)
        rules = (f'Authorized({auth.PrinTail(client_name)}, "Read", "secret")',)
        domain = Domain.create(
            base / "domain",
            DomainTemplate(name="simpleexample", rules=rules, programs=(server_path, client_path)),
            password,
            kdf=kdf or KdfParams.default(),
        )
        say(f"policy key:   {domain.policy_principal}")
        for rule in domain.guard.rules:  # type: ignore[attr-defined]
            say(f"guard rule:   {rule}")
        host = SoftHost.create(base / "host", password, kdf=kdf or KdfParams.default())
        host.set_root_endorsement(
            domain.certify_host(domain.unlock(password), host.public_key_der())
        )
        say(f"soft Tao host {host.name}, certified by the policy key")
    else:
        password = password_file.read_bytes().strip()
        domain = Domain.load(base / "domain")
        host = SoftHost.load(base / "host", password)
    state = base / "programs"
    state.mkdir(exist_ok=True)
    phase = (
        "Operation: the programs unseal their identities"
        if (state / "simpleclient.sealed").exists()
        else "Initialization: each program gets its key, attestation, certificate, sealed blobs"
    )

    with DomainService.open(base / "domain", password) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            ds = ("127.0.0.1", int(listeners[0].socket.getsockname()[1]))
            _banner(say, f"Domain service on {ds[0]}:{ds[1]} as {service.principal}")
            _banner(say, phase)
            port = await nursery.start(
                functools.partial(
                    simpleserver.run_server,
                    host.tao_for(host.name.extend(server_name)),
                    state_dir=state,
                    policy_cert=domain.policy_cert,
                    domain_service=ds,
                    guard=domain.guard,
                    say=lambda text: say(f"[simpleserver] {text}"),
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
