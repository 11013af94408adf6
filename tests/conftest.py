"""Shared test settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: The swtpm fixtures (swtpm, swtpm_tcti, swtpm_ca_pems, fresh_swtpm) for every test.
pytest_plugins = ["tests.tpm2_fixtures"]

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from taonet.domain import Domain
    from taonet.hosts import SoftHost
    from tests.pg import PgServer

#: The ``make_domain`` fixture: a fresh domain, template fields as keywords.
MakeDomain = Callable[..., "Domain"]
#: The ``make_host`` fixture: a fresh soft host, certified by the domain passed.
MakeHost = Callable[..., "SoftHost"]

PASSWORD = b"correct horse battery staple"


@pytest.fixture
def now_ns() -> int:
    return time.time_ns()


@pytest.fixture
def make_domain(tmp_path: Path) -> MakeDomain:
    """Create a domain directory (cheap KDF) with a template's fields overridden."""
    from taonet.crypto import KdfParams
    from taonet.domain import Domain, DomainTemplate

    counter = iter(range(1000))

    def make(**fields: Any) -> Domain:
        return Domain.create(
            tmp_path / f"domain{next(counter)}",
            DomainTemplate(**fields),
            PASSWORD,
            kdf=KdfParams.for_tests(),
        )

    return make


@pytest.fixture
def make_host(tmp_path: Path) -> MakeHost:
    """Create a soft host directory (cheap KDF), optionally certified by a domain."""
    from taonet.crypto import KdfParams
    from taonet.hosts import SoftHost

    counter = iter(range(1000))

    def make(domain: Domain | None = None) -> SoftHost:
        host = SoftHost.create(
            tmp_path / f"host{next(counter)}", PASSWORD, kdf=KdfParams.for_tests()
        )
        if domain is not None:
            host.set_root_endorsement(
                domain.certify_host(domain.unlock(PASSWORD), host.public_key_der())
            )
        return host

    return make


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """A real PostgreSQL 15 for the session (see tests/pg.py); skips (fails in CI) without it."""
    from tests.pg import PgServer, binaries_or_skip

    binaries_or_skip()
    server = PgServer()
    try:
        server.start()
        server.create_template()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL; its URL (unix socket, role postgres)."""
    url = postgres_server.fresh_database()
    yield url
    postgres_server.drop_database(url)
