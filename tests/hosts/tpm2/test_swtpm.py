"""The throwaway swtpm: creation, EK certificates from its private CA, stop and restart."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from taonet import ConfigError, HostError
from tests.tpm2_fixtures import tpm2_or_skip
from tests.tpm2_helpers import make_ca

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

T = TypeVar("T")
TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
# Where swtpm_setup / our P-256 step put the EK certificates.
EK_INDICES = (0x01C0000A, 0x01C00002, 0x01C00016)


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    """A blocking TPM call, as the host makes it: in a worker thread, bounded."""
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(lambda: fn(*args))


def chains_to(cert: x509.Certificate, pems: tuple[bytes, bytes]) -> None:
    root, intermediate = (x509.load_pem_x509_certificate(p) for p in pems)
    cert.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    now = datetime.datetime.now(datetime.UTC)
    for c in (cert, intermediate, root):
        assert c.not_valid_before_utc <= now <= c.not_valid_after_utc
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert TCG_KP_EK_CERTIFICATE in eku


def running(pid: int) -> bool:
    """Whether ``pid`` runs (an exited swtpm may stay a zombie until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def test_tcti_and_ca(
    swtpm: Swtpm, swtpm_tcti: str, swtpm_ca_pems: tuple[bytes, bytes]
) -> None:
    assert swtpm_tcti == f"swtpm:host=127.0.0.1,port={swtpm.port}"
    root, intermediate = swtpm_ca_pems
    assert root.startswith(b"-----BEGIN CERTIFICATE-----")
    root_cert = x509.load_pem_x509_certificate(root)
    inter_cert = x509.load_pem_x509_certificate(intermediate)
    assert root_cert.subject == root_cert.issuer  # self-signed root
    assert inter_cert.issuer == root_cert.subject
    assert inter_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("index", EK_INDICES)
async def test_every_ek_certificate_chains_to_the_ca(
    swtpm_tcti: str, swtpm_ca_pems: tuple[bytes, bytes], index: int
) -> None:
    from taonet.hosts.tpm2 import _setup

    der, public = await in_thread(lambda: _setup.read_ek(swtpm_tcti, index=index))
    cert = x509.load_der_x509_certificate(der)
    chains_to(cert, swtpm_ca_pems)
    assert public[:2] == (b"\x00\x23" if index != 0x01C00002 else b"\x00\x01")


async def test_ek_certificate_refused_by_another_ca(
    swtpm_tcti: str, swtpm_ca_pems: tuple[bytes, bytes], tmp_path: Path
) -> None:
    """A CA of the same name but another key does not verify the EK certificate."""
    from taonet.hosts.tpm2 import _setup

    der, _ = await in_thread(_setup.read_ek, swtpm_tcti)
    cert = x509.load_der_x509_certificate(der)
    fake, _ = make_ca(cert.issuer)
    with pytest.raises((ValueError, TypeError)):
        cert.verify_directly_issued_by(fake)
    fake_pem = fake.public_bytes(serialization.Encoding.PEM)
    with pytest.raises((ValueError, TypeError)):
        chains_to(cert, (swtpm_ca_pems[0], fake_pem))


async def test_create_in_a_non_empty_directory_is_refused(tmp_path: Path) -> None:
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm

    (tmp_path / "something").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not empty"):
        Swtpm.create(tmp_path)


async def test_missing_binary_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"swtpm not found on PATH: install swtpm swtpm-tools"):
        Swtpm.create(tmp_path / "tpm")
    assert not (tmp_path / "tpm").exists()


async def test_restart_keeps_nv_and_resets_pcrs(fresh_swtpm: Swtpm) -> None:
    from taonet.hosts.tpm2 import _setup

    tcti = fresh_swtpm.tcti
    index = 0x01500100
    await in_thread(_setup.define_nv_counter, tcti, index)
    value = await in_thread(_setup.increment_nv_counter, tcti, index)
    extended = await in_thread(_setup.extend_pcr, tcti, 16, b"measured")
    assert extended != bytes(32)
    old_pid = fresh_swtpm.pid

    await fresh_swtpm.arestart()
    assert fresh_swtpm.tcti == tcti  # same ports
    assert fresh_swtpm.pid != old_pid
    assert await in_thread(_setup.read_nv_counter, tcti, index) == value
    assert (await in_thread(_setup.read_pcrs, tcti, [16]))[16] == bytes(32)


async def test_stop_waits_for_the_process(fresh_swtpm: Swtpm) -> None:
    from taonet.hosts.tpm2 import _setup

    pid = fresh_swtpm.pid
    assert pid is not None
    await fresh_swtpm.astop()
    assert fresh_swtpm.pid is None
    assert not running(pid)
    with pytest.raises(HostError):
        await in_thread(_setup.read_pcrs, fresh_swtpm.tcti, [0])
    await fresh_swtpm.astop()  # a second stop does nothing
    await fresh_swtpm.astart()
    assert len((await in_thread(_setup.read_pcrs, fresh_swtpm.tcti, [0]))[0]) == 32


