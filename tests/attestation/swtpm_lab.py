"""A throwaway swtpm for the credential tests: a copy of the lab's TPM state (EK
certificates from a swtpm_localca CA: RSA-2048 L-1 and ECC P-384 H-3 persistent EKs,
and a P-256 L-2 EK certificate at 0x01c0000a), started on a free port, stopped by pid.

Stands in until ``taonet.hosts.tpm2._swtpm`` (helper H3) is on this branch. Skips
when swtpm, tpm2-pytss or the lab state are missing (fails in CI).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TSS2_LOG", "all+NONE")

LAB = Path("/work/tpmlab/tpm1")
RSA_EK = 0x81010001
P384_EK = 0x81010016
EK_CERT_NV = {"rsa": 0x01C00002, "p384": 0x01C00016, "p256": 0x01C0000A}


def _need(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing")
        pytest.skip(f"{what} is missing")


def _free_port_pair() -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65000:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return int(port)
    raise RuntimeError("no free port pair")


class LabTpm:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = directory / "state"
        self.port = 0
        self.pid = 0

    @property
    def tcti(self) -> str:
        return f"host=127.0.0.1,port={self.port}"

    def start(self) -> None:
        self.port = _free_port_pair()
        pidfile = self.directory / "swtpm.pid"
        subprocess.run(
            [
                "swtpm", "socket", "--tpm2",
                "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags", "not-need-init,startup-clear",
                "--tpmstate", f"dir={self.state}",
                "--pid", f"file={pidfile}",
                "--log", f"file={self.directory / 'swtpm.log'},level=1",
                "--daemon",
            ],
            check=True,
        )  # fmt: skip
        self.pid = int(pidfile.read_text().strip())
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.pid = 0

    def esapi(self) -> Any:
        pytss = importlib.import_module("tpm2_pytss")
        return pytss.ESAPI(pytss.TCTILdr("swtpm", self.tcti))

    def ca_pems(self) -> list[bytes]:
        return [
            (LAB / "ca" / name).read_bytes()
            for name in ("issuercert.pem", "swtpm-localca-rootca-cert.pem")
        ]


def lab_tpm(tmp: Path) -> Iterator[LabTpm]:
    _need(shutil.which("swtpm") is not None, "swtpm")
    try:
        importlib.import_module("tpm2_pytss")
    except ImportError:
        _need(False, "tpm2-pytss")
    _need((LAB / "state" / "tpm2-00.permall").exists(), f"the lab TPM state in {LAB}")
    shutil.copytree(LAB / "state", tmp / "state")
    (tmp / "state" / ".lock").unlink(missing_ok=True)
    tpm = LabTpm(tmp)
    tpm.start()
    try:
        yield tpm
    finally:
        tpm.stop()


# ---------------------------------------------------------------- ESAPI helpers


def nv_read_all(e: Any, index: int) -> bytes:
    _m = importlib.import_module("tpm2_pytss.constants")
    ESYS_TR = _m.ESYS_TR
    TPM2_CAP = _m.TPM2_CAP
    TPM2_PT_NV = _m.TPM2_PT_NV

    h = e.tr_from_tpmpublic(index)
    pub, _ = e.nv_read_public(h)
    size = pub.nvPublic.dataSize
    _, cap = e.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
    chunk = cap.data.tpmProperties[0].value
    out = b""
    while len(out) < size:
        out += bytes(e.nv_read(h, min(chunk, size - len(out)), len(out), auth_handle=ESYS_TR.OWNER))
    return out


def ek_handle(e: Any, kind: str) -> Any:
    """The EK of ``kind`` ("rsa", "p384": persistent; "p256": CreatePrimary L-2)."""
    _m = importlib.import_module("tpm2_pytss.constants")
    ESYS_TR = _m.ESYS_TR
    _m = importlib.import_module("tpm2_pytss.internal.templates")
    ek_template = _m.ek_template
    _m = importlib.import_module("tpm2_pytss.types")
    TPM2B_PUBLIC = _m.TPM2B_PUBLIC
    TPM2B_SENSITIVE_CREATE = _m.TPM2B_SENSITIVE_CREATE

    if kind == "rsa":
        return e.tr_from_tpmpublic(RSA_EK)
    if kind == "p384":
        return e.tr_from_tpmpublic(P384_EK)
    template = TPM2B_PUBLIC(publicArea=ek_template.lookup("EK-ECC256").template.publicArea)
    handle, _, _, _, _ = e.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
    return handle


def read_public(e: Any, handle: Any) -> bytes:
    pub, _, _ = e.read_public(handle)
    return bytes(pub.publicArea.marshal())


def quote_key(e: Any, alg: str = "ecc") -> tuple[Any, bytes]:
    """A restricted signing key under an ECC storage primary: (handle, TPMT_PUBLIC)."""
    _m = importlib.import_module("tpm2_pytss.constants")
    ESYS_TR = _m.ESYS_TR
    _m = importlib.import_module("tpm2_pytss.types")
    TPM2B_PUBLIC = _m.TPM2B_PUBLIC
    TPM2B_SENSITIVE_CREATE = _m.TPM2B_SENSITIVE_CREATE
    TPMA_OBJECT = _m.TPMA_OBJECT

    base = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.NODA
    )
    primary_t = TPM2B_PUBLIC.parse(
        "ecc256:aes128cfb",
        objectAttributes=base | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT,
        nameAlg="sha256",
    )
    primary, _, _, _, _ = e.create_primary(TPM2B_SENSITIVE_CREATE(), primary_t, ESYS_TR.OWNER)
    spec = "ecc256:ecdsa-sha256:null" if alg == "ecc" else "rsa2048:rsassa-sha256:null"
    key_t = TPM2B_PUBLIC.parse(
        spec,
        objectAttributes=base | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT,
        nameAlg="sha256",
    )
    priv, pub, _, _, _ = e.create(primary, TPM2B_SENSITIVE_CREATE(), key_t)
    handle = e.load(primary, priv, pub)
    e.flush_context(primary)
    return handle, bytes(pub.publicArea.marshal())


POLICY_C_SHA384 = bytes.fromhex(
    "d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cf"
    "fd217ad5b4947c2d73e63005eed2dc2b3593d165"
)


def activate(e: Any, key: Any, ek: Any, kind: str, blob: bytes, secret: bytes) -> bytes:
    """TPM2_ActivateCredential through the EK's policy (PolicySecret(endorsement), and
    for H-3 a SHA-384 session with PolicyOR(A, C))."""
    _m = importlib.import_module("tpm2_pytss.constants")
    ESYS_TR = _m.ESYS_TR
    TPM2_ALG = _m.TPM2_ALG
    TPM2_SE = _m.TPM2_SE
    TPMA_SESSION = _m.TPMA_SESSION
    _m = importlib.import_module("tpm2_pytss.types")
    TPM2B_ENCRYPTED_SECRET = _m.TPM2B_ENCRYPTED_SECRET
    TPM2B_ID_OBJECT = _m.TPM2B_ID_OBJECT
    TPML_DIGEST = _m.TPML_DIGEST
    TPMT_SYM_DEF = _m.TPMT_SYM_DEF

    from taonet.attestation._tpm2_credential import POLICY_A_SHA384

    alg = TPM2_ALG.SHA384 if kind == "p384" else TPM2_ALG.SHA256
    s = e.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), alg
    )
    try:
        e.policy_secret(ESYS_TR.ENDORSEMENT, s, b"", b"", b"", 0)
        if kind == "p384":
            e.policy_or(s, TPML_DIGEST([POLICY_A_SHA384, POLICY_C_SHA384]))
        e.trsess_set_attributes(s, 0, TPMA_SESSION.CONTINUESESSION)
        return bytes(
            e.activate_credential(
                key,
                ek,
                TPM2B_ID_OBJECT(credential=blob),
                TPM2B_ENCRYPTED_SECRET(secret=secret),
                session1=ESYS_TR.PASSWORD,
                session2=s,
            )
        )
    except BaseException:
        with contextlib.suppress(Exception):
            e.flush_context(s)
        raise
