"""Throughput of the trust core, against raw ``cryptography`` ECDSA in the same run.

Measures, each for a fixed time slice in this process:

* raw ECDSA P-256 sign and verify with ``cryptography``, like for like with what an
  attestation costs: the verify checks the attestation's own ECDSA signature with the
  host's own public key over the very bytes it signs (the serialized
  ``ContextualizedData`` of the statement, hashed with SHA-256 inside the call), and the
  sign signs those same bytes with a key of the same curve;
* attestation build (:func:`taonet.attestation.attest`) and full validation, without and
  with the chain to the policy key (host certificate check);
* full validation of attestations of the same shape, each by a key of its own, cycling
  through more keys than any per-key cache holds (``validate_unseen_key``): what a
  validator pays for a signer it has not seen lately;
* seal and unseal of 1 KiB on the soft Tao;
* disclosure directive verification (:func:`taonet.disclosure.verify_directive`), of a
  directive signed by the policy key and of one signed by a program key with its
  program certificate (remembered by the anchor, by its exact bytes), against raw
  ``cryptography`` ECDSA P-256 verification of that directive's own signature over the
  bytes it signs (``raw_directive_verify``).

Rates are operations per second of this process's CPU time (see :func:`rate`). The
measurements alternate in rounds. Each rate is the median over the rounds, and
each ratio the median over the rounds of the ratio within a round, so that a burst
of load from elsewhere moves few of them.

Prints a table, then as its last line one JSON object with every rate (operations per
second) and the ratios ``attest_vs_raw_sign``, ``validate_vs_raw_verify``,
``validate_with_policy_vs_raw_verify``, ``validate_unseen_key_vs_raw_verify``,
``directive_verify_ratio_vs_raw_verify`` (policy-signed) and
``directive_verify_program_ratio_vs_raw_verify`` (program-signed).

    python loadtests/core_bench.py [--quick] [--seconds S] [--no-directive-caches]

``--no-directive-caches`` turns off what :mod:`taonet.disclosure` remembers (statement
decoding, message parsing, key principals, program certificate checks), to measure
what those caches are worth.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import auth, certs
from taonet.attestation import UNROOTED, attest, validate
from taonet.crypto import ATTESTATION_CONTEXT, DIRECTIVE_CONTEXT, KdfParams, Signer
from taonet.disclosure import DirectiveOp, sign_directive, verify_directive
from taonet.domain import Domain, DomainTemplate
from taonet.hosts import SoftHost
from taonet.protected import ObjectId
from taonet.wire import parse

#: Distinct signer keys cycled through by ``validate_unseen_key``.
UNSEEN_KEYS = 4096


def uvarint(n: int) -> bytes:
    """Protobuf's base-128 varint of ``n``."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def signed_bytes(data: bytes, context: str) -> bytes:
    """The serialized ``ContextualizedData{context, data}``: what a Tao signature signs."""
    ctx = context.encode()
    return b"\x0a" + uvarint(len(ctx)) + ctx + b"\x12" + uvarint(len(data)) + data