async def test_start_twice_is_refused(fresh_swtpm: Swtpm) -> None:
    with pytest.raises(HostError, match="already running"):
        fresh_swtpm.start()


async def test_acreate_and_async_with(tmp_path: Path) -> None:
    """The demo's way: create in a worker thread, stop at the end of ``async with``."""
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm, _setup

    with trio.fail_after(120):
        async with await Swtpm.acreate(tmp_path / "tpm") as tpm:
            pid = tpm.pid
            assert pid is not None
            assert running(pid)
            der, _ = await in_thread(_setup.read_ek, tpm.tcti)
            chains_to(x509.load_der_x509_certificate(der), tpm.manufacturer_ca_pems())
    assert tpm.pid is None
    assert not running(pid)


REPO = Path(__file__).resolve().parents[3]
FIXTURE_USER = "def test_needs_a_tpm(swtpm):\n    assert swtpm.tcti\n"


@pytest.mark.parametrize("ci", ["true", ""])
async def test_fixture_fails_in_ci_and_skips_elsewhere_without_swtpm(
    tmp_path: Path, ci: str
) -> None:
    """With no swtpm on PATH the swtpm fixture fails the test when CI=true, and skips it
    (with the install line) otherwise."""
    import sys

    (tmp_path / "test_user.py").write_text(FIXTURE_USER)
    (tmp_path / "empty").mkdir()
    repo = REPO
    env = {
        **os.environ,
        "PATH": str(tmp_path / "empty"),
        "CI": ci,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    args = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    args += ["-p", "tests.tpm2_fixtures", str(tmp_path / "test_user.py")]
    with trio.fail_after(120):
        done = await trio.run_process(
            args, env=env, cwd=str(tmp_path), check=False, capture_stdout=True, capture_stderr=True
        )
    out = done.stdout.decode(errors="replace")[-4000:]
    assert "apt-get install swtpm swtpm-tools" in out, out
    if ci:
        assert done.returncode == 1, out
        assert "CI needs the TPM tests to run" in out, out
    else:
        assert done.returncode == 0, out
        assert "1 skipped" in out, out


async def test_start_without_state_is_refused(tmp_path: Path) -> None:
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm

    with pytest.raises(ConfigError, match="no swtpm state"):
        Swtpm(tmp_path).start()


async def test_a_new_object_reuses_the_recorded_port(fresh_swtpm: Swtpm) -> None:
    """A later run on the same directory gets the same TCTI (a host saved it); when
    another process squats that port, start refuses rather than move (the squatter
    could otherwise sit between the host and the TPM)."""
    from taonet.hosts.tpm2 import Swtpm

    tcti = fresh_swtpm.tcti
    await fresh_swtpm.astop()
    again = Swtpm(fresh_swtpm.directory)
    await again.astart()
    try:
        assert again.tcti == tcti
    finally:
        await again.astop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", again.port))
        squatter.listen()
        third = Swtpm(fresh_swtpm.directory)
        with pytest.raises(HostError, match=f"port {again.port} .* is taken"):
            await third.astart()
        assert third.pid is None
        # A port asked for explicitly is not replaced by another either.
        with pytest.raises(HostError, match="is taken"):
            await trio.to_thread.run_sync(lambda: third.start(port=again.port))
    # Once the squatter is gone, the recorded port is used again.
    await third.astart()
    try:
        assert third.tcti == tcti
    finally:
        await third.astop()


def _path_with(directory: Path, tools: dict[str, str | None]) -> str:
    """A PATH of one directory holding the real tools named (None) or shell scripts."""
    import shutil

    directory.mkdir()
    for name, script in tools.items():
        if script is None:
            real = shutil.which(name)
            assert real is not None
            (directory / name).symlink_to(real)
        else:
            (directory / name).write_text("#!/bin/sh\n" + script)
            (directory / name).chmod(0o755)
    return str(directory)


async def test_missing_swtpm_localca_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm

    monkeypatch.setenv("PATH", _path_with(tmp_path / "bin", {"swtpm": None, "swtpm_setup": None}))
    with pytest.raises(ConfigError, match=r"^swtpm_localca not found on PATH: install swtpm"):
        Swtpm.create(tmp_path / "tpm")


async def test_a_failing_setup_tool_is_quoted_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool that fails with megabytes of output gives a HostError quoting only the end."""
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm

    noisy = "head -c 3000000 /dev/zero | tr '\\0' x\necho; echo 'the real reason'\nexit 3\n"
    path = _path_with(
        tmp_path / "bin", {"swtpm": None, "swtpm_localca": None, "swtpm_setup": noisy}
    )
    monkeypatch.setenv("PATH", f"{path}:/usr/bin:/bin")
    with pytest.raises(HostError, match=r"swtpm_setup failed \(exit 3\)") as info:
        await trio.to_thread.run_sync(lambda: Swtpm.create(tmp_path / "tpm"))
    message = str(info.value)
    assert message.endswith("the real reason")
    assert len(message) < 2200
