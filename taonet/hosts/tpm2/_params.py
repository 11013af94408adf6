"""The TPM 2.0 host's fixed parameters, in pure Python (nothing here calls the TSS;
the package's ``__init__`` still requires tpm2-pytss to be installed).

* :func:`parse_tcti`: the TCTI strings taonet accepts.
* :data:`PRIMARY_TEMPLATE`, :data:`QUOTE_KEY_TEMPLATES`: marshaled TPMT_PUBLIC
  templates, the one place they are defined (tpm2-pytss jobs and raw commands both use
  them).
* :data:`EK_CERT_INDICES`: where EK certificates are, which TCG template each EK has.
* :func:`policy_secret_digest`, :data:`POLICY_C_SHA384`: the TCG EK policies.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import struct
from collections.abc import Mapping
from typing import Final

from taonet._errors import ConfigError

__all__ = [
    "EK_CERT_INDICES",
    "MAX_EK_CERT",
    "MAX_TCTI",
    "POLICY_C_SHA384",
    "PRIMARY_TEMPLATE",
    "QUOTE_KEY_TEMPLATES",
    "TPM_CC_POLICY_SECRET",
    "TPM_RH_ENDORSEMENT",
    "parse_tcti",
    "policy_secret_digest",
]

# ---- TCTI strings ----------------------------------------------------------------------

#: The longest TCTI string accepted.
MAX_TCTI: Final = 256
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,250}[A-Za-z0-9])?")
_DEVICE = re.compile(r"/dev/[A-Za-z0-9_.-]{1,64}")


def parse_tcti(tcti: str) -> tuple[str, str]:
    """The ``(name, configuration)`` pair for tpm2-pytss' ``TCTILdr`` of a TCTI string.

    Accepted: ``swtpm:host=H,port=N`` and ``swtpm:port=N`` (host 127.0.0.1; swtpm's
    control channel is port N+1, so N is 1..65534), H a loopback host (``localhost`` or
    an address in 127.0.0.0/8), and ``device:/dev/NAME`` (a TPM character device such
    as ``/dev/tpmrm0``). Raises ConfigError for anything else, saying why for a swtpm
    on another host: TPM commands travel unencrypted with empty authorizations, so
    anyone on the path could read unsealed keys or answer for the TPM.
    """
    if not isinstance(tcti, str) or len(tcti) > MAX_TCTI:
        raise ConfigError(f"TCTI string too long (at most {MAX_TCTI} characters)")
    kind, sep, rest = tcti.partition(":")
    if sep and kind == "device":
        if _DEVICE.fullmatch(rest) is None or "/../" in rest + "/":
            raise ConfigError(f"TCTI {tcti!r}: expected device:/dev/NAME (e.g. device:/dev/tpmrm0)")
        return "device", rest
    if sep and kind == "swtpm":
        fields: dict[str, str] = {}
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or key not in ("host", "port") or key in fields:
                break
            fields[key] = value
        else:
            host = fields.get("host", "127.0.0.1")
            port = fields.get("port", "")
            if (
                "port" in fields
                and _HOST.fullmatch(host) is not None
                and port.isascii()
                and port.isdigit()
                and len(port) <= 5
                and 1 <= int(port) <= 65534
            ):
                if not _loopback(host):
                    raise ConfigError(
                        f"TCTI {tcti[:80]!r}: the swtpm host must be loopback (localhost or "
                        "127.x.x.x): TPM commands travel unencrypted with empty "
                        "authorizations, so over a network anyone on the path could read "
                        "unsealed keys or answer for the TPM"
                    )
                return "swtpm", f"host={host},port={int(port)}"
    raise ConfigError(
        f"TCTI {tcti[:80]!r}: expected swtpm:host=HOST,port=PORT, swtpm:port=PORT"
        " or device:/dev/tpmrm0"
    )


def _loopback(host: str) -> bool:
    """``localhost`` or an IPv4 address in 127.0.0.0/8 (the only hosts a swtpm TCTI may name)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


# ---- templates (marshaled TPMT_PUBLIC, built here so raw-command code needs no TSS) -----

