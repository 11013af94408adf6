"""Measure which hand edits of a domain directory are trusted (issue 8, item 2).

Each case makes a fresh ACL domain that authorizes one program hash (GOOD), edits its
files as someone who can write to the directory but does not hold the policy key
password would, and then uses the domain the way taonet does:

* ``certify``: ``Domain.load`` and ``ProgramCertifier.certify`` (the domain service's
  core) for a program hash the policy never authorized (BAD), or for GOOD when the
  edit is about the certificate it gets;
* ``load``: ``Domain.load`` alone (the edit should be refused, not ignored);
* ``host``: a real root Linux host, set up for the domain before the edit, asked to
  start a real program the policy never authorized.

A case is "accepted" when the edit took effect (a certificate was issued, the domain
loaded, the program ran) and "refused" otherwise. Prints one line per case, then one
JSON object with the counts. Uses only APIs that existed before the fix, so the same
script measures the old and the new code::

    .venv/bin/python -m tests.domain.measure_config_tampering
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from taonet import TaoError, auth
from taonet.crypto import KdfParams, Signer
from taonet.domain import ACLGuard, Domain, DomainTemplate, ProgramCertifier
from taonet.hosts import SoftHost
from taonet.hosts.linux import AdminClient
from tests.conftest import PASSWORD

GOOD = b"\x61" * 32
BAD = b"\x62" * 32
DAY_NS = 24 * 3600 * 10**9


def make_domain(path: Path, **fields: object) -> Domain:
    domain = Domain.create(path, DomainTemplate(**fields), PASSWORD, kdf=KdfParams.for_tests())  # type: ignore[arg-type]
    if isinstance(domain.guard, ACLGuard):
        domain.save_guard(
            domain.guard.with_rule(domain.program_rule(GOOD)), domain.unlock(PASSWORD)
        )
    return domain


def edit_toml(path: Path, old: str, new: str) -> None:
    text = (path / "domain.toml").read_text()
    assert old in text, text
    (path / "domain.toml").write_text(text.replace(old, new))


def append_toml(path: Path, text: str) -> None:
    with open(path / "domain.toml", "a") as f:
        f.write(text)


def copy_domain_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)


async def certify(domain_dir: Path, host: SoftHost, program_hash: bytes) -> str:
    """'accepted' with what was issued, or 'refused' with why."""
    try:
        domain = Domain.load(domain_dir)
        certifier = ProgramCertifier(domain, domain.unlock(PASSWORD))
        name = domain.program_name(program_hash, host=host.name)
        assert isinstance(name, auth.Prin)
        key = Signer.generate()
        att = await host.tao_for(name).attest(
            auth.Speaksfor(auth.key_principal(key.public_key_der()), name)
        )
        issued = certifier.certify(att, key.public_key_der())
    except TaoError as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    days = (issued.not_after - time.time_ns()) / DAY_NS
    return f"accepted: certificate for {program_hash.hex()[:8]}..., valid {days:.0f} days"


def load(domain_dir: Path) -> str:
    try:
        domain = Domain.load(domain_dir)
    except TaoError as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    return f"accepted: loaded, guard {domain.config.guard}, name {domain.config.name!r}"


async def host_start(tmp: Path, domain_dir: Path, edit: Callable[[], None]) -> str:
    from tests.hosts.linux_helpers import init_root, open_root, write_probe

    probe = write_probe(tmp, "unauthorized")
    init_root(tmp / "host", domain=Domain.load(domain_dir))
    edit()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            try:
                host = await open_root(nursery, tmp / "host")
            except TaoError as exc:
                return f"refused: host did not start: {type(exc).__name__}: {exc}"
            try:
                async with AdminClient.connect(host.socket_path) as admin:
                    info = await admin.start(str(probe), ["name"])
                    await admin.wait(str(info.pid))
                return f"accepted: the host ran the unauthorized program as {info.name}"
            except TaoError as exc:
                return f"refused: {type(exc).__name__}: {exc}"
            finally:
                await host.stop()


async def run_case(case: str, tmp: Path) -> str:
    victim = make_domain(tmp / "victim", name="victim")
    other = make_domain(tmp / "other", name="victim", guard="Liberal")
    host = SoftHost.create(tmp / "softhost", PASSWORD, kdf=KdfParams.for_tests())
    host.set_root_endorsement(victim.certify_host(victim.unlock(PASSWORD), host.public_key_der()))
    v = victim.path
    if case == "guard_to_liberal":
        edit_toml(v, 'guard = "ACL"', 'guard = "Liberal"')
        return await certify(v, host, BAD)
    if case == "guard_to_liberal_signed_by_other_key":
        edit_toml(v, 'guard = "ACL"', 'guard = "Liberal"')
        copy_domain_files(other.path, v, ("domain.sig",))
        return await certify(v, host, BAD)
    if case == "rule_added_to_domain_toml":
        rule = f'Authorized(ext.Program([{BAD.hex()}]), "Execute")'
        append_toml(v, f"[acl]\nrules = ['{rule}']\n")
        return load(v)
    if case == "retracted_rule_restored_from_old_acls":
        signer = victim.unlock(PASSWORD)
        assert isinstance(victim.guard, ACLGuard)
        victim.save_guard(victim.guard.with_rule(victim.program_rule(BAD)), signer)
        old = (v / "acls").read_bytes()
        victim.save_guard(victim.guard.without_rule(victim.program_rule(BAD)), signer)
        (v / "acls").write_bytes(old)
        return await certify(v, host, BAD)
    if case == "policy_cert_swapped":
        copy_domain_files(other.path, v, ("policy_keys/cert.der",))
        return load(v)
    if case == "trusted_ca_added":
        append_toml(v, '[trust]\nca_certs = ["attacker-ca.pem"]\n')
        return load(v)
    if case == "name_changed":
        edit_toml(v, 'name = "victim"', 'name = "attacker"')
        return load(v)
    if case == "program_validity_days_raised":
        edit_toml(v, "program_validity_days = 30", "program_validity_days = 36500")
        return await certify(v, host, GOOD)
    if case == "linux_host_guard_to_liberal":
        return await host_start(tmp, v, lambda: edit_toml(v, 'guard = "ACL"', 'guard = "Liberal"'))
    if case == "linux_host_whole_domain_swapped":
        files = ("domain.toml", "domain.sig", "acls", "policy_keys/cert.der")
        return await host_start(tmp, v, lambda: copy_domain_files(other.path, v, files))
    raise ValueError(case)


CASES = (
    "guard_to_liberal",
    "guard_to_liberal_signed_by_other_key",
    "rule_added_to_domain_toml",
    "retracted_rule_restored_from_old_acls",
    "policy_cert_swapped",
    "trusted_ca_added",
    "name_changed",
    "program_validity_days_raised",
    "linux_host_guard_to_liberal",
    "linux_host_whole_domain_swapped",
)


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            results[case] = await run_case(case, Path(tmp))
        print(f"{case:40} {results[case]}", flush=True)
    accepted = sorted(c for c, r in results.items() if r.startswith("accepted"))
    print(
        json.dumps(
            {"cases": len(CASES), "accepted": len(accepted), "accepted_cases": accepted},
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    sys.exit(trio.run(main))
