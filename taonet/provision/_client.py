"""Talking to a domain service: ask for a program certificate, fetch the CRL.

The protocol is the protorpc envelope (:class:`taonet.wire.Envelope`) over a Tao
channel on which the client may be anonymous (it has no certificate yet) and the
service proves a principal under the policy key: a request is a header naming the
method (:data:`OP_CERTIFY` or :data:`OP_GET_CRL`) and a ``DomainServiceRequest`` body,
the answer a header and a ``DomainServiceResponse`` body. A refusal is a normal
answer whose body carries a typed error code with a reason:

* ``bad_request``: the request was malformed;
* ``invalid_attestation``: the attestation or key failed a check (AuthenticationError);
* ``unauthorized``: the guard refused the program (AuthorizationError);
* ``internal_error``: the service failed; nothing was issued;
* ``rate_limited``: this address has used up its refusals for now.

A request the service could not read (a body that does not decode or is over its
limit, an unknown method) comes back as an envelope error naming the call, and is
raised with the class the service gave it (CodecError, ProtocolError, ...). A
service that cannot be reached, does not answer within :data:`REQUEST_TIMEOUT`,
answers out of protocol (another call's seq or op: the envelope checks) or breaks
the connection part way raises ProtocolError, the original OSError,
trio.TooSlowError, trio.BrokenResourceError or CodecError as its ``__cause__``.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Final

import trio

from taonet import auth, certs
from taonet._edges import map_os_errors
from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ProtocolError,
    TaoError,
)
from taonet.attestation import Attestation
from taonet.channel import ChannelIdentity, open_channel
from taonet.wire import (
    END_OF_STREAM,
    NEED_DATA,
    Envelope,
    Response,
    Role,
    message_class,
    parse,
    serialize,
)

__all__ = [
    "ERROR_BAD_REQUEST",
    "ERROR_INTERNAL",
    "ERROR_INVALID_ATTESTATION",
    "ERROR_UNAUTHORIZED",
    "OP_CERTIFY",
    "OP_GET_CRL",
    "DomainServiceError",
    "fetch_crl",
    "request_certificate",
]

ERROR_BAD_REQUEST: Final = "bad_request"
ERROR_INVALID_ATTESTATION: Final = "invalid_attestation"
ERROR_UNAUTHORIZED: Final = "unauthorized"
ERROR_INTERNAL: Final = "internal_error"
#: The domain service's methods (the protorpc header's ``op``).
OP_CERTIFY: Final = "DomainService.Certify"
OP_GET_CRL: Final = "DomainService.GetCRL"
MAX_RESPONSE: Final = 1024 * 1024
_CHUNK: Final = 64 * 1024
#: Bound on one request, connection to answer (wrap calls in trio.fail_after for less).
REQUEST_TIMEOUT: Final = 30.0


@functools.lru_cache(maxsize=16)
def _anonymous(policy_cert: bytes) -> ChannelIdentity:
    # Building TLS contexts is provisioning work (milliseconds): once per domain.
    # The policy certificate's validity is still checked on every use.
    return ChannelIdentity.anonymous(policy_cert)


class DomainServiceError(TaoError):
    """The domain service refused a request; ``code`` says which way."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"the domain service refused ({code}): {reason}")
        self.code = code
        self.reason = reason


def principal_is_service(stream_principal: object, identity: ChannelIdentity) -> None:
    """AuthenticationError unless the channel's peer is a service of the domain whose
    policy key ``identity`` trusts (a program of the domain is not)."""
    policy = auth.key_principal(identity.anchor.public_key_der)
    if not isinstance(stream_principal, auth.Prin) or not stream_principal.is_sub_principal_of(
        policy
    ):
        raise AuthenticationError(
            f"{stream_principal} is not a service of this domain's policy key"
        )


def new_envelope() -> Envelope:
    """The client's envelope for domain service calls (answers bounded in size)."""
    return Envelope(
        Role.CLIENT, body_limit=MAX_RESPONSE, max_frame=MAX_RESPONSE, default_error=ProtocolError
    )


