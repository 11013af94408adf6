"""A channel identity's private key never reaches the disk in the clear.

``ssl`` loads keys only from files. The probe (``identity_probe.py``, a real
subprocess with ``TMPDIR`` pointing at a fresh directory) reads every file created
under it just before it is removed, while an identity is built and while it then
serves and opens channels.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import trio

from taonet.crypto import Signer
from tests.channel.conftest import Programs

REPO = Path(__file__).resolve().parents[2]


Phases = dict[str, dict[str, list[str]]]


async def run_probe(programs: Programs, tmp_path: Path) -> tuple[Phases, bytes, list[str]]:
    identity = await programs.identity(1)
    assert identity.signer is not None
    assert identity.certificate is not None
    key_der = identity.signer.to_pkcs8_der()
    given = {
        "policy": programs.domain.policy_cert.hex(),
        "key": key_der.hex(),
        "cert": identity.certificate.der.hex(),
    }
    watched = tmp_path / "tmp"
    watched.mkdir()
    env = dict(os.environ, TMPDIR=str(watched))
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "tests.channel.identity_probe"],
            stdin=json.dumps(given).encode(),
            capture_stdout=True,
            capture_stderr=True,
            cwd=REPO,
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    return out["phases"], key_der, out["left"]


async def test_no_file_ever_holds_the_private_key_in_the_clear(
    programs: Programs, tmp_path: Path
) -> None:
    phases, key_der, left = await run_probe(programs, tmp_path)
    scalar = Signer.from_pkcs8_der(key_der).private_key.private_numbers().private_value
    build = phases["build"]
    # The probe sees the files ssl loads from (one per context built): none holds
    # the key in the clear, as PEM, DER, base64 or the bare scalar...
    assert build["opened"], "the probe saw no file at all: it is not watching"
    assert len(build["contents"]) == len(build["opened"])
    for hex_content in build["contents"]:
        content = bytes.fromhex(hex_content)
        assert b"-----BEGIN PRIVATE KEY-----" not in content
        assert b"-----BEGIN EC PRIVATE KEY-----" not in content
        assert key_der not in content
        assert base64.b64encode(key_der)[:64] not in content
        assert scalar.to_bytes(32, "big") not in content
        # ...while the key is there, encrypted (so the probe looked at the right files).
        assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in content
    # Handshakes reuse the contexts: no file is written per connection.
    assert phases["handshakes"]["opened"] == []
    assert left == []
