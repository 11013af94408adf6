"""TPM 2.0 figures: taonet's quote verifier and TPM host, each against a baseline in the same run.

Quote verification (pure CPU, ECC P-256). One quote is made on the TPM with tpm2-pytss:
a restricted ECDSA P-256 quote key under an ECC P-256 storage primary quotes the
host's PCRs (SHA-256 bank) with qualifyingData = SHA-256 of a serialized statement
``tpm2(..).PCRs(..) says K speaksfor tpm2(..).PCRs(..)``. Every verifier checks that
same quote (the same TPMS_ATTEST and TPMT_SIGNATURE bytes):

* ``raw_verify``: a bare ``cryptography`` ECDSA P-256/SHA-256 verify of the signature
  (converted to DER once, outside the loop) over the TPMS_ATTEST bytes, with the key
  loaded once: the signature check and nothing else;
* ``quote_verify``: :func:`taonet.attestation.tpm2.verify_quote` (the quote key as
  PKIX DER, the expected extraData and PCR values): parse, extraData, PCR selection
  and digest, signature;
* ``validate_tpm2``: :func:`taonet.attestation.validate` of the whole ``tpm2``
  attestation as bytes (decode, statement, speaker's PCRs against the quote,
  signature, validity window; ``UNROOTED``, so no certificate chain);
* ``keylime``: Keylime's ``keylime.tpm.tpm_util.checkquote`` (the quote key as PEM,
  which it loads on each call, the nonce as bytes, the PCR values in tpm2-tools'
  serialized form), which checks signature, nonce and PCR digest. Keylime is
  installed only for this benchmark (see ``KEYLIME_INSTALL``); without it the other
  figures are still reported.

Each verifier is first checked to accept that quote and (all but ``raw_verify``, which
checks the signature alone) to refuse one the same key signed over other qualifying
data. Rates are operations per second of this process's CPU time. Each round
measures raw, keylime, quote_verify, validate_tpm2, keylime, raw (the middle two
swapped every other round), so each subject sits between two measurements of each
baseline; a round's ratio is the subject's rate over the mean of the baseline's two,
and each ratio reported is the median over the rounds
(``quote_verify_ratio_vs_raw_verify``, ``quote_verify_ratio_vs_keylime``,
``validate_tpm2_ratio_vs_raw_verify``, ``validate_tpm2_ratio_vs_keylime``).

TPM operations (wall time per call; swtpm is another process). taonet's
:class:`~taonet.hosts.tpm2.Tpm2Host` (``tao = host.tao()``, the host's own name) against
the same TPM commands sent with tpm2-pytss's ESAPI, blocking, in this same process,
on the same swtpm, the way a tpm2-pytss user writes them: the storage primary
created once and kept loaded, the quote key's context saved once, the PolicyPCR
digest computed once (trial session), ESAPI's default password session for the quote
key, and its swtpm TCTI (which opens a TCP connection per command):

* ``attest``: ``await tao.attest(message)`` (which also encodes the statement and
  builds the attestation), against SHA-256 of an encoded statement of the same shape
  (encoded once, outside the timing), then ContextLoad(quote key) + Quote(the host's
  PCRs, that digest as qualifyingData) + FlushContext;
* ``seal`` (1 KiB): ``await tao.seal(data)``, against a fresh 32-byte AES-256-GCM key
  put in a KEYEDHASH sealed object by Create under the primary (authPolicy = the
  PolicyPCR digest of the host's PCRs) and the data encrypted under that key;
* ``unseal``: ``await tao.unseal(blob)``, against Load(the sealed object under the
  primary) + PolicyRestart + PolicyPCR on a policy session kept between calls + Unseal
  + FlushContext, then the AES-GCM decryption. Both sides give Unseal the same
  protection: the kept session is salted to the storage primary (ECDH to its P-256
  key) with AES-128-CFB response encryption (the ESYS session attribute ENCRYPT),
  so both compute the command HMAC, check the response HMAC and decrypt the answer.

swtpm serves one connection at a time, and taonet's host keeps one open, so the two
sides take turns in batches: before a tpm2-pytss batch the host's connection is
closed with :meth:`~taonet.hosts.tpm2.Tpm2Host.run_blocking` (which also flushes what
the host keeps loaded) and the baseline creates its primary and session; after it the
baseline flushes them (the host flushes whatever it finds loaded when it reconnects),
and taonet's first call, which reconnects and reloads, is not timed. Each round times
a tpm2-pytss batch, a taonet batch and another tpm2-pytss batch of ``--ops`` calls;
a round's ratio is the median taonet time over the mean of the two baseline batches'
medians, and the ratio reported is the median over the rounds
(``attest_ratio_vs_tpm2_pytss``, ``seal_ratio_vs_tpm2_pytss``,
``unseal_ratio_vs_tpm2_pytss``: time ratios, lower is faster). ``*_ms`` are median
wall times per call, ``*_cpu_ms`` the median CPU time of this process per call.

The benchmark starts its own swtpm (:class:`taonet.hosts.tpm2.Swtpm`) in a temporary
directory, or uses one already running with ``--tcti`` (nothing else may hold
objects on it: the host flushes them). On a shared machine, read the ratios, not the
absolute figures. Prints a table, then as its last line one JSON object with the
figures and ratios.

    python loadtests/tpm_bench.py [--quick] [--tcti swtpm:host=127.0.0.1,port=N]
        [--rounds N] [--seconds S] [--ops N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TSS2_LOG", "all+NONE")  # ESAPI prints expected failures otherwise

import structlog
import trio

# Run as a script, this folder is on sys.path: the same CPU-time rate as core_bench.
from core_bench import rate as cpu_rate
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from taonet import auth
from taonet.attestation import UNROOTED, validate
from taonet.crypto import Signer

KEYLIME_INSTALL = "pip install --no-deps keylime==7.14.3 pyyaml pyasn1 pyasn1-modules"
DATA = bytes(range(256)) * 4  # 1 KiB sealed in each seal
IO_TIMEOUT = 600.0
YEAR_NS = 365 * 24 * 3600 * 10**9


# --------------------------------------------------------------------------- tpm2-pytss side
class PytssBaseline:
    """The TPM work of taonet's calls, done with tpm2-pytss's ESAPI as its users write it.

    Made once: a restricted ECDSA P-256 quote key under an ECC P-256 storage primary
    (its context saved), the PolicyPCR digest of ``pcrs`` from a trial session and the
    sealed-object template. :meth:`acquire` creates the primary (kept loaded) and one
    policy session kept for unsealing; :meth:`release` flushes both, so that taonet's
    host, which flushes whatever it finds loaded when it (re)connects, finds nothing
    of ours. Every call is blocking, in the calling thread.
    """

    def __init__(self, tcti: str, pcrs: Sequence[int]) -> None:
        from tpm2_pytss import ESAPI, TCTILdr
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT
        from tpm2_pytss.types import (
            TPM2B_PUBLIC,
            TPM2B_SENSITIVE_CREATE,
            TPML_PCR_SELECTION,
            TPMT_PUBLIC,
            TPMT_SYM_DEF,
        )

        self._esapi = esapi = ESAPI(TCTILdr.parse(tcti))
        self.pcrs = tuple(sorted(pcrs))
        self._selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(p) for p in self.pcrs))
        fixed = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA
        made_here = fixed | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
        self._primary_template = TPM2B_PUBLIC.parse(
            "ecc256:aes128cfb",
            objectAttributes=made_here | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT,
            nameAlg="sha256",
        )
        quote_template = TPM2B_PUBLIC.parse(
            "ecc256:ecdsa-sha256:null",
            objectAttributes=made_here | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT,
            nameAlg="sha256",
        )
        self._null_sym = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)
        self._cfb_sym = TPMT_SYM_DEF.parse("aes128cfb")
        self._primary: Any = None
        self._session: Any = None
        self.acquire()
        try:
            private, public, _, _, _ = esapi.create(
                self._primary, TPM2B_SENSITIVE_CREATE(), quote_template
            )
            self.quote_key_der: bytes = public.to_der()
            self.quote_key_pem: bytes = public.to_pem()
            key = esapi.load(self._primary, private, public)
            self._quote_context = esapi.context_save(key)
            esapi.flush_context(key)

            trial = esapi.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, self._null_sym, TPM2_ALG.SHA256
            )
            esapi.policy_pcr(trial, b"", self._selection)
            policy = bytes(esapi.policy_get_digest(trial))
            esapi.flush_context(trial)
            sealed = TPMT_PUBLIC(
                type=TPM2_ALG.KEYEDHASH,
                nameAlg=TPM2_ALG.SHA256,
                objectAttributes=fixed,
                authPolicy=policy,
            )
            sealed.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
            self._sealed_template = TPM2B_PUBLIC(publicArea=sealed)
            self.pcr_values = self._read_pcrs()
        except BaseException:
            self.close()
            raise

    def acquire(self) -> None:
        """CreatePrimary (kept loaded) and StartAuthSession (policy, salted to the
        primary, response encryption; kept): once, then kept."""
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_SESSION
        from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE

        if self._primary is not None:
            return
        esapi = self._esapi
        self._primary, _, _, _, _ = esapi.create_primary(
            TPM2B_SENSITIVE_CREATE(), self._primary_template, ESYS_TR.OWNER
        )
        # Salted to the primary, AES-128-CFB response encryption: the protection taonet's
        # host gives its Unseal answers.
        self._session = esapi.start_auth_session(
            self._primary, ESYS_TR.NONE, TPM2_SE.POLICY, self._cfb_sym, TPM2_ALG.SHA256
        )
        esapi.trsess_set_attributes(
            self._session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT
        )

    def release(self) -> None:
        """Flush the primary and the session (the TPM is taonet's until :meth:`acquire`)."""
        for handle in (self._session, self._primary):
            if handle is not None:
                self._esapi.flush_context(handle)
        self._session = self._primary = None

    def _read_pcrs(self) -> dict[int, bytes]:
        _, selection, digests = self._esapi.pcr_read(self._selection)
        bitmap = int.from_bytes(
            bytes(selection[0].pcrSelect)[: selection[0].sizeofSelect], "little"
        )
        read = [p for p in range(32) if bitmap >> p & 1]
        if read != list(self.pcrs):
            raise SystemExit(f"PCR_Read returned PCRs {read}, not {list(self.pcrs)}")
        return {p: bytes(d) for p, d in zip(read, digests, strict=True)}

    def quote(self, statement: bytes) -> tuple[bytes, bytes]:
        """SHA-256(statement), ContextLoad + Quote + FlushContext: (TPMS_ATTEST, TPMT_SIGNATURE)."""
        esapi = self._esapi
        key = esapi.context_load(self._quote_context)
        try:
            quoted, signature = esapi.quote(
                key, self._selection, hashlib.sha256(statement).digest()
            )
        finally:
            esapi.flush_context(key)
        return bytes(quoted), signature.marshal()

    def seal(self, data: bytes) -> tuple[Any, Any, bytes]:
        """A fresh AES-256-GCM key into a PolicyPCR sealed object (Create), data under it."""
        from tpm2_pytss.types import (
            TPM2B_SENSITIVE_CREATE,
            TPM2B_SENSITIVE_DATA,
            TPMS_SENSITIVE_CREATE,
        )

        key = AESGCM.generate_key(256)
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(key)))
        private, public, _, _, _ = self._esapi.create(
            self._primary, sensitive, self._sealed_template
        )
        nonce = os.urandom(12)
        return private, public, nonce + AESGCM(key).encrypt(nonce, data, None)

    def unseal(self, sealed: tuple[Any, Any, bytes]) -> bytes:
        """Load + PolicyRestart + PolicyPCR + Unseal + FlushContext, then AES-GCM open."""
        private, public, box = sealed
        esapi = self._esapi
        obj = esapi.load(self._primary, private, public)
        try:
            esapi.policy_restart(self._session)
            esapi.policy_pcr(self._session, b"", self._selection)
            key = bytes(esapi.unseal(obj, session1=self._session))
        finally:
            esapi.flush_context(obj)
        return AESGCM(key).decrypt(box[:12], box[12:], None)

    def close(self) -> None:
        """Flush what this baseline keeps loaded (swtpm has no resource manager).

        Best effort: after a failure half-way the host may have flushed them already,
        and the error that stopped the run is the one to see.
        """
        try:
            self.release()
        except Exception as exc:
            print(f"tpm2-pytss baseline: could not flush its objects: {exc}", file=sys.stderr)
        finally:
            self._primary = self._session = None
            self._esapi.close()