_OBJ_FIXEDTPM = 0x00000002
_OBJ_FIXEDPARENT = 0x00000010
_OBJ_SENSITIVEDATAORIGIN = 0x00000020
_OBJ_USERWITHAUTH = 0x00000040
_OBJ_NODA = 0x00000400
_OBJ_RESTRICTED = 0x00010000
_OBJ_DECRYPT = 0x00020000
_OBJ_SIGN = 0x00040000
_ALG_RSA, _ALG_SHA256, _ALG_AES, _ALG_RSASSA = 0x0001, 0x000B, 0x0006, 0x0014
_ALG_NULL, _ALG_ECDSA, _ALG_ECC, _ALG_CFB = 0x0010, 0x0018, 0x0023, 0x0043
_ECC_NIST_P256 = 0x0003
_KEY_ATTRS = _OBJ_FIXEDTPM | _OBJ_FIXEDPARENT | _OBJ_SENSITIVEDATAORIGIN | _OBJ_USERWITHAUTH

#: The storage primary every TPM host key lives under (owner hierarchy, empty auth):
#: ECC P-256 with AES-128-CFB, restricted|decrypt|fixedTPM|fixedParent|
#: sensitiveDataOrigin|userWithAuth|noDA, nameAlg SHA-256, empty unique. A marshaled
#: TPMT_PUBLIC. CreatePrimary is deterministic: the same template on the same TPM gives
#: the same key, so the primary is recreated at each start (and after a TPM reset)
#: instead of being stored.
PRIMARY_TEMPLATE: Final = struct.pack(
    ">HHIH" + "HHH" + "HHH" + "HH",
    _ALG_ECC,
    _ALG_SHA256,
    _KEY_ATTRS | _OBJ_NODA | _OBJ_RESTRICTED | _OBJ_DECRYPT,
    0,  # authPolicy: empty
    _ALG_AES,
    128,
    _ALG_CFB,  # symmetric: aes128cfb
    _ALG_NULL,  # scheme
    _ECC_NIST_P256,
    _ALG_NULL,  # kdf
    0,  # unique.x: empty
    0,  # unique.y: empty
)

#: The quote key templates (restricted signing keys under the primary, nameAlg
#: SHA-256, fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA): ``"ecc"`` is
#: ECC P-256 signing ECDSA-SHA-256, ``"rsa"`` RSA-2048 signing RSASSA-SHA-256.
QUOTE_KEY_TEMPLATES: Final[Mapping[str, bytes]] = {
    "ecc": struct.pack(
        ">HHIHHHHHHHH",
        _ALG_ECC,
        _ALG_SHA256,
        _KEY_ATTRS | _OBJ_NODA | _OBJ_RESTRICTED | _OBJ_SIGN,
        0,
        _ALG_NULL,  # symmetric
        _ALG_ECDSA,
        _ALG_SHA256,
        _ECC_NIST_P256,
        _ALG_NULL,  # kdf
        0,
        0,
    ),
    "rsa": struct.pack(
        ">HHIHHHHHIH",
        _ALG_RSA,
        _ALG_SHA256,
        _KEY_ATTRS | _OBJ_NODA | _OBJ_RESTRICTED | _OBJ_SIGN,
        0,
        _ALG_NULL,  # symmetric
        _ALG_RSASSA,
        _ALG_SHA256,
        2048,
        0,  # exponent: default 65537
        0,  # unique: empty
    ),
}

#: EK certificate NV indices, in the order :func:`read_ek` prefers them, with the TCG
#: template (tpm2-pytss' name) of the EK each certifies: L-2 ECC P-256, L-1 RSA-2048,
#: H-3 ECC P-384 (what swtpm 0.7.1 makes for ECC).
EK_CERT_INDICES: Final = (
    (0x01C0000A, "EK-ECC256"),
    (0x01C00002, "EK-RSA2048"),
    (0x01C00016, "EK-HIGH-ECC384"),
)

#: The largest EK certificate read from NV.
MAX_EK_CERT: Final = 4096

#: PolicyC of the TCG EK Credential Profile for SHA-384 (H-3 templates: the EK's
#: authPolicy is PolicyOR(PolicyA, PolicyC)); also in tpm2-tools' tpm2_createak.
POLICY_C_SHA384: Final = bytes.fromhex(
    "d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5"
    "b4947c2d73e63005eed2dc2b3593d165"
)
TPM_RH_ENDORSEMENT: Final = 0x4000000B
TPM_CC_POLICY_SECRET: Final = 0x00000151


def policy_secret_digest(hash_name: str) -> bytes:
    """PolicySecret(TPM_RH_ENDORSEMENT) from an empty digest: the TCG EK PolicyA."""
    first = hashlib.new(hash_name, bytes(hashlib.new(hash_name).digest_size))
    first.update(struct.pack(">II", TPM_CC_POLICY_SECRET, TPM_RH_ENDORSEMENT))
    return hashlib.new(hash_name, first.digest()).digest()  # PolicyRef: empty