async def read_answer(
    stream: trio.abc.ReceiveStream, envelope: Envelope, *, peer: str = "the domain service"
) -> Any:
    """The next event of ``envelope`` (a Response or END_OF_STREAM), reading ``stream``
    as needed; ProtocolError, naming ``peer``, for an answer that is not one."""
    try:
        while (event := envelope.next_event()) is NEED_DATA:
            envelope.receive_data(await stream.receive_some(_CHUNK))
    except (CodecError, ProtocolError) as exc:
        raise ProtocolError(f"bad answer from {peer}: {exc}") from exc
    return event


def decoded_answer(event: Any, op: str) -> Any:
    """The DomainServiceResponse of ``event`` (from :func:`read_answer`), or the error
    the service gave: AuthorizationError for ``unauthorized``, DomainServiceError for
    another code, ProtocolError for no or a bad answer."""
    if event is END_OF_STREAM:
        raise ProtocolError("the domain service closed without answering")
    assert isinstance(event, Response)  # to this call: the envelope checked its seq and op
    if event.error is not None:
        raise event.error  # the service's error for this call, of the class it gave
    try:
        response = parse("DomainServiceResponse", event.body, what=f"{op} response")
    except CodecError as exc:
        raise ProtocolError(f"bad answer from the domain service: {exc}") from exc
    if response.HasField("error_code"):
        code, reason = str(response.error_code), str(response.reason)
        if code == ERROR_UNAUTHORIZED:
            raise AuthorizationError(f"the domain service refused ({code}): {reason}")
        raise DomainServiceError(code, reason)
    return response


def checked_certificate(
    identity: ChannelIdentity, response: Any, program_key_der: bytes
) -> certs.ProgramCertificate:
    """The program certificate in ``response``, verified under ``identity``'s policy
    anchor and issued for ``program_key_der``."""
    if not response.HasField("certificate"):
        raise ProtocolError("the domain service answered without a certificate")
    program = certs.verify_program_certificate(
        identity.anchor, bytes(response.certificate), now_ns=time.time_ns()
    )
    if program.public_key_der != program_key_der:
        raise AuthenticationError("the domain service certified another key than ours")
    return program


async def _exchange(host: str, port: int, identity: ChannelIdentity, op: str, request: Any) -> Any:
    what = f"no answer from the domain service at {host}:{port}"
    envelope = new_envelope()
    with map_os_errors(to=ProtocolError, what=what), trio.fail_after(REQUEST_TIMEOUT):
        # The request goes with our last handshake flight, and the verdict with the
        # answer: one write each way after the server's first flight.
        stream = await open_channel(host, port, identity, hold_finished=True)
        async with stream:
            principal_is_service(stream.peer.principal, identity)
            await stream.send_all(b"".join(envelope.request(op, 1, serialize(request))))
            event = await read_answer(stream, envelope)
    return decoded_answer(event, op)


async def request_certificate(
    host: str,
    port: int,
    policy_cert: bytes,
    attestation: Attestation,
    program_key_der: bytes,
) -> certs.ProgramCertificate:
    """Ask the domain service for a program certificate; verify what comes back."""
    identity = _anonymous(policy_cert)
    request = message_class("DomainServiceRequest")(
        kind="certify", attestation=attestation.to_bytes(), program_key=program_key_der
    )
    response = await _exchange(host, port, identity, OP_CERTIFY, request)
    return checked_certificate(identity, response, program_key_der)


async def fetch_crl(host: str, port: int, policy_cert: bytes) -> certs.RevocationList:
    """Fetch and verify the domain's certificate revocation list."""
    identity = _anonymous(policy_cert)
    request = message_class("DomainServiceRequest")(kind="crl")
    response = await _exchange(host, port, identity, OP_GET_CRL, request)
    if not response.HasField("crl"):
        raise ProtocolError("the domain service answered without a CRL")
    return certs.verify_crl(identity.anchor, bytes(response.crl), now_ns=time.time_ns())