# --------------------------------------------------------------------------- quote verification
def tools_pcr_blob(pcr_values: Mapping[int, bytes]) -> bytes:
    """tpm2-tools' serialized ``tpm2_pcrs`` (Keylime's pcrblob), SHA-256 bank.

    Little-endian memory dump: u32 count (1), 16 TPMS_PCR_SELECTION slots of 8 bytes
    (u16 hash, u8 sizeofSelect = 3, u8[4] pcrSelect, u8 pad), u32 number of TPML_DIGEST
    that follow, each u32 count and 8 TPM2B_DIGEST of u16 size + a 64-byte buffer.
    """
    pcrs = sorted(pcr_values)
    bitmap = sum(1 << p for p in pcrs)
    out = struct.pack("<IHB", 1, 0x000B, 3) + bitmap.to_bytes(4, "little") + b"\0"
    out += b"\0" * 8 * 15
    groups = [pcrs[i : i + 8] for i in range(0, len(pcrs), 8)]
    out += struct.pack("<I", len(groups))
    for group in groups:
        out += struct.pack("<I", len(group))
        for j in range(8):
            value = pcr_values[group[j]] if j < len(group) else b""
            out += struct.pack("<H", len(value)) + value.ljust(64, b"\0")
    return out


def ecdsa_der(tpmt_signature: bytes) -> bytes:
    """The DER ECDSA signature in a marshaled TPMT_SIGNATURE (ECDSA, SHA-256)."""
    alg, hash_alg, r_size = struct.unpack_from(">HHH", tpmt_signature)
    if (alg, hash_alg) != (0x0018, 0x000B):
        raise SystemExit(f"not an ECDSA/SHA-256 quote signature: {alg:#x}/{hash_alg:#x}")
    r = tpmt_signature[6 : 6 + r_size]
    (s_size,) = struct.unpack_from(">H", tpmt_signature, 6 + r_size)
    s = tpmt_signature[8 + r_size : 8 + r_size + s_size]
    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


