"""A root Tao host whose keys live in a TPM 2.0: creation, opening, its Tao.

``Tpm2Host.create(directory, tcti=..., pcrs=..., alg=...)`` (blocking, once): makes
the quote key under the storage primary, reads the PCRs, seals a fresh deriving key
to them, and writes the state directory (see :mod:`taonet.hosts.tpm2._state`).
``await Tpm2Host.open(directory)``: connects, rebuilds what is kept loaded, reads the
PCRs (they make the name), unseals the deriving key and reads the counter map.
``host.tao()`` is the :class:`~taonet.hosts.BoundTao` of the host (or of a name
below it); ``await host.aclose()`` flushes and disconnects.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import trio

from taonet import auth, certs
from taonet._errors import AuthenticationError, CodecError, ConfigError, HostError
from taonet._log import get_logger
from taonet.attestation import tpm2_credential as tc
from taonet.attestation.tpm2 import DEFAULT_PCRS
from taonet.hosts._core import BoundTao
from taonet.hosts.tpm2 import _wire
from taonet.hosts.tpm2._core import Tpm2Core
from taonet.hosts.tpm2._nvcounters import Tpm2Counters
from taonet.hosts.tpm2._runtime import TpmRuntime, policy_pcr_digest
from taonet.hosts.tpm2._session import ecc_point, object_name
from taonet.hosts.tpm2._setup import (
    PRIMARY_TEMPLATE,
    activate_credential,
    create_quote_key,
    read_ek,
    read_pcrs,
)
from taonet.hosts.tpm2._state import HostConfig, StateDir
from taonet.hosts.tpm2._transport import SyncTransport, Transport, parse_tcti

__all__ = ["Tpm2Host"]

_log = get_logger(__name__)
_ALGS: Final = ("ecc", "rsa")


def _quote_key_der(tpm2b_public: bytes, what: str) -> bytes:
    """PKIX DER of a quote key's TPM2B_PUBLIC; ConfigError if it is not an ECC P-256 or
    RSA-2048 restricted signing key of the kind a quote service certifies."""
    try:
        area = tc.parse_public(tc.tpmt_public_from_tpm2b(tpm2b_public), what=what)
        tc.check_quote_key(area)
        return area.public_key_der()
    except (CodecError, AuthenticationError) as exc:
        raise ConfigError(f"{what}: not a usable quote key ({exc})") from None


def _read_ek(tcti: str, index: int | None) -> tuple[bytes, bytes]:
    return read_ek(tcti, index=index)


def _activate(
    tcti: str, private: bytes, public: bytes, blob: bytes, secret: bytes, index: int | None
) -> bytes:
    return activate_credential(tcti, private, public, blob, secret, ek_index=index)


class Tpm2Host:
    """A TPM 2.0 root host (see the module docstring). Use :meth:`create` and :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        config: HostConfig,
        runtime: TpmRuntime,
        core: Tpm2Core,
        counters: Tpm2Counters,
    ) -> None:
        self.directory = directory
        self.config = config
        self._runtime = runtime
        self._core = core
        self._counters = counters

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | Path,
        *,
        tcti: str,
        pcrs: Iterable[int] = DEFAULT_PCRS,
        alg: str = "ecc",
    ) -> Path:
        """Make a new TPM host's state directory (blocking: run it in a thread from trio).

        Nothing else may hold the TPM's connection meanwhile (swtpm serves one at a
        time: close a running host on the same swtpm first, or use its
        :meth:`run_blocking`). Returns the directory.

        ConfigError for a bad TCTI, PCR list or algorithm, or a directory that
        already holds a host; HostError (with the TPM's rc) if the TPM refuses.
        """
        if alg not in _ALGS:
            raise ConfigError(f"a quote key algorithm must be 'ecc' or 'rsa', not {alg!r}")
        try:
            numbers = _wire.check_pcrs(pcrs)
        except HostError as exc:
            raise ConfigError(str(exc)) from None
        config = HostConfig(tcti=tcti, pcrs=numbers, alg=alg)
        state = StateDir(Path(directory))
        if state.exists("tpm2host.json"):
            raise ConfigError(f"{directory} already holds a TPM host")
        quote_private, quote_public = create_quote_key(tcti, alg)  # type: ignore[arg-type]
        values = read_pcrs(tcti, numbers)
        template = _wire.sealed_template(policy_pcr_digest(values))
        with SyncTransport(parse_tcti(tcti)) as tpm:
            handles, params = tpm.call(_wire.create_primary_command(PRIMARY_TEMPLATE))
            primary = _wire.handle_of(handles)
            primary_public = _wire.parse_create_primary(params)
            try:
                _, params = tpm.call(
                    _wire.create_command(primary, template, secrets.token_bytes(32))
                )
                deriving = b"".join(_wire.parse_create(params))
            finally:
                tpm.call(_wire.flush_command(primary))
        _quote_key_der(quote_public, "the quote key the TPM made")  # one this host can use
        ecc_point(primary_public, PRIMARY_TEMPLATE)  # the P-256 key sessions are salted to
        state.create(config, quote_private, quote_public, deriving, object_name(primary_public))
        _log.info("tpm2_host_created", directory=str(directory), pcrs=list(numbers), alg=alg)
        return state.path

    @classmethod
    async def open(
        cls,
        directory: str | Path,
        *,
        tcti: str | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> Tpm2Host:
        """Open the host in ``directory`` (``tcti`` overrides the stored one).

        ConfigError if the directory is not a TPM host's (or was edited); HostError
        if the TPM refuses (another TPM, or PCRs that no longer unseal its key).
        """
        path = Path(directory)
        state = StateDir(path)

        def read() -> tuple[
            HostConfig, tuple[bytes, bytes], tuple[bytes, bytes], bytes | None, bytes
        ]:
            return (
                state.config(),
                state.quote_key(),
                state.deriving_sealed(),
                state.certificate(),
                state.primary_name(),
            )

        (
            config,
            (quote_private, quote_public),
            deriving,
            cert,
            primary_name,
        ) = await trio.to_thread.run_sync(read)
        if tcti is not None:
            config = HostConfig(tcti=tcti, pcrs=config.pcrs, alg=config.alg)
        quote_der = _quote_key_der(quote_public, str(path / "quote_key.pub"))
        runtime = TpmRuntime(
            Transport(parse_tcti(config.tcti)),
            pcrs=config.pcrs,
            quote_private=quote_private,
            quote_public=quote_public,
            primary_name=primary_name,
        )
        try:
            values = await runtime.start()
            core = Tpm2Core(
                runtime, quote_key_der=quote_der, pcrs=values, root_endorsement=cert, clock=clock
            )
            try:
                key = await core.unseal_object(*deriving)
            except HostError as exc:
                raise HostError(
                    f"cannot unseal this host's deriving key ({exc}): the PCRs differ from "
                    "those at creation, or the directory belongs to another TPM",
                    rc=exc.rc,
                ) from exc
            core.set_deriving_key(key)
            counters = Tpm2Counters(core, runtime, state)
            await counters.load()
        except BaseException:
            await runtime.aclose()
            raise
        _log.info("tpm2_host_opened", directory=str(path), name=str(core.name)[:200])
        return cls(path, config, runtime, core, counters)

    # -- identity ----------------------------------------------------------------------

    @property
    def name(self) -> auth.Prin:
        """``tpm2([sha256 PKIX quote key]).PCRs("nums", "hexvals")``."""
        return self._core.name

    @property
    def pcrs(self) -> dict[int, bytes]:
        """The PCR values the name states (read when the host opened)."""
        return dict(self._core.pcrs)

    @property
    def quote_key_der(self) -> bytes:
        """The quote key (PKIX DER)."""
        return self._core.quote_key_der

    @property
    def quote_key_public(self) -> bytes:
        """The quote key's marshaled TPM2B_PUBLIC (its TPM name is computed from it)."""
        return self._runtime.quote_blobs[1]

    @property
    def root_endorsement(self) -> bytes | None:
        """The domain's certificate for the quote key, once certified."""
        return self._core.root_endorsement

    @property
    def core(self) -> Tpm2Core:
        return self._core

    @property
    def counters(self) -> Tpm2Counters:
        return self._counters

    def tao(self, name: auth.Prin | None = None) -> BoundTao:
        """The Tao a program named ``name`` (default: the host itself) sees."""
        return BoundTao(self._core, name if name is not None else self.name, self._get_counters)

    async def _get_counters(self) -> Tpm2Counters:
        return self._counters

    async def set_root_endorsement(self, cert_der: bytes) -> None:
        """Attach and store the domain's certificate for the quote key."""
        cert = certs.load_certificate(cert_der, what="quote key certificate")
        if certs.public_key_der(cert) != self.quote_key_der:
            raise ConfigError("that certificate certifies another key than this host's quote key")
        await trio.to_thread.run_sync(StateDir(self.directory).write_certificate, cert_der)
        self._core.root_endorsement = cert_der

    async def certify(
        self, address: str, *, policy_cert: bytes, ek_index: int | None = None
    ) -> bytes:
        """Have the domain's quote service at ``address`` ("HOST:PORT") certify the quote key.

        Sends the EK certificate, the EK and quote key public areas and this host's
        name; the service answers with the certificate wrapped by MakeCredential for
        this TPM's EK, which only this TPM's ActivateCredential opens (for this quote
        key). The certificate is checked to be the domain's (``policy_cert``) tpm2
        host certificate for this quote key, stored, and attached to every
        attestation from now on. Returns it (DER).

        AuthenticationError if the service is not the domain's, or the certificate is
        not right; HostError if the TPM refuses; ProtocolError if the service does.
        """
        from taonet.quoteservice import (
            QuoteKeyRequest,
            open_certificate,
            request_quote_key_certificate,
        )

        hostname, sep, port = address.rpartition(":")
        if not sep or not hostname or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"a quote service address is HOST:PORT, not {address[:80]!r}")
        tcti = self.config.tcti
        ek_cert, ek_public = await self.run_blocking(_read_ek, tcti, ek_index)
        area = tc.tpmt_public_from_tpm2b(self.quote_key_public)
        request = QuoteKeyRequest(
            ek_certificate=ek_cert,
            ek_public=ek_public,
            quote_key_public=area,
            host_name=self.name,
        )
        reply = await request_quote_key_certificate(
            hostname.strip("[]"), int(port), policy_cert, request
        )
        private, public = self._runtime.quote_blobs
        secret = await self.run_blocking(
            _activate,
            tcti,
            private,
            public,
            reply.credential_blob,
            reply.encrypted_secret,
            ek_index,
        )
        cert_der = open_certificate(reply, secret, tc.object_name(area))
        now = time.time_ns()
        certs.PolicyAnchor(policy_cert, now_ns=now).verify_host_certificate(
            cert_der, host_key_der=self.quote_key_der, signer_type="tpm2", now_ns=now
        )
        await self.set_root_endorsement(cert_der)
        _log.info("tpm2_quote_key_certified", name=str(self.name)[:200])
        return cert_der

    async def run_blocking(self, fn: Callable[..., Any], *args: object) -> Any:
        """Run blocking TPM work (tpm2-pytss) in a thread with this host's connection
        closed (swtpm serves one connection at a time)."""
        return await self._runtime.run_blocking(fn, *args)

    async def aclose(self) -> None:
        """Flush what the host keeps loaded and disconnect."""
        await self._runtime.aclose()

    async def __aenter__(self) -> Tpm2Host:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
