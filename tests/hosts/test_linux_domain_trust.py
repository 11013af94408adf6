"""A Linux host trusts its domain only as the policy key signed it (issue 8, item 2).

Real root Linux hosts with real child processes and a real admin socket. The attacker
can write to the domain directory (not to the host's private directory) and edits
``domain.toml``, puts a whole other domain in its place, or puts back an earlier
configuration the policy key signed (with the files it signed, and past the domain's
own serial record); the host must refuse to start, and a running host must refuse to
start programs, instead of running what the policy never authorized or no longer does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from taonet import AuthorizationError, ConfigError, auth
from taonet.domain import ACLGuard, Domain, LiberalGuard
from taonet.hosts.linux import AdminClient, LinuxHost, LinuxHostConfig, default_host_dir
from tests.conftest import PASSWORD, MakeDomain
from tests.hosts.linux_helpers import (
    TIMEOUT,
    digest,
    init_root,
    open_root,
    run_probe,
    write_probe,
)


def policy_key(domain: Domain) -> str:
    return domain.policy_principal.key_hash.value.hex()  # type: ignore[union-attr]


def set_guard(domain: Domain, old: str, new: str) -> None:
    toml = domain.path / "domain.toml"
    text = toml.read_text()
    assert f'guard = "{old}"' in text
    toml.write_text(text.replace(f'guard = "{old}"', f'guard = "{new}"'))


def swap_in(theirs: Domain, ours: Domain) -> None:
    """Put a whole other, consistently signed domain in our domain's directory."""
    for name in ("domain.toml", "domain.sig", "acls", "policy_keys/cert.der"):
        if (theirs.path / name).exists():
            shutil.copyfile(theirs.path / name, ours.path / name)


async def start_refused(host: LinuxHost, program: Path, error: type[Exception], match: str) -> None:
    async with AdminClient.connect(host.socket_path) as admin:
        with pytest.raises(error, match=match):
            await admin.start(str(program), ["name"])
        assert await admin.list() == []


def test_init_pins_the_domains_policy_key(tmp_path: Path, make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain()
    init_root(tmp_path / "host", domain=domain)
    config = LinuxHostConfig.load(tmp_path / "host")
    assert config.policy_key == policy_key(domain)
    assert config.load_domain().policy_principal == domain.policy_principal


def test_init_refuses_a_pin_of_another_domain(tmp_path: Path, make_domain) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make_domain(), make_domain()
    config = LinuxHostConfig(kind="stacked", domain=str(ours.path), policy_key=policy_key(theirs))
    with pytest.raises(ConfigError, match="not the key"):
        LinuxHost.init(tmp_path / "host", config)
    assert not (tmp_path / "host" / "host.toml").exists()


async def test_host_does_not_start_for_a_hand_edited_domain(
    tmp_path: Path,
    make_domain: MakeDomain,
) -> None:
    domain = make_domain()
    init_root(tmp_path / "host", domain=domain)
    set_guard(domain, "ACL", "Liberal")
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match=r"domain\.guard is 'Liberal'"):
        await LinuxHost.open(tmp_path / "host", password=PASSWORD)