def load_keylime() -> Any | None:
    """keylime.tpm.tpm_util, its logging-config warning silenced; None when not installed."""
    logging.disable(logging.WARNING)  # "Config file not found ... logging.conf": harmless
    try:
        from keylime.tpm import tpm_util  # type: ignore[import-untyped]
    except ImportError:
        return None
    finally:
        logging.disable(logging.NOTSET)
    return tpm_util


def verifiers(baseline: PytssBaseline, tpm_util: Any | None) -> dict[str, Callable[[], object]]:
    """Each verifier of one quote made by ``baseline``.

    Each is checked once to accept that quote, and each but ``raw_verify`` (which
    checks the signature alone) to refuse a quote the same TPM key signed over other
    qualifying data, so that no figure is of a check that does not check.
    """
    from taonet.attestation import tpm2

    pcrs = baseline.pcr_values
    key_der = baseline.quote_key_der
    public_key = serialization.load_der_public_key(key_der)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    ecdsa = ec.ECDSA(hashes.SHA256())
    pem, blob = baseline.quote_key_pem, tools_pcr_blob(pcrs)
    speaker = tpm2.host_name(key_der, pcrs)
    now = time.time_ns()
    statement = auth.Says(
        speaker=speaker,
        message=auth.Speaksfor(auth.key_principal(Signer.generate().public_key_der()), speaker),
        time=now,
        expiration=now + YEAR_NS,
    )
    serialized = auth.encode(statement)
    extra = hashlib.sha256(serialized).digest()

    def checks(quoted: bytes, signature: bytes) -> dict[str, Callable[[], object]]:
        attestation = tpm2.tpm2_attestation(serialized, key_der, quoted, signature).to_bytes()
        der_signature = ecdsa_der(signature)
        fns: dict[str, Callable[[], object]] = {
            "raw_verify": lambda: public_key.verify(der_signature, quoted, ecdsa),
            "quote_verify": lambda: tpm2.verify_quote(
                key_der, quoted, signature, extra_data=extra, pcrs=pcrs
            ),
            "validate_tpm2": lambda: validate(attestation, now_ns=now, policy_cert=UNROOTED),
        }
        if tpm_util is not None:
            fns["keylime"] = lambda: tpm_util.checkquote(
                pem, extra, signature, quoted, blob, "sha256"
            )
        return fns

    fns = checks(*baseline.quote(serialized))
    for fn in fns.values():
        fn()
    for name, fn in checks(*baseline.quote(serialized + b" (another)")).items():
        if name == "raw_verify":
            continue
        try:
            fn()
        except Exception:  # refused, as it must be
            continue
        raise SystemExit(f"{name} accepted a quote over other qualifying data")
    return fns


