"""The principal's subjectAltName URI: any name survives it, in one spelling, and Go reads it.

``taonet:<role>:<text>`` with the principal's canonical text percent-encoded. Names
from the auth strategies (quotes, backslashes, control characters and any Unicode in
strings, principals nested in principals) go through issue and verify unchanged; the
URI holds only characters RFC 3986 allows, and Go's crypto/x509 reads back the very
same URI.
"""

from __future__ import annotations

import json
import string
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from taonet import AuthenticationError, auth, certs
from taonet.crypto import Signer
from taonet.testing import CertificateFactory
from tests.auth.strategies import prins

NOW = 1_800_000_000 * 10**9
FACTORY = CertificateFactory.generate(now_ns=NOW)
PROGRAM_KEY = Signer.generate().public_key_der()
# RFC 3986: unreserved characters, percent-encodings and the sub-delims kept as they are.
URI_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~%(),:")


def issue(principal: auth.Prin) -> bytes:
    return certs.issue_program_certificate(
        FACTORY.signer, FACTORY.anchor, PROGRAM_KEY, principal, now_ns=NOW
    ).der


@given(prins())
def test_any_principal_survives_the_certificate(principal: auth.Prin) -> None:
    uri = certs.principal_uri("program", principal)
    assert set(uri) <= URI_CHARACTERS
    assert uri.startswith("taonet:program:")
    assert urllib.parse.unquote(uri.removeprefix("taonet:program:")) == str(principal)
    verified = certs.verify_program_certificate(FACTORY.anchor, issue(principal), now_ns=NOW)
    assert verified.principal == principal


def test_the_roles_are_told_apart() -> None:
    host_key = Signer.generate().public_key_der()
    host = x509.load_der_x509_certificate(FACTORY.host_certificate(host_key, now_ns=NOW))
    policy = x509.load_der_x509_certificate(FACTORY.policy_cert)
    program = x509.load_der_x509_certificate(issue(auth.key_principal(host_key)))
    assert certs.certificate_principal(host, "host") == auth.key_principal(host_key)
    assert certs.certificate_principal(policy, "policy") == auth.key_principal(
        FACTORY.signer.public_key_der()
    )
    assert certs.certificate_principal(program) == auth.key_principal(host_key)
    with pytest.raises(AuthenticationError, match="is for a taonet program, not a host"):
        certs.certificate_principal(program, "host")
    with pytest.raises(AuthenticationError, match="is for a taonet host, not a program"):
        certs.certificate_principal(host, "program")


def test_principal_uri_refuses_what_it_cannot_write() -> None:
    name = auth.key_principal(PROGRAM_KEY)
    with pytest.raises(ValueError, match="role must be one of"):
        certs.principal_uri("admin", name)  # type: ignore[arg-type]
    # Text past the parser's size limit would not read back.
    huge = name.extend(auth.PrinExt("Program", (auth.Str("x" * auth.MAX_TEXT_SIZE),)))
    with pytest.raises(ValueError, match="does not read back"):
        certs.principal_uri("program", huge)


@settings(max_examples=30)
@given(st.lists(prins(), min_size=1, max_size=8))
def test_go_reads_the_same_uri(x509check: Path, names: list[auth.Prin]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp, "policy.der")
        policy.write_bytes(FACTORY.policy_cert)
        args = []
        for i, name in enumerate(names):
            path = Path(tmp, f"{i}.der")
            path.write_bytes(issue(name))
            args.append(f"prog:{path}")
        result = subprocess.run(
            [str(x509check), str(NOW // 10**9), str(policy), *args],
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    read = json.loads(result.stdout)
    assert [r["error"] if not r["ok"] else r["uris"] for r in read] == [
        [certs.principal_uri("program", name)] for name in names
    ]
