"""The demo's secret lives in the secret server, and its guard gives no program more than it needs.

* The client's secret is the secret server's object: read back by the operator at
  each epoch, released to simpleserver (audit log, chain verified), on disk nowhere
  in the clear, and no local secret file.
* simpleclient, allowed to ask simpleserver for the secret, asks the secret server
  directly: refused (and audited). simpleserver, which may create and read under
  ``/simpleexample``, tries to rotate, overwrite, delete, or create elsewhere:
  refused (and audited); rotation is the operator's.
* Another program of the domain serves the secret server protocol at the address
  simpleserver is given: simpleserver refuses it (it names the principal it expects),
  so it never takes a secret from, nor creates its secret in, an impostor.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from taonet import AuthenticationError
from taonet.channel import ChannelIdentity
from taonet.crypto import KdfParams
from taonet.domain import Domain, measure_file, program_subprin
from taonet.hosts import SoftHost
from taonet.protected import SecretObject, Status
from taonet.provision import load_or_provision
from taonet.secrets import (
    InfoRequest,
    InvalidRequestError,
    ReadRequest,
    SecretStore,
    ServerInfo,
    UnauthorizedError,
    connect,
    sign_operator_request,
)
from taonet_examples.simpleexample import simpleclient, simpleserver
from taonet_examples.simpleexample.demo import DemoServices, run_demo, running_services
from taonet_services.secret_server import DB_FILE, Running, run_secret_server
from taonet_services.storage import AuditStore, Database

NAME = simpleserver.SECRET_NAME


def _quiet(_: str) -> None:
    """Say nothing (the demo's lines are another test's)."""


def _load(base: Path) -> tuple[Domain, SoftHost, bytes]:
    password = (base / "demo-password").read_bytes().strip()
    return Domain.load(base / "domain"), SoftHost.load(base / "host", password), password


def _principal(domain: Domain, host: SoftHost, module: ModuleType) -> str:
    return str(domain.program_name(measure_file(Path(module.__file__ or "")), host=host.name))


async def _identity(
    base: Path, domain: Domain, host: SoftHost, services: DemoServices, module: ModuleType
) -> ChannelIdentity:
    """The demo program's own identity, unsealed from the demo's state as it does."""
    path = Path(module.__file__ or "")
    tao = host.tao_for(host.name.extend(program_subprin(measure_file(path))))
    provisioned = await load_or_provision(
        tao,
        base / "programs" / f"{path.stem}.sealed",
        policy_cert=domain.policy_cert,
        domain_service=services.domain_service,
    )
    return provisioned.identity


async def _audit(domain: Domain) -> list[Any]:
    db = await Database.open(f"sqlite:///{domain.path / DB_FILE}")
    try:
        store = await AuditStore.open(db)
        await store.verify()  # the chain is whole
        return await store.entries()
    finally:
        await db.aclose()


def _files_holding(base: Path, needles: list[bytes]) -> list[Path]:
    """The files under ``base`` that hold any of ``needles``."""
    files = (p for p in base.rglob("*") if p.is_file())
    return [p for p in files if any(needle in p.read_bytes() for needle in needles)]


async def test_the_clients_secret_is_the_secret_servers_object(tmp_path: Path) -> None:
    with trio.fail_after(90):
        secret1 = await run_demo(tmp_path, say=_quiet, kdf=KdfParams.for_tests())
        secret2 = await run_demo(tmp_path, say=_quiet)
    # No local secret file, and the secret is nowhere on disk in the clear.
    assert not (tmp_path / "programs" / "simpleserver.secret").exists()
    needles = [secret1, secret2, secret1.hex().encode(), secret2.hex().encode()]
    assert _files_holding(tmp_path, needles) == []
    domain, host, password = _load(tmp_path)
    signer = domain.unlock(password)
    with trio.fail_after(60):
        async with (
            running_services(tmp_path, domain, host, password, _quiet) as services,
            connect(
                services.secret_server,
                ChannelIdentity.anonymous(domain.policy_cert),
                server=services.secret_server_principal,
            ) as operator,
        ):
            info = await operator.call(InfoRequest())
            assert isinstance(info, ServerInfo)

            async def read(epoch: int) -> SecretObject:
                request = sign_operator_request(
                    ReadRequest(NAME, epoch),
                    signer,
                    server=services.secret_server_principal,
                    store=info.store_id,
                    now_ns=time.time_ns(),
                )
                answer = await operator.call(request)
                assert isinstance(answer, SecretObject)
                return answer

            epochs = [await read(epoch) for epoch in (1, 2, 3)]
    # Each run's client got the epoch simpleserver read; each run rotated once.
    assert epochs[0].value == secret1
    assert epochs[1].value == secret2
    assert epochs[2].value not in (secret1, secret2)
    assert [e.status for e in epochs] == [Status.RETIRED, Status.RETIRED, Status.ACTIVE]
    entries = await _audit(domain)
    server = _principal(domain, host, simpleserver)
    created = [e for e in entries if e.kind == "secret_created"]
    assert [(e.actor, e.subject) for e in created] == [(server, f"{NAME}#1")]
    rotated = [e for e in entries if e.kind == "secret_rotated"]
    assert [e.subject for e in rotated] == [f"{NAME}#2", f"{NAME}#3"]
    assert {e.actor for e in rotated} == {str(domain.policy_principal)}  # the operator
    released = {e.subject for e in entries if e.kind == "secret_released" and e.actor == server}
    assert released == {f"{NAME}#1", f"{NAME}#2", f"{NAME}#3"}


async def test_no_program_gets_more_than_the_demo_guard_gives(tmp_path: Path) -> None:
    with trio.fail_after(60):
        await run_demo(tmp_path, say=_quiet, kdf=KdfParams.for_tests())
    domain, host, password = _load(tmp_path)
    client = _principal(domain, host, simpleclient)
    server = _principal(domain, host, simpleserver)
    with trio.fail_after(60):
        async with running_services(tmp_path, domain, host, password, _quiet) as services:

            @contextlib.asynccontextmanager
            async def as_program(module: ModuleType) -> AsyncIterator[SecretStore]:
                identity = await _identity(tmp_path, domain, host, services, module)
                async with connect(
                    services.secret_server, identity, server=services.secret_server_principal
                ) as store:
                    yield store

            # simpleclient may ask simpleserver for the secret, not the secret server.
            async with as_program(simpleclient) as store:
                attempts: list[Callable[[], Awaitable[object]]] = [
                    functools.partial(store.read, NAME),
                    functools.partial(store.read, NAME, 1),
                    functools.partial(store.create, "/simpleexample/mine"),
                    functools.partial(store.rotate, NAME),
                ]
                for attempt in attempts:
                    with pytest.raises(UnauthorizedError):
                        await attempt()
                with contextlib.suppress(InvalidRequestError):  # nothing readable in a scan
                    assert NAME not in await store.list("/")
            # simpleserver reads its secret; it may not rotate, overwrite or delete it,
            # nor create outside its prefix.
            async with as_program(simpleserver) as store:
                assert (await store.read(NAME)).id.epoch == 2
                attempts = [
                    functools.partial(store.rotate, NAME),
                    functools.partial(store.write, NAME, b"x" * 32),
                    functools.partial(store.delete, NAME),
                    functools.partial(store.create, "/other/secret"),
                ]
                for attempt in attempts:
                    with pytest.raises(UnauthorizedError):
                        await attempt()
    refused = {(e.actor, e.details["op"]) for e in await _audit(domain) if e.outcome == "refused"}
    assert {(client, "Read"), (client, "Create"), (client, "Own")} <= refused
    assert {(server, "Own"), (server, "Write"), (server, "Delete"), (server, "Create")} <= refused
    assert not any(e.kind == "secret_released" and e.actor == client for e in await _audit(domain))


async def test_simpleserver_refuses_another_program_posing_as_the_secret_server(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        await run_demo(tmp_path, say=_quiet, kdf=KdfParams.for_tests())
    domain, host, password = _load(tmp_path)
    said: list[str] = []
    with trio.fail_after(60):
        async with (
            running_services(tmp_path, domain, host, password, _quiet) as services,
            trio.open_nursery() as nursery,
        ):
            # simpleclient's code is allowed to run in the domain: it gets a certificate
            # and serves the secret server protocol with a database of its own.
            client_file = Path(simpleclient.__file__ or "")
            impostor: Running = await nursery.start(
                functools.partial(
                    run_secret_server,
                    host.tao_for(host.name.extend(program_subprin(measure_file(client_file)))),
                    domain=domain,
                    state_dir=tmp_path / "impostor",
                    domain_service=services.domain_service,
                    db_url=f"sqlite:///{tmp_path / 'impostor.db'}",
                )
            )
            server_file = Path(simpleserver.__file__ or "")
            caught: list[AuthenticationError] = []
            try:
                await simpleserver.run_server(
                    host.tao_for(host.name.extend(program_subprin(measure_file(server_file)))),
                    state_dir=tmp_path / "programs",
                    policy_cert=domain.policy_cert,
                    domain_service=services.domain_service,
                    guard=domain.guard,
                    secret_server=("127.0.0.1", impostor.port),
                    secret_server_principal=services.secret_server_principal,
                    say=said.append,
                )
            except* AuthenticationError as group:
                caught.extend(e for e in group.exceptions if isinstance(e, AuthenticationError))
            nursery.cancel_scope.cancel()
    (error,) = caught
    assert f"not {services.secret_server_principal}" in str(error)
    assert not any("read its secret" in line or "serving" in line for line in said)
    # The impostor never saw a request: its database holds no object and no release.
    db = await Database.open(f"sqlite:///{tmp_path / 'impostor.db'}")
    try:
        store = await AuditStore.open(db)
        assert not [e for e in await store.entries() if e.kind.startswith("secret_")]
    finally:
        await db.aclose()