def measure_verifiers(
    fns: Mapping[str, Callable[[], object]], *, seconds: float, rounds: int
) -> dict[str, float]:
    """Interleaved rates and per-round ratios (see the module docstring)."""
    for fn in fns.values():  # warm up
        for _ in range(50):
            fn()
    baselines = [b for b in ("raw_verify", "keylime") if b in fns]
    subjects = ["quote_verify", "validate_tpm2"]
    rates: dict[str, list[float]] = {name: [] for name in fns}
    ratios: dict[tuple[str, str], list[float]] = {}
    for i in range(rounds):
        middle = subjects if i % 2 == 0 else subjects[::-1]
        order = [*baselines, *middle, *baselines[::-1]]
        got: dict[str, list[float]] = {name: [] for name in fns}
        for name in order:
            got[name].append(cpu_rate(fns[name], seconds))
        for name, values in got.items():
            rates[name].append(statistics.fmean(values))
        for subject in subjects:
            for base in baselines:
                ratios.setdefault((subject, base), []).append(
                    got[subject][0] / statistics.fmean(got[base])
                )
    out: dict[str, float] = {
        f"{name}_per_s": round(statistics.median(v)) for name, v in rates.items()
    }
    for (subject, base), values in ratios.items():
        out[f"{subject}_ratio_vs_{base}"] = round(statistics.median(values), 3)
    return out


