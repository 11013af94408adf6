"""``taonet domain policy --add-manufacturer-ca PEM`` / ``--remove-manufacturer-ca PEM``.

The TPM manufacturer CA certificates the domain's quote service trusts for EK
certificates (roots and intermediates), kept in the domain's ``manufacturer_cas.pem``,
whose SHA-256 the policy key signs into the domain's configuration (a new serial at
each change; see :mod:`taonet.quoteservice`). The options take PEM
files (each may hold several certificates) and are repeatable; ``--show`` also lists
the CAs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taonet.cli._password import get_password
from taonet.domain import Domain
from taonet.files import read_file
from taonet.quoteservice import (
    MAX_MANUFACTURER_CAS,
    add_manufacturer_cas,
    manufacturer_cas,
    remove_manufacturer_cas,
)


def add_options(parser: Any) -> None:
    """Register the two options on ``taonet domain policy``."""
    parser.add_argument(
        "--add-manufacturer-ca",
        metavar="PEM",
        action="append",
        default=[],
        type=Path,
        help="trust the TPM manufacturer CA certificate(s) in PEM (roots and intermediates) "
        "for EK certificates at the quote service (repeatable)",
    )
    parser.add_argument(
        "--remove-manufacturer-ca",
        metavar="PEM",
        action="append",
        default=[],
        type=Path,
        help="stop trusting the manufacturer CA certificate(s) in PEM (repeatable)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """True if the command line changes the manufacturer CA list."""
    return bool(args.add_manufacturer_ca or args.remove_manufacturer_ca)


def apply(
    args: argparse.Namespace, domain: Domain, lines: list[str], report: dict[str, Any]
) -> None:
    """Make the changes asked for (every file read first), and note them; with
    ``--show`` (or changes) list the CAs in force."""
    if wanted(args):
        adds = [read_file(path, limit=MAX_MANUFACTURER_CAS) for path in args.add_manufacturer_ca]
        removes = [
            read_file(path, limit=MAX_MANUFACTURER_CAS) for path in args.remove_manufacturer_ca
        ]
        signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
        for pem in adds:
            for ca in add_manufacturer_cas(domain, signer, pem):
                lines.append(f"manufacturer CA added: {ca.subject.rfc4514_string()[:200]}")
        for pem in removes:
            for ca in remove_manufacturer_cas(domain, signer, pem):
                lines.append(f"manufacturer CA removed: {ca.subject.rfc4514_string()[:200]}")
    if wanted(args) or args.show:
        cas = manufacturer_cas(domain)
        report["config_serial"] = domain.config_serial
        report["manufacturer_cas"] = [ca.subject.rfc4514_string() for ca in cas]
        lines.extend(f"manufacturer CA: {ca.subject.rfc4514_string()[:200]}" for ca in cas)
