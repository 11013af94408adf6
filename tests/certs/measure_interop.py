"""How many of the certificates and CRLs taonet issues Go and OpenSSL can read (item 7).

Issues a policy certificate, a host certificate, a program certificate and a CRL
with whatever ``taonet`` is importable, builds ``x509check.go`` (needs ``go``), and
counts what Go's crypto/x509 parses and verifies against the policy certificate and
what ``openssl x509``/``openssl crl`` parse::

    .venv/bin/python -m tests.certs.measure_interop

To measure another version, put its ``taonet`` first on the path (for instance an
exported tree of an older commit: ``PYTHONPATH=<tree> .venv/bin/python
tests/certs/measure_interop.py``). Prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taonet import auth, certs
from taonet.crypto import Signer

SOURCE = Path(__file__).with_name("x509check.go")


def issue(directory: Path) -> tuple[int, dict[str, tuple[str, Path]]]:
    now = time.time_ns()
    policy = Signer.generate()
    policy_cert = certs.make_policy_certificate(policy, common_name="measure", now_ns=now)
    anchor = certs.PolicyAnchor(policy_cert, now_ns=now)
    host = Signer.generate().public_key_der()
    name = auth.key_principal(host).extend(auth.PrinExt("Program", (auth.Bytes(b"\1" * 32),)))
    program = certs.issue_program_certificate(
        policy, anchor, Signer.generate().public_key_der(), name, now_ns=now
    )
    objects = {
        "policy": ("cert", policy_cert),
        "host": ("host", certs.issue_host_certificate(policy, policy_cert, host, now_ns=now)),
        "program": ("prog", program.der),
        "crl": ("crl", certs.make_crl(policy, anchor, [program.serial], now_ns=now)),
    }
    written = {}
    for label, (kind, der) in objects.items():
        path = directory / f"{label}.der"
        path.write_bytes(der)
        written[label] = (kind, path)
    return now, written


def main() -> None:
    go = shutil.which("go")
    if go is None:
        sys.exit("measure_interop: go is not installed (apt-get install golang-go)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "GOCACHE": str(work / "cache"),
            "GOPATH": str(work / "gopath"),
            "GOPROXY": "off",
        }
        binary = work / "x509check"
        subprocess.run([go, "build", "-o", str(binary), str(SOURCE)], env=env, check=True)
        now, written = issue(work)
        args = [f"{kind}:{path}" for kind, path in written.values()]
        out = subprocess.run(
            [str(binary), str(now // 10**9), str(written["policy"][1]), *args],
            capture_output=True,
            check=True,
        )
        go_results = json.loads(out.stdout)
        openssl_parsed = 0
        for kind, path in written.values():
            command = "crl" if kind == "crl" else "x509"
            shown = subprocess.run(
                ["openssl", command, "-inform", "DER", "-noout", "-text", "-in", str(path)],
                capture_output=True,
                check=False,
            )
            openssl_parsed += shown.returncode == 0
    for label, result in zip(written, go_results, strict=True):
        print(f"{label:8} go: {'ok' if result['ok'] else result['error']}")
    print(
        json.dumps(
            {
                "issued": len(written),
                "go_parsed_and_verified": sum(r["ok"] for r in go_results),
                "openssl_parsed": openssl_parsed,
            }
        )
    )


if __name__ == "__main__":
    main()