# --------------------------------------------------------------------------- TPM operations
def _ms(samples: Sequence[int]) -> float:
    return statistics.median(samples) / 1e6


async def paired_batches(
    name: str,
    subject: Callable[[], Awaitable[object]],
    baseline: Callable[[], object],
    *,
    switch: Callable[[bool], Awaitable[None]],
    rounds: int,
    ops: int,
) -> dict[str, float]:
    """Per round: ``ops`` baseline calls, ``ops`` subject calls, ``ops`` baseline calls.

    ``switch(True)`` hands the TPM to the baseline (taonet's connection closed),
    ``switch(False)`` back; the subject's first call after it, which reconnects and
    rebuilds, is not timed. Returns medians per call (wall and this process's CPU) and
    the median over the rounds of the per-round time ratio.
    """
    subject_all: list[int] = []
    baseline_all: list[int] = []
    subject_cpu: list[int] = []
    baseline_cpu: list[int] = []
    ratios = []

    async def baseline_batch() -> list[int]:
        await switch(True)
        try:
            times = []
            for _ in range(ops):
                cpu, start = time.process_time_ns(), time.perf_counter_ns()
                baseline()
                times.append(time.perf_counter_ns() - start)
                baseline_cpu.append(time.process_time_ns() - cpu)
        finally:
            await switch(False)
        baseline_all.extend(times)
        return times

    for _ in range(rounds):
        before = await baseline_batch()
        await subject()  # reconnects: not timed
        times = []
        for _ in range(ops):
            cpu, start = time.process_time_ns(), time.perf_counter_ns()
            await subject()
            times.append(time.perf_counter_ns() - start)
            subject_cpu.append(time.process_time_ns() - cpu)
        subject_all.extend(times)
        after = await baseline_batch()
        ratios.append(_ms(times) / statistics.fmean([_ms(before), _ms(after)]))
    return {
        f"{name}_ms": round(_ms(subject_all), 4),
        f"tpm2_pytss_{name}_ms": round(_ms(baseline_all), 4),
        f"{name}_ratio_vs_tpm2_pytss": round(statistics.median(ratios), 3),
        f"{name}_cpu_ms": round(_ms(subject_cpu), 4),
        f"tpm2_pytss_{name}_cpu_ms": round(_ms(baseline_cpu), 4),
    }


