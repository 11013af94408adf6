"""Talking to a quote service: ask it to certify a TPM's quote key.

The protocol is the protorpc envelope (:class:`taonet.wire.Envelope`) over a Tao
channel on which the client is anonymous (a TPM host has no certificate yet) and the
service proves a principal under the domain's policy key: one request, header
:data:`~taonet.quoteservice.OP_CERTIFY_QUOTE_KEY` and a ``QuoteServiceRequest`` body;
one answer. A refusal raises :class:`~taonet.quoteservice.QuoteServiceError` with its
code; a request the service could not read comes back as an envelope error, raised
with the class the service gave it (CodecError, ProtocolError). A service that
cannot be reached, does not answer within :data:`REQUEST_TIMEOUT`, answers out of
protocol or breaks the connection raises ProtocolError (the cause chained).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from taonet import auth, certs
from taonet._edges import map_os_errors
from taonet._errors import AuthenticationError, ProtocolError
from taonet.attestation.tpm2_credential import parse_public
from taonet.channel import ChannelIdentity, open_channel
from taonet.provision._client import read_answer
from taonet.quoteservice._protocol import (
    MAX_REPLY,
    OP_CERTIFY_QUOTE_KEY,
    QuoteKeyReply,
    QuoteKeyRequest,
    decode_reply,
    encode_request,
    open_certificate,
)
from taonet.wire import END_OF_STREAM, Envelope, Response, Role

__all__ = ["REQUEST_TIMEOUT", "certify_quote_key", "request_quote_key_certificate"]

#: Bound on one request, connection to answer (wrap calls in trio.fail_after for less).
REQUEST_TIMEOUT: Final = 30.0


async def request_quote_key_certificate(
    host: str, port: int, policy_cert: bytes, request: QuoteKeyRequest
) -> QuoteKeyReply:
    """Send ``request`` to the quote service at ``host:port`` of the domain whose policy
    certificate is ``policy_cert``; return its wrapped certificate (open it with
    :func:`~taonet.quoteservice.open_certificate` once ActivateCredential gave the key).

    AuthenticationError when the peer is not a service of that domain.
    """
    identity = ChannelIdentity.anonymous(policy_cert)
    policy = auth.key_principal(identity.anchor.public_key_der)
    envelope = Envelope(
        Role.CLIENT, body_limit=MAX_REPLY, max_frame=MAX_REPLY, default_error=ProtocolError
    )
    what = f"no answer from the quote service at {host}:{port}"
    with map_os_errors(to=ProtocolError, what=what), trio.fail_after(REQUEST_TIMEOUT):
        stream = await open_channel(host, port, identity, hold_finished=True)
        async with stream:
            peer = stream.peer.principal
            if not isinstance(peer, auth.Prin) or not peer.is_sub_principal_of(policy):
                raise AuthenticationError(f"{peer} is not a service of this domain's policy key")
            chunks = envelope.request(OP_CERTIFY_QUOTE_KEY, 1, encode_request(request))
            await stream.send_all(b"".join(chunks))
            event = await read_answer(stream, envelope, peer="the quote service")
    if event is END_OF_STREAM:
        raise ProtocolError("the quote service closed without answering")
    assert isinstance(event, Response)
    if event.error is not None:
        raise event.error
    return decode_reply(event.body)


async def certify_quote_key(
    host: str,
    port: int,
    policy_cert: bytes,
    request: QuoteKeyRequest,
    activate: Callable[[QuoteKeyReply], Awaitable[bytes]],
) -> bytes:
    """The whole exchange for a TPM host: ask for the certificate, have the TPM recover
    the key (``activate``: TPM2_ActivateCredential of the reply's credential blob and
    encrypted secret, with the quote key and the EK; returns the secret), open the
    certificate and verify it as this domain's tpm2 host certificate for the quote
    key. Returns the certificate (DER), to carry as the attestations' root endorsement.

    AuthenticationError if the certificate does not open or does not verify.
    """
    reply = await request_quote_key_certificate(host, port, policy_cert, request)
    secret = await activate(reply)
    area = parse_public(request.quote_key_public, what="quote key public area")
    cert_der = open_certificate(reply, secret, area.name)
    now = time.time_ns()
    certs.PolicyAnchor(policy_cert, now_ns=now).verify_host_certificate(
        cert_der, host_key_der=area.public_key_der(), signer_type="tpm2", now_ns=now
    )
    return cert_der
