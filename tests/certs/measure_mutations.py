"""How many different byte strings verify as one CRL, host or program certificate (item 10).

Every value of every byte, on objects whose signature ends in three zero bits (so
that a signature BIT STRING claiming 1 to 3 unused bits is well-formed DER)::

    .venv/bin/python -m tests.certs.measure_mutations

Before the fix each object had 3 or more accepted mutants, all in the BIT STRING's
unused-bits octet; after it, none.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taonet import AuthenticationError, auth, certs
from taonet.crypto import Signer


def rolled(make: Callable[[], bytes]) -> bytes:
    while True:
        der = make()
        if der[-1] & 0x07 == 0:
            return der


def main() -> None:
    now = time.time_ns()
    policy = Signer.generate()
    cert = certs.make_policy_certificate(policy, common_name="measure", now_ns=now)
    anchor = certs.PolicyAnchor(cert, now_ns=now)
    host_key = Signer.generate().public_key_der()
    program_key = Signer.generate().public_key_der()
    name = auth.key_principal(program_key)
    objects: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
        "crl": (
            rolled(lambda: certs.make_crl(policy, anchor, [5, 9], now_ns=now)),
            lambda d: certs.verify_crl(anchor, d, now_ns=now),
        ),
        "host": (
            rolled(lambda: certs.issue_host_certificate(policy, cert, host_key, now_ns=now)),
            lambda d: anchor.verify_host_certificate(d, host_key_der=host_key, now_ns=now),
        ),
        "program": (
            rolled(
                lambda: (
                    certs.issue_program_certificate(
                        policy, anchor, program_key, name, now_ns=now
                    ).der
                )
            ),
            lambda d: certs.verify_program_certificate(anchor, d, now_ns=now),
        ),
    }
    for kind, (der, check) in objects.items():
        accepted = []
        start = time.perf_counter()
        for i in range(len(der)):
            for value in range(256):
                if value == der[i]:
                    continue
                try:
                    check(der[:i] + bytes([value]) + der[i + 1 :])
                except AuthenticationError:
                    continue
                accepted.append(f"byte {i}: {der[i]:#04x} -> {value:#04x}")
        print(
            f"{kind}: {len(der)} bytes, {len(der) * 255} mutants, {len(accepted)} accepted "
            f"{accepted} ({time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