def directive_fields(data: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a directive_message, read by hand (not by taonet)."""
    fields: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 7 == 0:  # the varint ``type``
            while data[i] & 0x80:
                i += 1
            i += 1
            continue
        length = shift = 0
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields[tag >> 3] = data[i : i + length]
        i += length
    return fields


def disable_directive_caches() -> None:
    """Make every directive verification redo what taonet.disclosure remembers."""
    import taonet.disclosure._directive as directive_module
    import taonet.disclosure._verify as verify_module

    def uncached_certificate(policy: Any, der: bytes, now_ns: int) -> Any:
        policy.check_window(now_ns)
        return verify_module._program_once(policy, der)

    replaced: dict[str, Any] = {
        "decode_statement": directive_module._decode_statement,
        "parse_envelope": lambda data: directive_module._parse_envelope(bytes(data)),
        "_key_principal": verify_module._key_principal.__wrapped__,
        "_check_program_cert": uncached_certificate,
    }
    for name, value in replaced.items():
        setattr(verify_module, name, value)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per CPU second of ``fn`` over about ``seconds`` of this process's CPU.

    Everything measured here is CPU work in this one process (no I/O, no threads),
    so its CPU time is what it costs; unlike wall time, it does not count the time
    other processes on a shared machine hold the CPU.
    """
    count = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(25):
            fn()
        count += 25
        now = time.process_time()
        if now >= deadline:
            return count / (now - start)


def interleaved(
    fns: dict[str, Callable[[], object]], seconds: float, rounds: int
) -> dict[str, list[float]]:
    """The rate of each function in each of ``rounds`` alternating slices.

    Alternating the baseline with the subjects, slice by slice, keeps a change of
    machine load from landing on one side of a ratio only.
    """
    for fn in fns.values():  # warm up caches and lazy imports
        for _ in range(20):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(rate(fn, seconds / rounds))
    return samples


def ratio(samples: dict[str, list[float]], subject: str, baseline: str) -> float:
    """Median over the rounds of subject / baseline, each pair measured in one round."""
    pairs = zip(samples[subject], samples[baseline], strict=True)
    return statistics.median(s / b for s, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument("--seconds", type=float, help="seconds per measured operation")
    parser.add_argument(
        "--no-directive-caches",
        action="store_true",
        help="verify directives without taonet.disclosure's caches (the figure before them)",
    )
    args = parser.parse_args()
    if args.no_directive_caches:
        disable_directive_caches()
    slice_s = args.seconds or (1.0 if args.quick else 6.0)
    rounds = 5 if args.quick else 9

    with tempfile.TemporaryDirectory() as tmp:
        password = b"bench"
        domain = Domain.create(
            f"{tmp}/domain", DomainTemplate(guard="Liberal"), password, kdf=KdfParams.for_tests()
        )
        host = SoftHost.create(f"{tmp}/host", password, kdf=KdfParams.for_tests())
        host.set_root_endorsement(
            domain.certify_host(domain.unlock(password), host.public_key_der())
        )
        program = host.name.extend(domain.policy_subprin)
        key = Signer.generate()
        message = auth.Speaksfor(auth.key_principal(key.public_key_der()), program)
        att = host.attest_for(program, message)
        now = time.time_ns()
        att_bytes = att.to_bytes()
        # The baseline does exactly the ECDSA work of one validation: the attestation's
        # signature, the host's key, the bytes that signature covers.
        signed = signed_bytes(att.serialized_statement, ATTESTATION_CONTEXT)
        host_pub = serialization.load_der_public_key(host.public_key_der())
        assert isinstance(host_pub, ec.EllipticCurvePublicKey)
        att_sig = bytes(parse("SignedData", att.signature).signature)
        host_pub.verify(att_sig, signed, ec.ECDSA(hashes.SHA256()))  # the same bytes, or fail
        raw_key = ec.generate_private_key(host_pub.curve)
        ecdsa = ecdsa_sha256 = ec.ECDSA(hashes.SHA256())  # made once, as taonet makes its own

        # Same shape as ``att`` (a sub-principal of the signer says a key speaks for
        # it), each by a fresh key; more keys than the per-key caches hold (1024).
        unseen = []
        for _ in range(UNSEEN_KEYS):
            signer = Signer.generate()
            speaker = auth.key_principal(signer.public_key_der()).extend(domain.policy_subprin)
            statement = auth.Speaksfor(auth.key_principal(key.public_key_der()), speaker)
            unseen.append(attest(signer, statement, speaker=speaker, now_ns=now).to_bytes())
        unseen_cycle = itertools.cycle(unseen)

        # Directives: one by the policy key, one by a program key with its certificate.
        policy_signer = domain.unlock(password)
        anchor = domain.policy_anchor
        delegate = program.extend(auth.PrinExt("Version", (auth.Int(2),)))
        oid = ObjectId("/bench/content-key", 1)
        start, end = now - 10**9, now + 3600 * 10**9
        by_policy = sign_directive(
            policy_signer,
            op=DirectiveOp.READ,
            delegate=delegate,
            object_id=oid,
            not_before=start,
            not_after=end,
        )
        program_key = Signer.generate()
        program_cert = certs.issue_program_certificate(
            policy_signer, anchor, program_key.public_key_der(), program, now_ns=now
        )
        by_program = sign_directive(
            program_key,
            op=DirectiveOp.READ,
            delegate=delegate,
            object_id=oid,
            cert=program_cert.der,
            not_before=start,
            not_after=end,
        )
        revoked = certs.RevocationList(
            serials=[1], this_update_ns=now, next_update_ns=now, number=1
        )
        directive = directive_fields(by_policy)  # 2: statement, 4: signature
        policy_pub = anchor.public_key
        directive_signed = signed_bytes(directive[2], DIRECTIVE_CONTEXT)
        directive_sig = bytes(parse("SignedData", directive[4]).signature)
        policy_pub.verify(directive_sig, directive_signed, ecdsa_sha256)  # or fail
        verify_directive(by_policy, policy=anchor, now_ns=now)
        verify_directive(by_program, policy=anchor, now_ns=now, revoked=revoked)

        tao = host.tao_for(program)
        data = b"x" * 1024
        sealed = trio.run(tao.seal, data)

        samples = interleaved(
            {
                "raw_sign_per_s": lambda: raw_key.sign(signed, ecdsa),
                "raw_verify_per_s": lambda: host_pub.verify(att_sig, signed, ecdsa),
                "attest_per_s": lambda: host.attest_for(program, message),
                "validate_per_s": lambda: validate(att_bytes, now_ns=now, policy_cert=UNROOTED),
                "validate_with_policy_per_s": lambda: validate(
                    att_bytes, now_ns=now, policy_cert=domain.policy_anchor
                ),
                "validate_unseen_key_per_s": lambda: validate(
                    next(unseen_cycle), now_ns=now, policy_cert=UNROOTED
                ),
                "raw_directive_verify_per_s": lambda: policy_pub.verify(
                    directive_sig, directive_signed, ecdsa
                ),
                "directive_verify_per_s": lambda: verify_directive(
                    by_policy, policy=anchor, now_ns=now
                ),
                "directive_verify_program_per_s": lambda: verify_directive(
                    by_program, policy=anchor, now_ns=now, revoked=revoked
                ),
                "seal_1k_per_s": lambda: host.seal_for(program, data),
                "unseal_1k_per_s": lambda: host.unseal_for(program, sealed),
            },
            slice_s,
            rounds,
        )
    results = {name: statistics.median(values) for name, values in samples.items()}
    results["attest_vs_raw_sign"] = ratio(samples, "attest_per_s", "raw_sign_per_s")
    for subject in ("validate", "validate_with_policy", "validate_unseen_key"):
        results[f"{subject}_vs_raw_verify"] = ratio(samples, f"{subject}_per_s", "raw_verify_per_s")
    results["directive_verify_ratio_vs_raw_verify"] = ratio(
        samples, "directive_verify_per_s", "raw_directive_verify_per_s"
    )
    results["directive_verify_program_ratio_vs_raw_verify"] = ratio(
        samples, "directive_verify_program_per_s", "raw_directive_verify_per_s"
    )
    for name, value in results.items():
        print(f"{name:40s} {value:12.2f}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
