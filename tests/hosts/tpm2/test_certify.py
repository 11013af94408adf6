"""Tpm2Host.certify against a real quote service (real domain, real Tao channel, swtpm)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio

from taonet import AuthenticationError, ConfigError, auth
from taonet.attestation import validate
from tests.conftest import MakeDomain
from tests.tpm2_helpers import serving_quote_service, trust_swtpm

if TYPE_CHECKING:
    from taonet.domain import Domain
    from taonet.hosts.tpm2 import Swtpm, Tpm2Host


@pytest.fixture
async def quote_service(make_domain: MakeDomain, swtpm: Swtpm) -> AsyncIterator[tuple[Domain, str]]:
    domain = make_domain(name="tpm-domain")
    trust_swtpm(domain, swtpm)
    async with serving_quote_service(domain, request_timeout=10.0) as (_, port):
        yield domain, f"127.0.0.1:{port}"


async def test_certify_then_attest_rooted_in_the_domain(
    host: Tpm2Host, quote_service: tuple[Domain, str], tmp_path: Path
) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    domain, address = quote_service
    with trio.fail_after(120):
        cert = await host.certify(address, policy_cert=domain.policy_cert)
    assert host.root_endorsement == cert
    att = await host.tao().attest(auth.Pred("Hello", ()))
    proven = validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)
    assert proven.speaker == host.name
    # stored: the reopened host attaches it too
    await host.aclose()
    with trio.fail_after(60):
        again = await Tpm2Host.open(tmp_path / "tpmhost")
    try:
        assert again.root_endorsement == cert
        att = await again.tao().attest(auth.Pred("Hello", ()))
        validate(att, now_ns=time.time_ns(), policy_cert=domain.policy_cert)
    finally:
        await again.aclose()


async def test_certify_refuses_another_domains_service(
    host: Tpm2Host, quote_service: tuple[Domain, str], make_domain: MakeDomain
) -> None:
    _, address = quote_service
    other = make_domain(name="other-domain")
    with pytest.raises(AuthenticationError), trio.fail_after(120):
        await host.certify(address, policy_cert=other.policy_cert)
    assert host.root_endorsement is None
    with pytest.raises(ConfigError, match="HOST:PORT"):
        await host.certify("no-port", policy_cert=other.policy_cert)