async def test_running_host_refuses_programs_once_the_domain_is_edited(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    allowed = write_probe(tmp_path, "allowed")
    other = write_probe(tmp_path, "other", extra="# not in the policy\n")
    domain = make_domain(programs=(allowed,))
    init_root(tmp_path / "host", domain=domain)
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        await start_refused(host, other, AuthorizationError, "Execute")
        set_guard(domain, "ACL", "Liberal")
        await start_refused(host, other, ConfigError, r"domain\.guard is 'Liberal'")
        # Fail closed: while the domain is not as signed, nothing starts.
        await start_refused(host, allowed, ConfigError, r"domain\.guard is 'Liberal'")
        set_guard(domain, "Liberal", "ACL")
        status, lines = await run_probe(host, allowed, ["name"])
        assert status == 0
        assert "Program" in lines[0]["name"]
    await host.stop()


async def test_running_host_refuses_a_whole_other_domain(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    program = write_probe(tmp_path, "program")
    ours, theirs = make_domain(), make_domain(guard="Liberal")
    init_root(tmp_path / "host", domain=ours)
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        swap_in(theirs, ours)
        # theirs is a consistent domain that would let anything run: not this host's.
        assert Domain.load(ours.path).policy_principal == theirs.policy_principal
        await start_refused(host, program, ConfigError, "not the key .* this host was set up")
        await host.stop()
        with pytest.raises(ConfigError, match="not the key"):
            await LinuxHost.open(tmp_path / "host", password=PASSWORD)


async def test_policy_changes_by_the_operator_still_apply_without_a_restart(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    program = write_probe(tmp_path, "program")
    domain = make_domain()
    init_root(tmp_path / "host", domain=domain)
    signer = domain.unlock(PASSWORD)
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        await start_refused(host, program, AuthorizationError, "Execute")
        assert isinstance(domain.guard, ACLGuard)
        rule = domain.program_rule(digest(program))
        domain.save_guard(domain.guard.with_rule(rule), signer)
        status, _ = await run_probe(host, program, ["name"])
        assert status == 0
        domain.save_guard(domain.guard.without_rule(rule), signer)
        await start_refused(host, program, AuthorizationError, "Execute")
    await host.stop()


async def test_a_host_that_pins_no_key_is_told_which_line_to_add(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    domain = make_domain()
    init_root(tmp_path / "host", domain=domain)
    toml = tmp_path / "host" / "host.toml"
    pin = f'policy_key = "{policy_key(domain)}"\n'
    text = toml.read_text()
    assert pin in text
    toml.write_text(text.replace(pin, ""))  # as a host made by an earlier taonet
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConfigError, match="pins no policy key") as info:
            await LinuxHost.open(tmp_path / "host", password=PASSWORD)
        assert pin.strip() in str(info.value)
        toml.write_text(text)
        host = await open_root(nursery, tmp_path / "host")
        await host.stop()


def test_policy_key_in_host_toml_is_checked() -> None:
    key = "ab" * 32
    config = LinuxHostConfig(kind="root", domain="/d", policy_key=key)
    assert LinuxHostConfig.from_toml(config.to_toml()) == config
    for bad in ("AB" * 32, "ab" * 31, "zz" * 32, ""):
        with pytest.raises(ConfigError, match="policy_key"):
            LinuxHostConfig.from_toml(
                f'[host]\nkind = "root"\ndomain = "/d"\npolicy_key = "{bad}"\n'.encode()
            )
    with pytest.raises(ConfigError, match="wrong type"):
        LinuxHostConfig.from_toml(b'[host]\nkind = "root"\ndomain = "/d"\npolicy_key = 1\n')


# -- rollback: an earlier signed configuration put back with the files it signed ----------


def snapshot(domain: Domain, *names: str) -> dict[str, bytes]:
    """What someone who can read the domain directory keeps for later."""
    return {name: (domain.path / name).read_bytes() for name in names}


def put_back(domain: Domain, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (domain.path / name).write_bytes(data)


def replace_policy_keys(domain: Domain) -> None:
    """Get past the domain's own serial record with write access to the domain
    directory alone: move ``policy_keys`` aside (its keyset and record stay unreadable)
    and put a new one holding only the public policy certificate."""
    cert = (domain.path / "policy_keys/cert.der").read_bytes()
    (domain.path / "policy_keys").rename(domain.path / "policy_keys.moved")
    (domain.path / "policy_keys").mkdir()
    (domain.path / "policy_keys/cert.der").write_bytes(cert)


async def test_running_host_refuses_a_domain_rolled_back_to_authorize_a_retracted_program(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    program = write_probe(tmp_path, "program")
    domain = make_domain()
    init_root(tmp_path / "host", domain=domain)
    signer = domain.unlock(PASSWORD)
    rule = domain.program_rule(digest(program))
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        assert isinstance(domain.guard, ACLGuard)
        domain.save_guard(domain.guard.with_rule(rule), signer)  # serial 2
        assert (await run_probe(host, program, ["name"]))[0] == 0
        allowed = snapshot(domain, "acls", "domain.sig")
        domain.save_guard(domain.guard.without_rule(rule), signer)  # serial 3: retracted
        await start_refused(host, program, AuthorizationError, "Execute")
        put_back(domain, allowed)
        replace_policy_keys(domain)
        # Every byte was signed by the policy key, and the domain alone accepts it now.
        name = domain.program_name(digest(program), host=host.name)
        assert isinstance(name, auth.Prin)
        Domain.load(domain.path).guard.check(name, "Execute")
        await start_refused(
            host, program, ConfigError, "rolled back: serial 2 is older than 3 seen before"
        )
        await host.stop()
        with pytest.raises(ConfigError, match=r"serial 2 is older than 3 seen before \(this host"):
            await LinuxHost.open(tmp_path / "host", password=PASSWORD)


async def test_host_init_pins_the_serial_against_a_rollback_to_liberal(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    program = write_probe(tmp_path, "program")
    domain = make_domain(guard="Liberal")
    liberal = snapshot(domain, "domain.toml", "domain.sig")  # serial 1
    set_guard(domain, "Liberal", "ACL")
    Domain.resign(domain.path, PASSWORD)  # serial 2: nothing may execute
    init_root(tmp_path / "host", domain=domain)  # never started before the attack
    put_back(domain, liberal)
    replace_policy_keys(domain)
    assert isinstance(Domain.load(domain.path).guard, LiberalGuard)
    record = tmp_path / "host" / "domain_serial"
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConfigError, match="rolled back: serial 1 is older than 2") as info:
            await LinuxHost.open(tmp_path / "host", password=PASSWORD)
        assert f"remove {record} and restart the host" in str(info.value)
        # Going back on purpose is the host owner's decision: remove the record.
        record.unlink()
        host = await open_root(nursery, tmp_path / "host")
        assert (await run_probe(host, program, ["name"]))[0] == 0
        await host.stop()
    assert "serial = 1\n" in record.read_text()


async def test_running_host_remembers_the_serial_when_its_directory_is_swapped(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    program = write_probe(tmp_path, "program")
    domain = make_domain()
    directory = default_host_dir(domain.path)  # inside the domain directory
    init_root(directory, domain=domain)
    signer = domain.unlock(PASSWORD)
    rule = domain.program_rule(digest(program))
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(domain.guard.with_rule(rule), signer)
    allowed = snapshot(domain, "acls", "domain.sig")
    domain.save_guard(domain.guard.without_rule(rule), signer)
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, directory)  # sees serial 3
        put_back(domain, allowed)
        replace_policy_keys(domain)
        # Write access to the domain directory also lets one move the host's aside.
        directory.rename(domain.path / "moved")
        directory.mkdir(mode=0o700)
        async with AdminClient.connect(domain.path / "moved" / "admin.sock") as admin:
            with pytest.raises(ConfigError, match=r"serial 2 is older than 3 .*while it runs"):
                await admin.start(str(program), ["name"], cwd=str(program.parent))
            assert await admin.list() == []
        await host.stop()


async def test_a_damaged_host_record_refuses_the_domain(
    tmp_path: Path,
    make_domain: MakeDomain,
) -> None:
    domain = make_domain()
    init_root(tmp_path / "host", domain=domain)
    (tmp_path / "host" / "domain_serial").write_bytes(b"serial = 0\n")
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="not a serial record"):
        await LinuxHost.open(tmp_path / "host", password=PASSWORD)


async def test_a_host_made_before_serial_records_gets_one_at_start(
    tmp_path: Path,
    make_domain: MakeDomain,
    nursery: trio.Nursery,
) -> None:
    domain = make_domain()
    older = snapshot(domain, "acls", "domain.sig")
    assert isinstance(domain.guard, ACLGuard)
    domain.save_guard(
        domain.guard.with_rule(domain.program_rule(b"\x01" * 32)), domain.unlock(PASSWORD)
    )
    init_root(tmp_path / "host", domain=domain)
    record = tmp_path / "host" / "domain_serial"
    assert record.stat().st_mode & 0o777 == 0o600
    record.unlink()
    with trio.fail_after(TIMEOUT):
        host = await open_root(nursery, tmp_path / "host")
        await host.stop()
    assert f'policy_key = "{policy_key(domain)}"\nserial = 2\n' in record.read_text()
    put_back(domain, older)
    replace_policy_keys(domain)
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="serial 1 is older than 2"):
        await LinuxHost.open(tmp_path / "host", password=PASSWORD)


def test_a_pinned_configuration_refuses_a_rollback_without_a_directory(make_domain) -> None:  # type: ignore[no-untyped-def]
    domain = make_domain(guard="Liberal")
    liberal = snapshot(domain, "domain.toml", "domain.sig")
    set_guard(domain, "Liberal", "ACL")
    Domain.resign(domain.path, PASSWORD)
    config, _ = LinuxHostConfig(kind="root", domain=str(domain.path)).pin_domain()
    put_back(domain, liberal)
    replace_policy_keys(domain)
    with pytest.raises(ConfigError, match=r"serial 1 is older than 2 .*while it runs"):
        config.load_domain()
