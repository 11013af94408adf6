"""A root Linux host on a TPM 2.0 (``root_tao = "tpm2"``), on a real swtpm.

The host opens its Tpm2Host in-process and runs stacked on it: its name is the TPM's
``tpm2([q]).PCRs(...)``, its keyset is sealed by the TPM (so the same keys come back
at the next open, and none when a PCR it is sealed to has changed: another boot), and
``taonet host show`` prints the name and the PCR values ``--add-host`` takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from taonet import AuthorizationError, HostError, auth
from taonet.attestation.tpm2 import host_pcrs, pcrs_ext
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain, ProgramCertifier, host_state_rule
from taonet.hosts import SoftHost
from taonet.hosts.linux import LinuxHost, LinuxHostConfig
from tests.cli.cli_helpers import taonet_main
from tests.conftest import PASSWORD, MakeDomain
from tests.tpm2_helpers import ca_pem, serving_quote_service, trust_swtpm

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

PROGRAM_HASH = b"\x42" * 32


def document(out: str) -> Any:
    """The JSON document a command printed (log lines may come first in a session
    whose logging an earlier test configured)."""
    return json.loads(out[out.index("{\n") if not out.startswith("{") else 0 :])


def soft_core(host: LinuxHost) -> SoftHost:
    """The Linux host's key core: a soft keyset unsealed by the TPM, its delegation a quote."""
    core = host._core
    assert isinstance(core, SoftHost)
    return core


CONFIG = LinuxHostConfig(kind="root", root_tao="tpm2", guard="Liberal", grace_period=1.0)


