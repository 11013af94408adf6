"""Program identity bootstrap (the original's "Tao paradigm").

On its first run a program:

1. binds itself to the domain: extends its Tao name with ``PolicyKey([hash])``;
2. generates its channel key K;
3. has its host attest ``key(K) speaksfor <its name>``;
4. sends that to the domain service, which validates it and returns a program
   certificate;
5. seals ``{K, certificate, policy certificate}`` with its Tao (policy "self") and
   writes the blob atomically to its state file.

On later runs it unseals the state file instead. A program whose code changed has
another name, so its host refuses to unseal: :func:`load_or_provision` says so and
leaves the file alone (delete it to provision the new version). A state whose
certificate expired, or that belongs to another domain, is provisioned anew; so is
one whose certificate the domain revoked, when ``revocations`` is given (the
domain service then decides whether to certify the program again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from taonet import auth, certs
from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
    ProtocolError,
)
from taonet._files import atomic_write, read_file
from taonet.channel import ChannelIdentity, CRLSource
from taonet.crypto import Signer
from taonet.hosts import Tao
from taonet.provision._client import request_certificate
from taonet.wire import message_class, parse, serialize

__all__ = ["Provisioned", "bind_to_domain", "load_or_provision"]

_MAX_STATE = 1024 * 1024


@attrs.frozen
class Provisioned:
    """A program's channel identity, and whether it was made just now."""

    identity: ChannelIdentity
    principal: auth.Prin
    #: True on the run that provisioned; False when the sealed state was reused.
    fresh: bool


async def bind_to_domain(tao: Tao, policy_cert: bytes) -> auth.Prin:
    """Extend the Tao name with ``PolicyKey([hash])`` unless it already ends with it."""
    anchor = certs.PolicyAnchor(policy_cert, now_ns=time.time_ns())
    key_hash = auth.key_principal(anchor.public_key_der).key_hash
    ext = auth.PrinExt("PolicyKey", (key_hash,))
    name = await tao.get_tao_name()
    if name.last_ext() != ext:
        await tao.extend_tao_name(auth.SubPrin((ext,)))
        name = await tao.get_tao_name()
    return name


async def load_or_provision(
    tao: Tao,
    state_path: str | Path,
    *,
    policy_cert: bytes,
    domain_service: tuple[str, int],
    on_step: Callable[[str], None] = lambda _: None,
    revocations: CRLSource | None = None,
) -> Provisioned:
    """Unseal the program's identity from ``state_path``, or provision and seal one.

    With ``revocations``, an unsealed certificate is checked against its CRL
    (fetched first if it holds none: ProtocolError if the domain service cannot
    be reached, AuthenticationError if its CRL does not verify): a revoked one is
    provisioned anew, and if the domain service will not certify the program
    again, AuthorizationError says both. A :class:`~taonet.provision.RevocationWatcher`
    given as ``revocations`` without an identity asks the domain service as the
    program from then on (:meth:`~taonet.provision.RevocationWatcher.use_identity`).
    """
    path = Path(state_path)
    name = await bind_to_domain(tao, policy_cert)
    on_step(f"program name: {name}")
    revoked: int | None = None
    if await trio.Path(path).exists():
        identity = await _unseal_state(tao, path, policy_cert, on_step)
        if identity is not None and revocations is not None:
            assert identity.certificate is not None
            if revocations.crl is None:
                try:
                    await revocations.refresh()
                except ProtocolError as exc:
                    raise ProtocolError(
                        "cannot check whether the sealed certificate (serial"
                        f" {identity.certificate.serial}) was revoked: {exc}"
                    ) from exc
            if revocations.is_revoked(identity.certificate.serial):
                revoked = identity.certificate.serial
                on_step(f"the domain revoked certificate serial {revoked}: provisioning anew")
                identity = None
        if identity is not None:
            _watch_as(revocations, identity)
            return Provisioned(identity, name, fresh=False)
    signer = Signer.generate()
    on_step("generated a channel key K (ECDSA P-256)")
    statement = auth.Speaksfor(auth.key_principal(signer.public_key_der()), name)
    attestation = await tao.attest(statement)
    on_step(f"host attested: {statement}")
    host, port = domain_service
    try:
        program = await request_certificate(
            host, port, policy_cert, attestation, signer.public_key_der()
        )
    except AuthorizationError as exc:
        if revoked is None:
            raise
        raise AuthorizationError(
            f"the domain revoked this program's certificate (serial {revoked}) and will"
            f" not certify it again: {exc}"
        ) from exc
    on_step(f"domain service issued certificate serial {program.serial}")
    state = message_class("ProgramState")(
        signing_key=signer.to_pkcs8_der(),
        certificate=program.der,
        policy_certificate=policy_cert,
    )
    sealed = await tao.seal(serialize(state), "self")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, sealed, mode=0o600)
    on_step(f"sealed key and certificate to {path} ({len(sealed)} bytes)")
    identity = ChannelIdentity(policy_cert, signer=signer, certificate=program.der)
    _watch_as(revocations, identity)
    return Provisioned(identity, name, fresh=True)


def _watch_as(revocations: CRLSource | None, identity: ChannelIdentity) -> None:
    """A RevocationWatcher asks the domain service as the program from now on."""
    from taonet.provision._crl import RevocationWatcher

    if isinstance(revocations, RevocationWatcher) and revocations.identity is None:
        revocations.use_identity(identity)


async def _unseal_state(
    tao: Tao, path: Path, policy_cert: bytes, on_step: Callable[[str], None]
) -> ChannelIdentity | None:
    blob = read_file(path, limit=_MAX_STATE)
    try:
        data, policy = await tao.unseal(blob)
    except HostError as exc:
        raise HostError(
            f"cannot unseal {path}: it was sealed by another program (did this "
            f"program's code change?). Delete it to provision this version. ({exc})"
        ) from None
    if policy != "self":
        raise HostError(f"{path} was sealed under policy {policy!r}, expected 'self'")
    try:
        state = parse("ProgramState", data, what="sealed program state")
    except CodecError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if bytes(state.policy_certificate) != policy_cert:
        on_step("sealed state belongs to another domain: provisioning anew")
        return None
    try:
        identity = ChannelIdentity(
            policy_cert,
            signer=Signer.from_pkcs8_der(bytes(state.signing_key)),
            certificate=bytes(state.certificate),
        )
    except AuthenticationError as exc:
        on_step(f"sealed certificate is no longer valid ({exc}): provisioning anew")
        return None
    assert identity.certificate is not None
    on_step(f"unsealed key and certificate serial {identity.certificate.serial} from {path}")
    return identity