async def measure_host(
    baseline: PytssBaseline, directory: Path, tcti: str, *, rounds: int, ops: int
) -> dict[str, float]:
    """taonet's attest, seal and unseal against ``baseline``'s (see the module docstring)."""
    from taonet.hosts.tpm2 import Tpm2Host

    baseline.release()
    await trio.to_thread.run_sync(lambda: Tpm2Host.create(directory, tcti=tcti, pcrs=baseline.pcrs))
    async with await Tpm2Host.open(directory) as host:
        if host.pcrs != baseline.pcr_values:
            raise SystemExit(f"the host's PCRs {host.pcrs} are not {baseline.pcr_values}")
        tao = host.tao()
        message = auth.Speaksfor(auth.key_principal(Signer.generate().public_key_der()), host.name)
        now = time.time_ns()
        statement = auth.encode(
            auth.Says(speaker=host.name, message=message, time=now, expiration=now + YEAR_NS)
        )
        blob = await tao.seal(DATA)
        if (await tao.unseal(blob))[0] != DATA:
            raise SystemExit("taonet's unseal returned other data")

        async def switch(to_baseline: bool) -> None:
            if to_baseline:
                # Closes the host's connection and flushes what it keeps loaded; its
                # next call reconnects and rebuilds.
                await host.run_blocking(lambda: None)
                baseline.acquire()
            else:
                baseline.release()

        await switch(True)
        try:
            sealed = baseline.seal(DATA)
            if baseline.unseal(sealed) != DATA:
                raise SystemExit("the tpm2-pytss unseal returned other data")
        finally:
            await switch(False)
        out: dict[str, float] = {}
        out |= await paired_batches(
            "attest", lambda: tao.attest(message), lambda: baseline.quote(statement),
            switch=switch, rounds=rounds, ops=ops,
        )  # fmt: skip
        out |= await paired_batches(
            "seal", lambda: tao.seal(DATA), lambda: baseline.seal(DATA),
            switch=switch, rounds=rounds, ops=ops,
        )  # fmt: skip
        out |= await paired_batches(
            "unseal", lambda: tao.unseal(blob), lambda: baseline.unseal(sealed),
            switch=switch, rounds=rounds, ops=ops,
        )  # fmt: skip
        return out


@contextmanager
def own_swtpm(directory: Path) -> Iterator[str]:
    """A throwaway swtpm (EK certificates from a throwaway CA) in ``directory``: its TCTI."""
    from taonet.hosts.tpm2 import Swtpm

    with Swtpm.create(directory) as swtpm:
        yield swtpm.tcti


async def run(args: argparse.Namespace, tcti: str, directory: Path) -> dict[str, Any]:
    from taonet.attestation.tpm2 import DEFAULT_PCRS

    tpm_util = load_keylime()
    if tpm_util is None:
        print(f"Keylime is not installed, so no figures against it: {KEYLIME_INSTALL}",
              file=sys.stderr)  # fmt: skip
    results: dict[str, Any] = {}
    baseline = PytssBaseline(tcti, DEFAULT_PCRS)
    try:
        fns = verifiers(baseline, tpm_util)
        results |= measure_verifiers(fns, seconds=args.seconds, rounds=args.rounds)
        with trio.fail_after(IO_TIMEOUT):
            results |= await measure_host(
                baseline, directory / "host", tcti, rounds=args.rounds, ops=args.ops
            )
    finally:
        baseline.close()
    results |= {"rounds": args.rounds, "ops_per_batch": args.ops, "seconds_per_slice": args.seconds}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--tcti", help="use this running TPM (swtpm:host=127.0.0.1,port=N)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=0.4, help="CPU seconds per rate slice")
    parser.add_argument("--ops", type=int, default=40, help="TPM calls per timed batch")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.ops = 7, 0.15, 20
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="taonet-tpm-bench-") as tmp:
        directory = Path(tmp)
        if args.tcti:
            result = trio.run(run, args, args.tcti, directory)
        else:
            with own_swtpm(directory / "swtpm") as tcti:
                result = trio.run(run, args, tcti, directory)
    for key, value in result.items():
        print(f"{key:<42}{value:>14}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