async def test_a_linux_host_on_a_tpm(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    directory = tmp_path / "host"
    with trio.fail_after(60):
        name = await LinuxHost.init_tpm2(directory, CONFIG, tcti=fresh_swtpm.tcti)
        assert name.type == "tpm2"
        assert sorted(host_pcrs(name) or {}) == [0, 1, 2, 3, 4, 7]
        host = await LinuxHost.open(directory)
        try:
            assert host.name == name
            first_key = soft_core(host).public_key_der()
        finally:
            await host.aclose()
        assert (directory / "keys.sealed").exists()
        # The next open unseals the same keys through the TPM.
        host = await LinuxHost.open(directory)
        try:
            assert host.name == name
            assert soft_core(host).public_key_der() == first_key
        finally:
            await host.aclose()


async def test_a_changed_pcr_opens_nothing(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    from taonet.hosts.tpm2 import _setup

    directory = tmp_path / "host"
    with trio.fail_after(60):
        await LinuxHost.init_tpm2(directory, CONFIG, tcti=fresh_swtpm.tcti, pcrs=(7, 16))
        host = await LinuxHost.open(directory)
        await host.aclose()
        await trio.to_thread.run_sync(_setup.extend_pcr, fresh_swtpm.tcti, 16, b"another boot")
        try:
            with pytest.raises(HostError):
                await LinuxHost.open(directory)
        finally:
            await trio.to_thread.run_sync(_setup.reset_pcr, fresh_swtpm.tcti, 16)


def test_cli_init_and_show(
    capsys: pytest.CaptureFixture[str], fresh_swtpm: Swtpm, tmp_path: Path
) -> None:
    directory = str(tmp_path / "host")
    code, out, err = taonet_main(
        capsys,
        "host", "init", "--root", "--tpm2", "--liberal", "--host", directory,
        "--tcti", fresh_swtpm.tcti, "--pcrs", "0,7", "-o", "json",
    )  # fmt: skip
    assert code == 0, err
    made = document(out)
    assert made["root_tao"] == "tpm2"
    assert made["certified"] is False
    code, out, err = taonet_main(capsys, "host", "show", "--host", directory, "-o", "json")
    assert code == 0, err
    shown = document(out)["tpm2"]
    assert shown["name"] == made["name"]
    assert sorted(shown["pcrs"]) == ["0", "7"]
    pcrs = {int(n): bytes.fromhex(v) for n, v in shown["pcrs"].items()}
    assert shown["host_state"] == str(pcrs_ext(pcrs)) == made["host_state"]
    code, out, err = taonet_main(capsys, "host", "show", "--host", directory)
    assert code == 0, err
    assert "host state:" in out
    assert f"PCR  7:       {pcrs[7].hex()}" in out


async def test_the_domain_certifies_programs_of_a_trusted_tpm_state_only(
    fresh_swtpm: Swtpm, tmp_path: Path, make_domain: MakeDomain
) -> None:
    """A real quote chain: the Linux host's program attestation, rooted in the TPM's
    quote (its key certified by the policy key), is certified while the domain trusts
    the host's PCRs, and refused, naming the PCR, when it trusts only another state."""
    from taonet.hosts.linux._tpm2_root import open_tpm2_state

    domain = make_domain(name="tpm2-linux")
    signer = domain.unlock(PASSWORD)
    directory = tmp_path / "host"
    with trio.fail_after(90):
        name = await LinuxHost.init_tpm2(
            directory, attrs.evolve(CONFIG, guard="domain", domain=str(domain.path)),
            tcti=fresh_swtpm.tcti,
        )  # fmt: skip
        async with await open_tpm2_state(directory) as tpm:
            cert = domain.certify_host(signer, tpm.quote_key_der, signer_type="tpm2")
            await tpm.set_root_endorsement(cert)
        pcrs = host_pcrs(name) or {}
        other = {**pcrs, 4: b"\x44" * 32}
        guard = domain.guard
        assert isinstance(guard, ACLGuard)
        guard = guard.with_rule(domain.program_rule(PROGRAM_HASH))
        domain.save_guard(guard.with_rule(host_state_rule(str(pcrs_ext(other)))), signer)
        host = await LinuxHost.open(directory)
        try:
            program = domain.program_name(PROGRAM_HASH, host=host.name)
            assert isinstance(program, auth.Prin)
            key = Signer.generate()
            att = (
                await soft_core(host)
                .tao_for(program)
                .attest(auth.Speaksfor(auth.key_principal(key.public_key_der()), program))
            )
        finally:
            await host.aclose()
    with pytest.raises(AuthorizationError, match="PCR 4 is 0000000000000000"):
        ProgramCertifier(domain, signer).certify(att.to_bytes(), key.public_key_der())
    domain.save_guard(domain.guard.with_rule(host_state_rule(str(name))), signer)  # type: ignore[attr-defined]
    issued = ProgramCertifier(Domain.load(domain.path), signer).certify(
        att.to_bytes(), key.public_key_der()
    )
    assert issued.principal == program
    assert str(issued.principal).startswith(str(name))


def test_a_tpm_host_is_not_recertified_with_the_policy_password(
    capsys: pytest.CaptureFixture[str], fresh_swtpm: Swtpm, tmp_path: Path
) -> None:
    directory = str(tmp_path / "host")
    code, _, err = taonet_main(
        capsys, "host", "init", "--root", "--tpm2", "--liberal", "--host", directory,
        "--tcti", fresh_swtpm.tcti,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = taonet_main(capsys, "host", "recertify", "--host", directory)
    assert code != 0
    assert "taonet host certify --quote-service" in err
    assert len(err.strip().splitlines()) == 1


async def test_cli_certifies_through_the_quote_service(
    capsys: pytest.CaptureFixture[str], fresh_swtpm: Swtpm, tmp_path: Path, make_domain: MakeDomain
) -> None:
    """``host init --tpm2 --quote-service`` and ``host certify`` against a real quote
    service; a domain that does not list the TPM's manufacturer CA refuses, one line."""
    from taonet.quoteservice import add_manufacturer_cas

    trusting, other = make_domain(name="trusting"), make_domain(name="other")
    trust_swtpm(trusting, fresh_swtpm)
    # The other domain trusts some other manufacturer (its own CA list, not swtpm's).
    add_manufacturer_cas(other.path, other.unlock(PASSWORD), ca_pem("another manufacturer"))

    def cli(*args: str) -> tuple[int, str, str]:
        return taonet_main(capsys, *args)

    async with (
        serving_quote_service(trusting) as (_, good),
        serving_quote_service(other) as (_, bad),
    ):
        with trio.fail_after(120):
            made = await trio.to_thread.run_sync(
                cli, "host", "init", "--root", "--tpm2", "--domain", str(trusting.path),
                "--host", str(tmp_path / "a"), "--tcti", fresh_swtpm.tcti,
                "--quote-service", f"127.0.0.1:{good}", "-o", "json",
            )  # fmt: skip
            assert made[0] == 0, made[2]
            # The services' log lines share stdout here: the document is the rest.
            assert document(made[1])["certified"] is True
            assert (tmp_path / "a" / "tpm2" / "quote_key_cert.der").exists()
            made = await trio.to_thread.run_sync(
                cli, "host", "init", "--root", "--tpm2", "--domain", str(other.path),
                "--host", str(tmp_path / "b"), "--tcti", fresh_swtpm.tcti,
            )  # fmt: skip
            assert made[0] == 0, made[2]
            refused = await trio.to_thread.run_sync(
                cli, "host", "certify", "--host", str(tmp_path / "b"),
                "--quote-service", f"127.0.0.1:{bad}",
            )  # fmt: skip
            assert refused[0] != 0
            assert len(refused[2].strip().splitlines()) == 1, refused[2]
            assert "manufacturer CA" in refused[2]
            assert not (tmp_path / "b" / "tpm2" / "quote_key_cert.der").exists()


def test_start_show_run_stop_without_a_password(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    """``taonet host start`` (in the background, no password: the TPM unseals the keys),
    ``host show`` of the running host (its PCRs), a program run on it, ``host stop``."""
    directory = str(tmp_path / "host")

    def taonet(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "taonet", *args, "--host", directory],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
        return done.stdout

    made = document(
        taonet(
            "host",
            "init",
            "--root",
            "--tpm2",
            "--liberal",
            "--tcti",
            fresh_swtpm.tcti,
            "-o",
            "json",
        )
    )
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh\necho hello from the TPM host\n")
    script.chmod(0o755)
    taonet("host", "start")
    try:
        shown = document(taonet("host", "show", "-o", "json"))
        assert shown["running"] is True
        assert shown["name"] == made["name"]
        assert shown["tpm2"]["host_state"] == made["host_state"]
        done = subprocess.run(
            [sys.executable, "-m", "taonet", "run", "--wait", "--host", directory, str(script)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "hello from the TPM host" in done.stdout
        assert f"started {made['name']}.Program([" in done.stderr
        refused = subprocess.run(
            [sys.executable, "-m", "taonet", "host", "certify", "--host", directory,
             "--quote-service", "127.0.0.1:9"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "stop it first" in refused.stderr
    finally:
        taonet("host", "stop")
