"""A domain is only as safe as its directory: one that others can write is refused.

Whoever can write the domain directory (but not ``policy_keys/``) could rename
``policy_keys`` aside, make a new one without ``config_serial`` whose ``cert.der`` and
``keys`` are symbolic links into the old one, and put back an earlier ``domain.sig`` and
``acls``: a retracted program authorized again. ``Domain.load`` now refuses a domain
whose directory or ``policy_keys`` is a symbolic link, writable by group or others, or
owned by anyone but the process's user or root, and reads the files of ``policy_keys``
without following symbolic links.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from taonet import ConfigError
from taonet.crypto import KdfParams
from taonet.domain import ACLGuard, Domain, DomainTemplate
from tests.conftest import PASSWORD, MakeDomain

ATTACKER = 4000
TIMEOUT = 30
# The attacker cannot reach the venv's interpreter; the attack needs only os and sys.
_SYSTEM_PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to give the domain directory to another uid"
)

# Run as the attacker: put back the earlier domain.sig and acls, then replace
# policy_keys (renamed aside: the domain directory is the attacker's) by one without
# config_serial whose cert.der and keys are links into the old one.
_ATTACK = """
import os, sys
root = sys.argv[1]
for name in ("domain.sig", "acls"):
    with open(os.path.join(root, name + ".new"), "wb") as f:
        f.write(bytes.fromhex(sys.argv[2 if name == "domain.sig" else 3]))
    os.replace(os.path.join(root, name + ".new"), os.path.join(root, name))
os.rename(os.path.join(root, "policy_keys"), os.path.join(root, ".pk_old"))
os.mkdir(os.path.join(root, "policy_keys"), 0o755)
for name in ("cert.der", "keys"):
    os.symlink("../.pk_old/" + name, os.path.join(root, "policy_keys", name))
print("replaced", os.getuid())
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that another uid can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="taonet-domain-dir-"))
    try:
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _revoked_domain(root: Path) -> tuple[Domain, dict[str, bytes]]:
    """An ACL domain whose program was allowed (serial 2), then revoked (serial 3);
    returns it and the files of serial 2."""
    domain = Domain.create(root, DomainTemplate(guard="ACL"), PASSWORD, kdf=KdfParams.for_tests())
    signer = domain.unlock(PASSWORD)
    guard = domain.guard
    assert isinstance(guard, ACLGuard)
    domain.save_guard(guard.with_rule(domain.program_rule(b"\x11" * 32)), signer)
    old = {name: (root / name).read_bytes() for name in ("domain.sig", "acls")}
    assert Domain.load(root).config_serial == 2
    domain.save_guard(guard, signer)
    domain = Domain.load(root)
    assert domain.config_serial == 3
    return domain, old


