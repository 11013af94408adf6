"""A domain, a soft host, a domain service and a secret server on 127.0.0.1, for tests.

Everything is real: TLS channels on port 0, the domain's ACL guard, program
certificates issued by a domain service, a database (SQLite file or PostgreSQL).
Client programs are named by the hash of a small file each (their "code"), so the
guard's rules can name them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from taonet import auth
from taonet.channel import ChannelIdentity
from taonet.domain import Domain, measure_file, program_subprin
from taonet.hosts import SoftHost
from taonet.provision import load_or_provision
from taonet_services.domain_service import DomainService
from taonet_services.secret_server import PROGRAM_FILE, Running, program_name, run_secret_server
from tests.conftest import PASSWORD

#: Client programs the tests use (each a file whose hash names it).
CLIENTS = ("owner", "reader", "writer", "stranger")


def program_tail(path: Path) -> str:
    """The text of ``ext.Program([hash])`` for a program file, for guard rules."""
    return str(auth.PrinTail(program_subprin(measure_file(path))))


def client_files(base: Path) -> dict[str, Path]:
    base.mkdir(parents=True, exist_ok=True)
    files = {}
    for who in CLIENTS:
        path = base / f"{who}.py"
        path.write_text(f"# the {who} program\n")
        files[who] = path
    return files


def rules_for(files: dict[str, Path], grants: Sequence[tuple[str, str, str]]) -> list[str]:
    """ACL rules: ``(who, op, name)`` -> ``Authorized(ext.Program([h]), "op", "name")``."""
    return [f'Authorized({program_tail(files[w])}, "{op}", "{name}")' for w, op, name in grants]


@attrs.define
class World:
    base: Path
    domain: Domain
    host: SoftHost
    domain_service: tuple[str, int]
    files: dict[str, Path]
    running: Running | None = None
    nursery: trio.Nursery | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.running is not None
        return ("127.0.0.1", self.running.port)

    async def identity(self, who: str) -> ChannelIdentity:
        """A client program's identity (provisioned through the domain service)."""
        tao = self.host.tao_for(
            self.host.name.extend(program_subprin(measure_file(self.files[who])))
        )
        provisioned = await load_or_provision(
            tao,
            self.base / "clients" / f"{who}.sealed",
            policy_cert=self.domain.policy_cert,
            domain_service=self.domain_service,
        )
        return provisioned.identity

    async def start_server(self, state: str = "server", **options: Any) -> Running:
        """Start (another) secret server in this world's nursery."""
        assert self.nursery is not None
        tao = self.host.tao_for(self.host.name.extend(program_name()))
        running: Running = await self.nursery.start(
            functools.partial(
                run_secret_server,
                tao,
                domain=self.domain,
                state_dir=self.base / state,
                domain_service=self.domain_service,
                **options,
            )
        )
        return running


@contextlib.asynccontextmanager
async def secret_world(
    base: Path,
    make_domain: Callable[..., Domain],
    make_host: Callable[..., SoftHost],
    *,
    grants: Sequence[tuple[str, str, str]] = (),
    start: bool = True,
    password: bytes = PASSWORD,
    **options: Any,
) -> AsyncIterator[World]:
    """A world with its domain service (and, with ``start``, a secret server) running."""
    files = client_files(base / "programs")
    domain = make_domain(rules=rules_for(files, grants), programs=(PROGRAM_FILE, *files.values()))
    host = make_host(domain)
    with DomainService.open(domain.path, password) as service:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(service.serve, 0))
            ds = ("127.0.0.1", int(listeners[0].socket.getsockname()[1]))
            world = World(base, domain, host, ds, files, nursery=nursery)
            if start:
                world.running = await world.start_server(**options)
            yield world
            nursery.cancel_scope.cancel()
