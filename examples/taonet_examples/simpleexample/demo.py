"""Run simpleexample end to end on a soft Tao host in a local domain directory.

The first run initializes: it creates the domain (policy key, ACL guard that lets
simpleserver and simpleclient execute and simpleclient read the secret), a soft Tao
host certified by the policy key, and then each program provisions its identity
through the domain service and seals it. Later runs in the same directory show the
operation phase: each program unseals what it sealed and they talk at once.

Everything runs in one process on 127.0.0.1: the domain service, simpleserver and
simpleclient are tasks, each with the Tao a host gives a program named by the
SHA-256 of its source file. The demo's passwords are kept in the demo directory
(mode 0600) so that reruns work: a demo convenience, not how to keep a policy key.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from pathlib import Path

import trio

from taonet import auth
from taonet.crypto import KdfParams
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.files import atomic_write
from taonet.hosts import SoftHost
from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_services.domain_service import DomainService

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

    service = DomainService.open(base / "domain", password)
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
        nursery.cancel_scope.cancel()
    _banner(say, "Done")
    if phase.startswith("Initialization"):
        say(f"Run it again to see the operation phase reuse the sealed state in {state}.")
    return secret
