"""``taonet audit verify --cert``: trusting a secret server's checkpoints by its certificate.

A secret server signs its audit checkpoints with its own key, not the policy key, so
``--domain`` alone cannot say who signed them. The server writes its program
certificate (public) to ``STATE/secret-server.crt``; ``--cert`` trusts its key once the
certificate verifies against the domain's policy key and the domain has not revoked
it. The attacks: another program's certificate of the same domain (correctly signed,
but not the signer's), a certificate of another domain, the server's certificate after
the domain revoked it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from cryptography import x509

from taonet.cli import main
from taonet.secrets import connect
from taonet_services.secret_server import CERT_FILE
from tests.conftest import PASSWORD, MakeDomain, MakeHost
from tests.secrets.world import World, secret_world

REFUSED = 4
USAGE = 2
OWNER = [("owner", op, "/app") for op in ("Read", "Write", "Create")]


async def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await trio.to_thread.run_sync(main, ["audit", "verify", *argv])
    out, err = capsys.readouterr()
    return status, out, err


async def signed_world_log(world: World) -> tuple[Path, Path]:
    """Some audited traffic and a checkpoint; the database and the server's cert file."""
    assert world.running is not None
    async with connect(world.address, await world.identity("owner")) as store:
        await store.create("/app/k", b"v")
        await store.read("/app/k")
    assert await world.running.server.audit.checkpoint() is not None
    cert = world.base / "server" / CERT_FILE
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    return world.domain.path / "secrets.db", cert


async def test_the_servers_certificate_makes_its_checkpoints_trusted(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, cert = await signed_world_log(world)
            d = str(world.domain.path)
            # The policy key alone did not sign them: refused as untrusted.
            status, out, err = await verify(capsys, "--domain", d, "--db", str(db))
            assert status == REFUSED, out
            assert "which is not a trusted key" in err, err
            assert err.rstrip().endswith("--cert STATE/secret-server.crt"), err
            status, out, err = await verify(
                capsys, "--domain", d, "--db", str(db), "--cert", str(cert), "-o", "json"
            )
            assert (status, err) == (0, ""), out
            document = json.loads(out)
            assert document["trusted"] is True
            assert document["checkpoints"] >= 1
            status, out, _ = await verify(
                capsys, "--domain", d, "--db", str(db), "--cert", str(cert)
            )
            assert status == 0
            assert "the program certificate of key(" in out
            assert "(--cert)" in out


async def test_another_programs_certificate_does_not_vouch_for_the_server(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(60):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, _ = await signed_world_log(world)
            owner = await world.identity("owner")
            assert owner.certificate is not None
            other = tmp_path / "owner.der"
            other.write_bytes(owner.certificate.der)  # verifies, not revoked: the wrong key
            status, out, err = await verify(
                capsys, "--domain", str(world.domain.path), "--db", str(db), "--cert", str(other)
            )
            assert status == REFUSED, out
            assert err.startswith("taonet: error:")


async def test_a_certificate_of_another_domain_or_revoked_is_refused(
    tmp_path: Path, make_domain: MakeDomain, make_host: MakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(90):
        async with secret_world(tmp_path, make_domain, make_host, grants=OWNER) as world:
            db, cert = await signed_world_log(world)
            stranger = make_domain(name="stranger")
            status, _, err = await verify(
                capsys, "--domain", str(stranger.path), "--db", str(db), "--cert", str(cert)
            )
            assert status == USAGE
            assert err.startswith(f"taonet: error: --cert {cert}:"), err
            assert len(err.splitlines()) == 1
            # Without --domain there is nothing to check it against.
            status, _, err = await verify(capsys, "--db", str(db), "--cert", str(cert))
            assert status == USAGE
            assert "--cert needs --domain" in err

            serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
            pw = tmp_path / "pw"
            pw.write_bytes(PASSWORD + b"\n")
            revoke = [
                *("domain", "revoke", hex(serial), "--reason", "key lost"),
                *("--domain", str(world.domain.path), "--password-file", str(pw)),
            ]
            assert await trio.to_thread.run_sync(main, revoke) == 0
            capsys.readouterr()
            status, _, err = await verify(
                capsys, "--domain", str(world.domain.path), "--db", str(db), "--cert", str(cert)
            )
            assert status == USAGE
            assert f"the domain revoked it (serial {serial})" in err
