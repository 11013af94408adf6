"""Disclosure directives: the values, the codec of ``directive_message``, and signing.

A directive is ``Delegator [from T1] [until T2] says Op(Delegate, [object id])``
(the object id being a serialized ``object_id_message``), signed with
:data:`~taonet.crypto.DIRECTIVE_CONTEXT` by the policy key, or by a program whose
certificate (carried in the message) chains to the policy key. The wire format is
the original CloudProxy's ``secret_disclosure.directive_message``; the original
never wrote a validity window, taonet writes both ends and enforces them (see
:mod:`taonet.disclosure._verify`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
from typing import Any, Final

import attrs
from cryptography import x509

from taonet import auth
from taonet._errors import CodecError
from taonet.certs import load_certificate, public_key_der
from taonet.crypto import DIRECTIVE_CONTEXT, Signer
from taonet.disclosure._schema import SECRET_DISCLOSURE, message_class, parse, serialize
from taonet.protected import ObjectId, decode_object_id, encode_object_id

__all__ = [
    "MAX_DIRECTIVE_BYTES",
    "Directive",
    "DirectiveOp",
    "decode_directive",
    "directive_digest",
    "sign_directive",
]

#: Largest directive_message read at all (a program certificate included).
MAX_DIRECTIVE_BYTES: Final = 64 * 1024
# Statements up to this size have their decoding remembered (by their exact bytes).
_CACHED_STATEMENT_BYTES: Final = 2048
# Directives up to this size have their parse remembered (by their exact bytes).
_CACHED_ENVELOPE_BYTES: Final = 4096


class DirectiveOp(enum.Enum):
    """What a directive allows; the value is the predicate name on the wire."""

    READ = "Read"
    WRITE = "Write"
    CREATE = "Create"
    DELETE = "Delete"
    OWN = "Own"


_OPS: Final = {op.value: op for op in DirectiveOp}


@attrs.frozen
class Directive:
    """A decoded directive: ``delegator says op(delegate, object_id)``.

    From :func:`decode_directive` it is only what the bytes say; from
    :func:`~taonet.disclosure.verify_directive` it is what the domain vouches for,
    with ``signer_key`` (the signing key's PKIX DER) and ``by_policy`` filled in.
    Times are Unix nanoseconds: ``not_before`` the statement's time,
    ``not_after`` its expiration (None when absent, as in the original's).
    """

    op: DirectiveOp
    #: Who may: the principal the directive is for.
    delegate: auth.Prin
    object_id: ObjectId
    #: Who says so: the statement's speaker.
    delegator: auth.Prin
    not_before: int | None
    not_after: int | None
    #: The signing key's principal, ``key([sha256 of its PKIX DER])``.
    signer: auth.Prin
    #: The signing key (PKIX DER), once verified; empty from :func:`decode_directive`.
    signer_key: bytes = attrs.field(default=b"", repr=False)
    #: The signer's program certificate (DER), when a program signed.
    cert: bytes | None = attrs.field(default=None, repr=False)
    #: The directive_message bytes as received.
    raw: bytes = attrs.field(default=b"", repr=False)
    #: Set by verification: True when the speaker is the domain's policy key itself.
    by_policy: bool = False
    #: Set by verification of a program-signed directive: its certificate's serial.
    cert_serial: int | None = None

    @property
    def digest(self) -> str:
        """The directive's name for logs and audits: SHA-256 (hex) of its signed
        statement and its signer field (:func:`directive_digest`), from ``raw``.

        Not of ``raw``: anyone holding a directive can write the same grant in other
        bytes (ECDSA's (r, n-s), a policy certificate attached or not), which keep
        this name. ValueError for a Directive made by hand, without ``raw``.
        """
        if not self.raw:
            raise ValueError("this Directive has no bytes (raw) to name it by")
        return directive_digest(self.raw)

    def grants(self, principal: auth.Prin, op: DirectiveOp, object_id: ObjectId) -> bool:
        """Whether this directive gives ``principal`` ``op`` on ``object_id`` (all exact).

        Says nothing about whether the directive is genuine: ask this of what
        :func:`~taonet.disclosure.verify_directive` returned.
        """
        return self.delegate == principal and self.op is op and self.object_id == object_id


@attrs.frozen
class Envelope:
    """The fields of a directive_message, parsed but not interpreted (internal)."""

    type: int | None
    statement: bytes | None
    signer: bytes | None
    signature: bytes | None
    cert: bytes | None


@attrs.frozen
class Statement:
    """What a directive's serialized statement says (internal: the op is a name)."""

    speaker: auth.Prin
    op_name: str
    delegate: auth.Prin
    object_id: ObjectId
    time: int | None
    expiration: int | None


def parse_envelope(data: bytes) -> Envelope:
    """The fields of a directive_message; CodecError unless it is one, canonically written.

    Canonical: known fields only, each at most once, in field order, with the
    shortest varints, as the original and taonet write them; so one directive has
    one encoding (but ECDSA's own malleability: name a directive by its statement).
    Directives up to 4 KiB have their parse remembered by their exact bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"directive: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) <= _CACHED_ENVELOPE_BYTES:
        return _parse_envelope_cached(data)
    return _parse_envelope(data)


@functools.lru_cache(maxsize=1024)
def _parse_envelope_cached(data: bytes) -> Envelope:
    return _parse_envelope(data)


def _parse_envelope(data: bytes) -> Envelope:
    msg = parse("directive_message", data, limit=MAX_DIRECTIVE_BYTES, what="directive")
    msg.DiscardUnknownFields()  # kept, they would be written back: not compared
    if serialize(msg) != data:
        raise CodecError(
            "directive: not in canonical form (unknown, repeated or reordered fields, "
            "or a longer encoding than the one signers write)"
        )
    return Envelope(
        type=msg.type if msg.HasField("type") else None,
        statement=msg.serialized_statement if msg.HasField("serialized_statement") else None,
        signer=msg.signer if msg.HasField("signer") else None,
        signature=msg.signature if msg.HasField("signature") else None,
        cert=msg.cert if msg.HasField("cert") else None,
    )


_DIGEST_LABEL: Final = b"taonet directive digest v1\x00"


def directive_digest(data: bytes) -> str:
    """SHA-256 (hex) of a directive_message's signed statement and signer field, each
    length-prefixed after a label: what names one grant by one key, whatever else
    its bytes carry (the signature's encoding, a certificate). CodecError unless
    ``data`` parses as a canonical directive_message with both fields."""
    env = parse_envelope(data)
    if env.statement is None or env.signer is None:
        raise CodecError("directive: statement and signer are required to name it")
    outer = hashlib.sha256(_DIGEST_LABEL)
    for part in (env.statement, env.signer):
        outer.update(len(part).to_bytes(8, "big"))
        outer.update(part)
    return outer.hexdigest()


def decode_statement(data: bytes) -> Statement:
    """What a serialized statement says; CodecError unless it is
    ``Prin [from T] [until T] says Name(Prin, Bytes(object_id_message))``.

    The decoding of statements up to 2 KiB is remembered by their exact bytes.
    """
    if len(data) <= _CACHED_STATEMENT_BYTES:
        return _decode_statement_cached(data)
    return _decode_statement(data)


@functools.lru_cache(maxsize=1024)
def _decode_statement_cached(data: bytes) -> Statement:
    return _decode_statement(data)


def _decode_statement(data: bytes) -> Statement:
    form = auth.decode_form(data)
    if not isinstance(form, auth.Says):
        raise CodecError(f"directive statement is a {type(form).__name__}, not a says")
    if not isinstance(form.speaker, auth.Prin):
        raise CodecError("directive statement's speaker is not a principal")
    pred = form.message
    if not isinstance(pred, auth.Pred):
        raise CodecError(f"directive statement says a {type(pred).__name__}, not a predicate")
    if len(pred.args) != 2:
        raise CodecError(f"directive predicate has {len(pred.args)} arguments, expected 2")
    delegate, oid = pred.args
    if not isinstance(delegate, auth.Prin):
        raise CodecError("directive predicate's first argument is not a principal")
    if not isinstance(oid, auth.Bytes):
        raise CodecError("directive predicate's second argument is not bytes (an object id)")
    return Statement(
        speaker=form.speaker,
        op_name=pred.name,
        delegate=delegate,
        object_id=decode_object_id(oid.value),
        time=form.time,
        expiration=form.expiration,
    )


def op_of(name: str) -> DirectiveOp | None:
    """The operation named ``name``, or None if it is not one of the five."""
    return _OPS.get(name)


def decode_directive(data: bytes) -> Directive:
    """Decode a directive_message, checking its form but not its signature.

    CodecError (and nothing else) for anything malformed: over
    :data:`MAX_DIRECTIVE_BYTES`, not canonical protobuf, a type other than
    SECRET_DISCLOSURE, a missing statement, signer or signature, a statement not of
    the directive's shape, an operation not among the five. Reads the original's
    directives (no time or expiration). The result is not verified: see
    :func:`~taonet.disclosure.verify_directive`.
    """
    env = parse_envelope(data)
    if env.type != SECRET_DISCLOSURE:
        raise CodecError(f"directive: type {env.type} is not SECRET_DISCLOSURE (1)")
    if env.statement is None or env.signer is None or env.signature is None:
        raise CodecError("directive: statement, signer and signature are all required")
    statement = decode_statement(env.statement)
    op = op_of(statement.op_name)
    if op is None:
        raise CodecError(f"directive: operation {_short(statement.op_name)} is not one of {_NAMES}")
    return Directive(
        op=op,
        delegate=statement.delegate,
        object_id=statement.object_id,
        delegator=statement.speaker,
        not_before=statement.time,
        not_after=statement.expiration,
        signer=auth.decode_prin(env.signer),
        cert=env.cert,
        raw=bytes(data),
    )


def sign_directive(
    signer: Signer,
    *,
    op: DirectiveOp,
    delegate: auth.Prin,
    object_id: ObjectId,
    not_after: int | None,
    not_before: int | None = None,
    cert: bytes | None = None,
) -> bytes:
    """The directive_message bytes of ``speaker says op(delegate, object_id)``, signed.

    Without ``cert`` the speaker is ``signer``'s own key principal (for the policy
    key). With ``cert``, a program certificate of ``signer``'s key, the speaker is
    the program the certificate names (its ``taonet:program:`` URI, or for the
    original's certificates the principal text of its subject CommonName), and the
    certificate travels in the message. ``not_before``/``not_after`` (Unix ns) are
    written as the statement's time and expiration; ``not_after=None`` makes a
    directive without end, which verifiers refuse unless told otherwise.
    ValueError for an empty window or a certificate of another key.
    """
    if not isinstance(op, DirectiveOp):
        raise TypeError(f"op must be a DirectiveOp, not {type(op).__name__}")
    if not isinstance(delegate, auth.Prin):
        raise TypeError(f"delegate must be an auth.Prin, not {type(delegate).__name__}")
    if not isinstance(object_id, ObjectId):
        raise TypeError(f"object_id must be an ObjectId, not {type(object_id).__name__}")
    if not_before is not None and not_after is not None and not_before >= not_after:
        raise ValueError("not_before must be before not_after")
    key_prin = auth.key_principal(signer.public_key_der())
    speaker = key_prin
    if cert is not None:
        parsed = load_certificate(cert, what="program certificate")
        if public_key_der(parsed) != signer.public_key_der():
            raise ValueError("the certificate certifies another key than the signer's")
        speaker = named_principal(parsed)
    statement = auth.Says(
        speaker,
        auth.Pred(op.value, (delegate, auth.Bytes(encode_object_id(object_id)))),
        time=not_before,
        expiration=not_after,
    )
    serialized = auth.encode(statement)
    fields: dict[str, Any] = {
        "type": SECRET_DISCLOSURE,
        "serialized_statement": serialized,
        "signer": auth.encode(key_prin),
        "signature": signer.sign(serialized, DIRECTIVE_CONTEXT),
    }
    if cert is not None:
        fields["cert"] = cert
    return serialize(message_class("directive_message")(**fields))


def named_principal(cert: x509.Certificate) -> auth.Prin:
    """The program a certificate names: its ``taonet:`` URI's principal when it has
    one, else (the original's certificates) the principal text of its CommonName.

    CodecError if neither names a principal.
    """
    from taonet._errors import AuthenticationError
    from taonet.certs import certificate_principal

    if has_taonet_uri(cert):
        try:
            return certificate_principal(cert, "program")
        except AuthenticationError as exc:
            raise CodecError(str(exc)) from None
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise CodecError("certificate has no taonet: URI and not one CommonName naming a principal")
    try:
        return auth.parse_prin(names[0].value)
    except CodecError as exc:
        raise CodecError(f"certificate's CommonName is not a principal: {exc}") from None


def has_taonet_uri(cert: x509.Certificate) -> bool:
    """Whether the certificate carries a ``taonet:`` subjectAltName URI (taonet's profile)."""
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    uris = alt.get_values_for_type(x509.UniformResourceIdentifier)
    return any(uri.partition(":")[0].lower() == "taonet" for uri in uris)


_NAMES: Final = ", ".join(op.value for op in DirectiveOp)


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