@needs_root
async def test_rollback_by_the_owner_of_the_domain_directory_is_refused(
    shared_dir: Path,
) -> None:
    root = shared_dir / "dom"
    _, old = _revoked_domain(root)
    # The reviewer's setup: the attacker owns the domain directory (and its parent),
    # root owns policy_keys and its files.
    os.chown(shared_dir, ATTACKER, ATTACKER)
    os.chown(root, ATTACKER, ATTACKER)
    for name in ("domain.sig", "acls"):
        os.chown(root / name, ATTACKER, ATTACKER)
    with trio.fail_after(TIMEOUT):
        attack = await trio.run_process(
            [
                _SYSTEM_PYTHON,
                "-I",
                "-c",
                _ATTACK,
                str(root),
                old["domain.sig"].hex(),
                old["acls"].hex(),
            ],
            user=ATTACKER,
            group=ATTACKER,
            extra_groups=[],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert attack.returncode == 0, attack.stderr.decode()
    assert attack.stdout.decode().strip() == f"replaced {ATTACKER}"
    assert not (root / "policy_keys" / "config_serial").exists()
    with pytest.raises(ConfigError, match=rf"{root}: refused: it belongs to uid 4000"):
        Domain.load(root)
    with pytest.raises(ConfigError, match=r"refused"):
        Domain.resign(root, PASSWORD)
    # Even with the domain directory given back to root, the attacker's policy_keys
    # is refused, and so are its links.
    os.chown(root, 0, 0)
    with pytest.raises(ConfigError, match=rf"{root / 'policy_keys'}: refused: it belongs to uid"):
        Domain.load(root)
    os.chown(root / "policy_keys", 0, 0)
    with pytest.raises(ConfigError, match=r"cert.der: refused: it is a symbolic link"):
        Domain.load(root)


def test_symlinked_policy_files_are_refused(make_domain: MakeDomain) -> None:
    domain: Domain = make_domain(guard="ACL")
    keys = domain.path / "policy_keys"
    Domain.load(domain.path).unlock(PASSWORD)
    # cert.der: a link to an identical copy is refused all the same.
    shutil.copyfile(keys / "cert.der", domain.path / "cert.copy")
    (keys / "cert.der").unlink()
    (keys / "cert.der").symlink_to(domain.path / "cert.copy")
    with pytest.raises(ConfigError, match=r"cert.der: refused: it is a symbolic link"):
        Domain.load(domain.path)
    os.replace(domain.path / "cert.copy", keys / "cert.der")
    loaded = Domain.load(domain.path)
    # keys
    os.rename(keys / "keys", domain.path / "keys.copy")
    (keys / "keys").symlink_to(domain.path / "keys.copy")
    with pytest.raises(ConfigError, match=r"keys: refused: it is a symbolic link"):
        loaded.unlock(PASSWORD)
    os.replace(domain.path / "keys.copy", keys / "keys")
    loaded.unlock(PASSWORD)
    # config_serial: a link (to a lower record, say) is refused, not read through.
    os.rename(keys / "config_serial", domain.path / "serial.copy")
    (keys / "config_serial").symlink_to(domain.path / "serial.copy")
    with pytest.raises(ConfigError, match=r"config_serial: refused: it is a symbolic link"):
        Domain.load(domain.path)


@pytest.mark.parametrize("which", ["domain", "policy_keys"])
@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_directory_writable_by_group_or_others_is_refused(
    make_domain: MakeDomain, which: str, mode: int
) -> None:
    domain: Domain = make_domain()
    directory = domain.path if which == "domain" else domain.path / "policy_keys"
    os.chmod(directory, mode)
    with pytest.raises(ConfigError, match=rf"{directory}: refused: it is writable by"):
        Domain.load(domain.path)
    os.chmod(directory, 0o755)
    Domain.load(domain.path)


def test_a_symlinked_directory_is_refused(make_domain: MakeDomain, tmp_path: Path) -> None:
    domain: Domain = make_domain()
    link = tmp_path / "link"
    link.symlink_to(domain.path)
    with pytest.raises(ConfigError, match=r"link: refused: it is a symbolic link"):
        Domain.load(link)
    keys = domain.path / "policy_keys"
    os.rename(keys, domain.path / "pk")
    keys.symlink_to(domain.path / "pk")
    with pytest.raises(ConfigError, match=r"policy_keys: refused: it is a symbolic link"):
        Domain.load(domain.path)


def test_create_makes_directories_that_load_even_with_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        domain = Domain.create(
            tmp_path / "d", DomainTemplate(), PASSWORD, kdf=KdfParams.for_tests()
        )
    finally:
        os.umask(old)
    assert os.stat(domain.path).st_mode & 0o777 == 0o755
    assert os.stat(domain.path / "policy_keys").st_mode & 0o777 == 0o700
    Domain.load(domain.path).unlock(PASSWORD)


def test_create_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(
        ConfigError, match=r"refused: it is writable by its group and others \(mode 0777"
    ):
        Domain.create(root, DomainTemplate(), PASSWORD, kdf=KdfParams.for_tests())
    assert not (root / "policy_keys" / "keys").exists()
