"""The soft Tao host: sealing, shared secrets and attestation bound to the caller."""

from __future__ import annotations

import stat
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taonet import AuthenticationError, ConfigError, HostError, auth
from taonet.attestation import UNROOTED, validate
from taonet.crypto import KdfParams, Keyset
from taonet.hosts import SoftHost, SoftTao, Tao
from tests.conftest import PASSWORD
from tests.tao_doubles import program


async def test_soft_tao_is_a_tao(host: SoftHost) -> None:
    tao = host.tao_for()
    assert isinstance(tao, Tao)
    assert await tao.get_tao_name() == host.name
    assert host.name.type == "key"


@pytest.mark.parametrize("policy", ["self", "few", "any"])
async def test_seal_unseal_round_trip(host: SoftHost, policy: str) -> None:
    tao = host.tao_for(program(host.name, 1))
    for data in (b"", b"x", bytes(range(256)) * 40):
        assert await tao.unseal(await tao.seal(data, policy)) == (data, policy)


async def test_default_policy_is_self(host: SoftHost) -> None:
    tao = host.tao_for(program(host.name, 1))
    assert (await tao.unseal(await tao.seal(b"d")))[1] == "self"


@pytest.mark.parametrize("policy", ["self", "few"])
async def test_another_program_cannot_unseal(host: SoftHost, policy: str) -> None:
    sealed = await host.tao_for(program(host.name, 1)).seal(b"secret", policy)
    with pytest.raises(HostError, match="bound to another principal"):
        await host.tao_for(program(host.name, 2)).unseal(sealed)
    # Nor can the host itself, nor a sub-principal of the sealer.
    with pytest.raises(HostError, match="bound to another principal"):
        await host.tao_for().unseal(sealed)
    child = program(host.name, 1).extend(auth.PrinExt("Child", ()))
    with pytest.raises(HostError, match="bound to another principal"):
        await host.tao_for(child).unseal(sealed)


async def test_any_policy_opens_for_every_program_on_the_host(make_host) -> None:  # type: ignore[no-untyped-def]
    host, other_host = make_host(), make_host()
    sealed = await host.tao_for(program(host.name, 1)).seal(b"shared", "any")
    assert await host.tao_for(program(host.name, 2)).unseal(sealed) == (b"shared", "any")
    with pytest.raises(HostError):
        await other_host.tao_for(program(other_host.name, 1)).unseal(sealed)


async def test_extending_the_name_changes_what_may_be_unsealed(host: SoftHost) -> None:
    tao = host.tao_for(program(host.name, 1))
    sealed = await tao.seal(b"before")
    await tao.extend_tao_name(auth.SubPrin((auth.PrinExt("PolicyKey", (auth.Bytes(b"k"),)),)))
    assert (await tao.get_tao_name()).ext.exts[-1].name == "PolicyKey"
    with pytest.raises(HostError):
        await tao.unseal(sealed)


async def test_sealed_by_another_host_is_refused(make_host) -> None:  # type: ignore[no-untyped-def]
    a, b = make_host(), make_host()
    sealed = await a.tao_for().seal(b"x", "any")
    with pytest.raises(HostError):
        await b.tao_for().unseal(sealed)


