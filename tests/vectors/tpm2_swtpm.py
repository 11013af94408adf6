"""Make tpm2_swtpm.json: real TPM 2.0 quotes, from swtpm, for the pure-Python verifier.

Run once (needs swtpm and tpm2-pytss; the tests that read the vectors need neither):

    python tests/vectors/tpm2_swtpm.py tests/vectors/tpm2_swtpm.json
    python tests/vectors/tpm2_swtpm.py tests/vectors/tpm2_swtpm.json --lab /work/tpmlab/keys

It starts a throwaway swtpm on a fresh state directory, makes the ECC P-256 storage
primary and a restricted ECC P-256 and RSA-2048 quote key under it, extends PCR 16,
and for each key makes the attestation a TPM host makes: a statement spoken by
``tpm2([key]).PCRs(..).Program(..)`` and TPM2_Quote over SHA-256 of it. The JSON keeps
the TPM's own bytes (TPMS_ATTEST, TPMT_SIGNATURE), the keys' TPMT_PUBLIC areas (so a
test can recompute the qualifiedSigner) and the whole serialized attestation. With
``--lab`` it adds the quotes of the TPM lab (another swtpm, set up with EK
certificates by swtpm_setup, 9 PCRs of which 17 and 18 are all ones).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives import serialization

from taonet import auth
from taonet.attestation.tpm2 import DEFAULT_PCRS, host_name, tpm2_attestation
from taonet.hosts.tpm2._swtpm import _free_port_pair

NOW = 1_800_000_000 * 10**9
YEAR = 365 * 24 * 3600 * 10**9
PCRS = (*DEFAULT_PCRS, 16)


def _pytss(module: str) -> Any:
    # tpm2-pytss has no type information: imported as Any.
    return importlib.import_module(f"tpm2_pytss{module}")


def pytss_template(kind: str) -> Any:
    """The TPM2B_PUBLIC tpm2-pytss makes from the usual strings for taonet's primary
    (``primary``) or quote key (``ecc``, ``rsa``): SHA-256 names, fixed, restricted."""
    types = _pytss(".types")
    TPM2B_PUBLIC, TPMA_OBJECT = types.TPM2B_PUBLIC, types.TPMA_OBJECT

    base = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.NODA
    )
    if kind == "primary":
        return TPM2B_PUBLIC.parse(
            "ecc256:aes128cfb", objectAttributes=base | TPMA_OBJECT.DECRYPT, nameAlg="sha256"
        )
    spec = "ecc256:ecdsa-sha256:null" if kind == "ecc" else "rsa2048:rsassa-sha256:null"
    return TPM2B_PUBLIC.parse(
        spec, objectAttributes=base | TPMA_OBJECT.SIGN_ENCRYPT, nameAlg="sha256"
    )


def make(out: Path) -> None:
    pytss, types = _pytss(""), _pytss(".types")
    esys_tr = _pytss(".constants").ESYS_TR

    work = Path(tempfile.mkdtemp(prefix="tpm2vec-"))
    state = work / "state"
    state.mkdir()
    port = _free_port_pair()
    # fmt: off
    subprocess.run(
        ["swtpm", "socket", "--tpm2",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear", "--tpmstate", f"dir={state}",
         "--pid", f"file={work / 'swtpm.pid'}", "--daemon"],
        check=True,
    )
    # fmt: on
    pid = 0
    try:
        for _ in range(100):
            if (work / "swtpm.pid").exists() and (work / "swtpm.pid").read_text().strip():
                pid = int((work / "swtpm.pid").read_text())
                break
            time.sleep(0.05)
        esapi = pytss.ESAPI(pytss.TCTILdr("swtpm", f"host=127.0.0.1,port={port}"))
        measured = hashlib.sha256(b"taonet tpm2 vector: a measured boot loader").digest()
        values = types.TPML_DIGEST_VALUES(
            [types.TPMT_HA(hashAlg=0x000B, digest=types.TPMU_HA(sha256=measured))]
        )
        esapi.pcr_extend(esys_tr.PCR16, values)
        primary, primary_pub, _, _, _ = esapi.create_primary(
            types.TPM2B_SENSITIVE_CREATE(), pytss_template("primary"), esys_tr.OWNER
        )
        selection = types.TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, PCRS)))
        _, _, digests = esapi.pcr_read(selection)
        pcrs = {p: bytes(d) for p, d in zip(PCRS, digests, strict=True)}
        vectors = []
        for kind in ("ecc", "rsa"):
            priv, pub, _, _, _ = esapi.create(
                primary, types.TPM2B_SENSITIVE_CREATE(), pytss_template(kind)
            )
            key = esapi.load(primary, priv, pub)
            pem = pub.to_pem()
            key_der = serialization.load_pem_public_key(pem).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            speaker = host_name(key_der, pcrs).extend(
                auth.PrinExt("Program", (auth.Bytes(hashlib.sha256(b"a program").digest()),))
            )
            message = auth.Pred("Ready", (auth.Str(f"quoted by swtpm, {kind}"),))
            stmt = auth.encode(
                auth.Says(speaker=speaker, message=message, time=NOW, expiration=NOW + YEAR)
            )
            qualifying = types.TPM2B_DATA(hashlib.sha256(stmt).digest())
            attest, sig = esapi.quote(key, selection, qualifying)
            esapi.flush_context(key)
            att = tpm2_attestation(stmt, key_der, bytes(attest), sig.marshal())
            vectors.append(
                {
                    "name": f"swtpm {kind} quote",
                    "quote_key_der": key_der.hex(),
                    "quote_key_tpmt_public": pub.publicArea.marshal().hex(),
                    "parent_tpmt_public": primary_pub.publicArea.marshal().hex(),
                    "pcrs": {str(p): v.hex() for p, v in pcrs.items()},
                    "serialized_statement": stmt.hex(),
                    "speaker": str(speaker),
                    "tpms_attest": bytes(attest).hex(),
                    "tpmt_signature": sig.marshal().hex(),
                    "attestation": att.to_bytes().hex(),
                    "now_ns": NOW,
                }
            )
        esapi.flush_context(primary)
        esapi.close()
    finally:
        if pid:
            os.kill(pid, 15)
        shutil.rmtree(work, ignore_errors=True)
    version = subprocess.run(["swtpm", "--version"], capture_output=True, text=True, check=False)
    doc = {
        "source": "tests/vectors/tpm2_swtpm.py: " + version.stdout.strip().splitlines()[0],
        "vectors": vectors,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")


#: The PCRs the TPM lab's t1_keys_quote.py quoted.
LAB_PCRS = (0, 1, 2, 3, 7, 16, 17, 18, 23)


def lab_quotes(keys: Path) -> list[dict[str, Any]]:
    """The quotes the TPM lab made (t1_keys_quote.py, another swtpm with EK certificates).

    Its qualifying data is SHA-256 of a plain string, not of an auth statement, and its
    PCR values come from tpm2-tools' serialized PCR file (Keylime's pcrblob).
    """
    out = []
    for kind in ("ecc", "rsa"):
        blob = (keys / f"quote_{kind}.pcrs").read_bytes()
        pcrs = {}
        for i, p in enumerate(LAB_PCRS):
            group, j = divmod(i, 8)
            at = 4 + 128 + 4 + group * 532 + 4 + j * 66 + 2
            pcrs[p] = blob[at : at + 32]
        pem = (keys / f"ak_{kind}.pem").read_bytes()
        key_der = serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out.append(
            {
                "name": f"tpm lab {kind} quote",
                "quote_key_der": key_der.hex(),
                "pcrs": {str(p): v.hex() for p, v in pcrs.items()},
                "qualifying_data_of": f"serialized statement {kind}",
                "tpms_attest": (keys / f"quote_{kind}.attest").read_bytes().hex(),
                "tpmt_signature": (keys / f"quote_{kind}.sig").read_bytes().hex(),
            }
        )
    return out


if __name__ == "__main__":
    # tpm2_swtpm.py OUT                 make new quotes on a throwaway swtpm
    # tpm2_swtpm.py OUT --lab KEYS_DIR  add the TPM lab's quotes to OUT
    if len(sys.argv) == 4 and sys.argv[2] == "--lab":
        doc = json.loads(Path(sys.argv[1]).read_text())
        doc["lab_quotes"] = lab_quotes(Path(sys.argv[3]))
        Path(sys.argv[1]).write_text(json.dumps(doc, indent=1) + "\n")
    else:
        make(Path(sys.argv[1]))
