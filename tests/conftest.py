"""Shared test settings."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402

if TYPE_CHECKING:
    from taonet.domain import Domain
    from taonet.hosts import SoftHost

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