@pytest.mark.parametrize("policy", ["", "SELF", "all", "self "])
async def test_unknown_policy_is_refused(host: SoftHost, policy: str) -> None:
    tao = host.tao_for()
    with pytest.raises(HostError, match="unknown policy"):
        await tao.seal(b"x", policy)
    with pytest.raises(HostError, match="unknown policy"):
        await tao.get_shared_secret(16, policy)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_flipped_byte_fails_unseal(host: SoftHost, data: st.DataObject) -> None:
    tao = host.tao_for(program(host.name, 1))
    sealed = await tao.seal(b"the secret", "self")
    position = data.draw(st.integers(0, len(sealed) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(sealed)
    tampered[position] ^= mask
    with pytest.raises(HostError):
        await tao.unseal(bytes(tampered))


async def test_truncated_and_garbage_sealed_data(host: SoftHost) -> None:
    tao = host.tao_for()
    sealed = await tao.seal(b"the secret")
    for end in range(len(sealed)):
        with pytest.raises(HostError):
            await tao.unseal(sealed[:end])
    with pytest.raises(HostError):
        await tao.unseal(sealed + b"\x00")


async def test_host_restart_keeps_sealed_data_and_secrets(host: SoftHost) -> None:
    tao = host.tao_for(program(host.name, 1))
    sealed = await tao.seal(b"persist")
    secret = await tao.get_shared_secret(32)
    assert host._directory is not None
    again = SoftHost.load(host._directory, PASSWORD)
    assert again.name == host.name
    tao2 = again.tao_for(program(host.name, 1))
    assert await tao2.unseal(sealed) == (b"persist", "self")
    assert await tao2.get_shared_secret(32) == secret


def test_wrong_password_is_one_clear_error(host: SoftHost) -> None:
    assert host._directory is not None
    with pytest.raises(ConfigError):
        SoftHost.load(host._directory, b"wrong password")


def test_keys_file_is_private(host: SoftHost) -> None:
    assert host._directory is not None
    mode = stat.S_IMODE((host._directory / "keys").stat().st_mode)
    assert mode == 0o600


def test_create_refuses_to_overwrite(host: SoftHost) -> None:
    assert host._directory is not None
    with pytest.raises(ConfigError, match="already"):
        SoftHost.create(host._directory, PASSWORD, kdf=KdfParams.for_tests())


async def test_shared_secrets(host: SoftHost) -> None:
    p1, p2 = host.tao_for(program(host.name, 1)), host.tao_for(program(host.name, 2))
    s1 = await p1.get_shared_secret(32)
    assert len(s1) == 32
    assert s1 == await p1.get_shared_secret(32)
    assert s1 != await p2.get_shared_secret(32)
    assert s1 != await p1.get_shared_secret(32, "any")
    assert await p1.get_shared_secret(32, "any") == await p2.get_shared_secret(32, "any")
    assert (await p1.get_shared_secret(64))[:32] == s1  # HKDF output is a stream
    assert await p1.get_shared_secret(0) == b""
    for bad in (-1, 255 * 32 + 1):
        with pytest.raises(HostError):
            await p1.get_shared_secret(bad)


async def test_random_bytes(host: SoftHost) -> None:
    tao = host.tao_for()
    a, b = await tao.get_random_bytes(32), await tao.get_random_bytes(32)
    assert len(a) == 32
    assert a != b
    with pytest.raises(HostError):
        await tao.get_random_bytes(-1)


async def test_attest_speaks_for_the_caller(host: SoftHost, now_ns: int) -> None:
    me = program(host.name, 1)
    tao = host.tao_for(me)
    message = auth.Pred("Ready", ())
    proven = validate(await tao.attest(message), now_ns=time.time_ns(), policy_cert=UNROOTED)
    assert proven.speaker == me
    sub = me.extend(auth.PrinExt("Worker", (auth.Int(1),)))
    att = await tao.attest(message, issuer=sub)
    assert validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED).speaker == sub
    with pytest.raises(HostError, match="not"):
        await tao.attest(message, issuer=program(host.name, 2))
    with pytest.raises(HostError):
        await tao.attest(message, issuer=host.name)  # the parent is not the caller


async def test_attest_times(host: SoftHost, now_ns: int) -> None:
    att = await host.tao_for().attest(auth.Const(True), time=now_ns, expiration=now_ns + 5)
    says = att.statement()
    assert (says.time, says.expiration) == (now_ns, now_ns + 5)


def test_caller_must_be_hosted(make_host) -> None:  # type: ignore[no-untyped-def]
    a, b = make_host(), make_host()
    with pytest.raises(HostError, match="not this host"):
        SoftTao(a, b.name)
    with pytest.raises(HostError, match="not this host"):
        a.seal_for(b.name, b"x")


def test_endorsement_for_another_key_is_refused(make_domain, make_host) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    certified, other = make_host(domain), make_host()
    assert certified.root_endorsement is not None
    with pytest.raises(ConfigError, match="another key"):
        other.set_root_endorsement(certified.root_endorsement)


def test_endorsement_survives_restart(make_domain, make_host) -> None:  # type: ignore[no-untyped-def]
    host = make_host(make_domain())
    assert host._directory is not None
    assert SoftHost.load(host._directory, PASSWORD).root_endorsement == host.root_endorsement


# -- a SoftHost as the key core of a stacked host --------------------------------------------


def new_keyset() -> Keyset:
    return Keyset.generate(curve="P-256", crypter=True, deriving=True)


async def test_default_name_is_the_key_principal_and_nothing_is_delegated(host: SoftHost) -> None:
    assert host.name == host.key_principal == auth.key_principal(host.public_key_der())
    assert host.delegation is None
    att = await host.tao_for().attest(auth.Const(True))
    assert att.serialized_delegation is None


async def test_a_core_speaks_for_the_name_its_parent_gave(host: SoftHost) -> None:
    given = program(host.name, 5)
    keyset = new_keyset()
    key_prin = auth.key_principal(keyset.signer.public_key_der())
    delegation = await host.tao_for(given).attest(
        auth.Speaksfor(delegate=key_prin, delegator=given)
    )
    core = SoftHost(keyset, name=given, delegation=delegation)
    assert core.name == given
    assert core.key_principal == key_prin
    assert core.delegation == delegation

    child = given.extend(auth.PrinExt("Program", (auth.Bytes(b"\x07" * 32),)))
    form = auth.Pred("Ready", ())
    att = await core.tao_for(child).attest(form)
    assert att.serialized_delegation == delegation.to_bytes()
    proven = validate(att, now_ns=time.time_ns(), policy_cert=UNROOTED)
    assert (proven.speaker, proven.message) == (child, form)
    assert proven.signer == key_prin
    assert proven.root_signer == host.name

    # Without the delegation the key alone does not speak for the given name.
    bare = SoftHost(keyset, name=given)
    with pytest.raises(AuthenticationError):
        validate(
            await bare.tao_for(child).attest(form), now_ns=time.time_ns(), policy_cert=UNROOTED
        )
    # The core serves only its given name and what it hosts.
    with pytest.raises(HostError, match="not this host"):
        core.tao_for(key_prin)
    with pytest.raises(HostError, match="not this host"):
        core.seal_for(program(host.name, 6), b"x")
    # Sealing is bound to the given name: a core with the same keys but another name
    # cannot open it.
    sealed = await core.tao_for(child).seal(b"data")
    with pytest.raises(HostError, match="bound to another principal"):
        SoftHost(keyset).unseal_for(key_prin, sealed)


def test_a_name_must_be_a_principal() -> None:
    with pytest.raises(ConfigError, match="principal"):
        SoftHost(new_keyset(), name="key([00])")  # type: ignore[arg-type]


async def test_counters_are_opened_once_and_stored_with_the_host(host: SoftHost) -> None:
    assert host.counters is None
    with trio.fail_after(10):
        counters = await host.open_counters()
        assert await host.open_counters() is counters
        assert host.counters is counters
        assert not counters.rollback_protected
        tao = host.tao_for(program(host.name, 1))
        await tao.init_counter("c", 3)
        assert await tao.get_counter("c") == 3
    assert host._directory is not None
    path = host._directory / "counters.sealed"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_a_host_without_a_directory_keeps_counters_in_memory() -> None:
    host = SoftHost(new_keyset())
    tao = host.tao_for(program(host.name, 1))
    with trio.fail_after(10):
        blob = await tao.rollback_protected_seal("c", b"mem")
        assert await tao.get_counter("c") == 1
        assert await tao.rollback_protected_unseal(blob) == (b"mem", "self")
        counters = await host.open_counters()
        assert counters.store.rollback_protected is False


async def test_attest_refuses_times_without_a_default_expiration(make_host) -> None:  # type: ignore[no-untyped-def]
    tao = make_host().tao_for()
    with pytest.raises(HostError, match="default validity"):
        await tao.attest(auth.Pred("P", ()), time=2**63 - 1)
    with pytest.raises(HostError, match="int64"):
        await tao.attest(auth.Pred("P", ()), time=2**63)
    att = await tao.attest(auth.Pred("P", ()), time=2**63 - 10, expiration=2**63 - 1)
    assert att.statement().expiration == 2**63 - 1
