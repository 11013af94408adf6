"""Protobuf messages shared with the original CloudProxy, built without protoc.

The schemas below are the proto2 messages that cross a process or machine
boundary (see the CloudProxy format sheet). They are declared as data and turned
into message classes at import time with ``descriptor_pb2`` and
``message_factory``: no generated code to keep in step with the protobuf runtime,
no protoc at build time.

These classes are internal. Public APIs take and return frozen attrs values and
convert at the codec boundary; decoding untrusted bytes goes through
:func:`parse`, which raises :class:`~taonet.CodecError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from taonet._errors import CodecError

__all__ = [
    "MESSAGES",
    "Schema",
    "build_messages",
    "message_class",
    "parse",
    "parse_message",
    "serialize",
]

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REQ, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REQUIRED, _F.LABEL_REPEATED
_TYPES: Final = {
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "bool": _F.TYPE_BOOL,
}
_PACKAGE: Final = "tao"

# message name -> [(field name, number, label, type)]; a type that is not a
# scalar names another message (or the enum CryptoVersion) in this package.
_SCHEMA: Final[dict[str, list[tuple[str, int, int, str]]]] = {
    # Signatures (keys.proto of the original).
    "ContextualizedData": [("context", 1, _REQ, "string"), ("data", 2, _REQ, "bytes")],
    "CryptoHeader": [
        ("version", 1, _REQ, "CryptoVersion"),
        ("key_name", 2, _OPT, "string"),
        ("key_epoch", 3, _OPT, "int32"),
        ("key_type", 4, _OPT, "string"),
        ("key_purpose", 5, _OPT, "string"),
        ("key_status", 6, _OPT, "string"),
    ],
    "SignedData": [("header", 1, _REQ, "CryptoHeader"), ("signature", 2, _REQ, "bytes")],
    # Attestations (attestation.proto).
    "Attestation": [
        ("serialized_statement", 1, _REQ, "bytes"),
        ("signer_type", 2, _REQ, "string"),
        ("signer_key", 3, _REQ, "bytes"),
        ("signature", 4, _REQ, "bytes"),
        ("serialized_delegation", 5, _OPT, "bytes"),
        ("serialized_endorsements", 6, _REP, "bytes"),
        ("tpm2_quote_structure", 7, _OPT, "bytes"),
        ("root_endorsement", 8, _OPT, "bytes"),
    ],
    # Signed ACL guard rules (acl_guard.proto).
    "ACLSet": [("entries", 1, _REP, "string")],
    "SignedACLSet": [("serialized_aclset", 1, _REQ, "bytes"), ("signature", 2, _REQ, "bytes")],
    # Tao RPC (tao_rpc.proto, protorpc header).
    "RPCHeader": [
        ("op", 1, _REQ, "string"),
        ("seq", 2, _REQ, "uint64"),
        ("error", 3, _OPT, "string"),
    ],
    "RPCRequest": [
        ("data", 1, _OPT, "bytes"),
        ("size", 2, _OPT, "int32"),
        ("policy", 3, _OPT, "string"),
        ("time", 4, _OPT, "int64"),
        ("expiration", 5, _OPT, "int64"),
        ("issuer", 6, _OPT, "bytes"),
        ("label", 7, _OPT, "string"),
        ("counter", 8, _OPT, "int64"),
    ],
    # The domain service (taonet's own; the original's had no typed errors).
    "DomainServiceRequest": [
        ("kind", 1, _REQ, "string"),
        ("attestation", 2, _OPT, "bytes"),
        ("program_key", 3, _OPT, "bytes"),
        # DomainService.WatchCRL: the cRLNumber the client holds (unsigned, big-endian).
        ("known_crl_number", 4, _OPT, "bytes"),
    ],
    "DomainServiceResponse": [
        ("error_code", 1, _OPT, "string"),
        ("reason", 2, _OPT, "string"),
        ("certificate", 3, _OPT, "bytes"),
        ("chain", 4, _REP, "bytes"),
        ("crl", 5, _OPT, "bytes"),
    ],
    # The quote service (taonet's own): a TPM's EK certificate and public areas in, a
    # quote-key certificate out, wrapped with MakeCredential for that EK.
    "QuoteServiceRequest": [
        ("ek_certificate", 1, _REQ, "bytes"),
        ("ek_public", 2, _REQ, "bytes"),
        ("quote_key_public", 3, _REQ, "bytes"),
        ("host_name", 4, _REQ, "bytes"),
    ],
    "QuoteServiceResponse": [
        ("error_code", 1, _OPT, "string"),
        ("reason", 2, _OPT, "string"),
        ("credential_blob", 3, _OPT, "bytes"),
        ("encrypted_secret", 4, _OPT, "bytes"),
        ("encrypted_certificate", 5, _OPT, "bytes"),
    ],
    # What a program seals to disk after provisioning (taonet's own).
    "ProgramState": [
        ("signing_key", 1, _REQ, "bytes"),
        ("certificate", 2, _REQ, "bytes"),
        ("policy_certificate", 3, _REQ, "bytes"),
    ],
    "RPCResponse": [
        ("data", 1, _OPT, "bytes"),
        ("policy", 2, _OPT, "string"),
        ("counter", 3, _OPT, "int64"),
    ],
    # Rollback-protected sealing (rollback.proto; taonet requires the counter and
    # stores a table version).
    "RollbackEntry": [
        ("hosted_program_name", 1, _REQ, "string"),
        ("entry_label", 2, _REQ, "string"),
        ("counter", 3, _REQ, "int64"),
    ],
    "RollbackCounterTable": [
        ("entries", 1, _REP, "RollbackEntry"),
        ("version", 2, _OPT, "int64"),
    ],
    "RollbackSealedData": [
        ("entry", 1, _REQ, "RollbackEntry"),
        ("protected_data", 2, _REQ, "bytes"),
    ],
    # The Linux host's admin socket (taonet's own, in the style of the original's protorpc).
    "LinuxAdminRequest": [
        ("path", 1, _OPT, "string"),
        ("args", 2, _REP, "string"),
        ("dir", 3, _OPT, "string"),
        ("env", 4, _REP, "string"),
        ("selector", 5, _OPT, "string"),
        ("fd_count", 6, _OPT, "int32"),
        ("stdio_mask", 7, _OPT, "int32"),
        ("entry", 8, _OPT, "string"),
    ],
    "LinuxAdminProgram": [
        ("name", 1, _REQ, "bytes"),
        ("pid", 2, _REQ, "int32"),
        ("uid", 3, _REQ, "int32"),
        ("gid", 4, _REQ, "int32"),
        ("path", 5, _REQ, "string"),
        ("program_hash", 6, _REQ, "bytes"),
        ("program_id", 7, _REQ, "int64"),
        ("exit_status", 8, _OPT, "int32"),
        # Optional, so hosts and clients from before them still understand each other.
        ("started_ns", 9, _OPT, "int64"),
        ("instance_id", 10, _OPT, "string"),
    ],
    "LinuxAdminResponse": [
        ("programs", 1, _REP, "LinuxAdminProgram"),
        ("name", 2, _OPT, "bytes"),
    ],
}
_ENUMS: Final = {"CryptoVersion": [("CRYPTO_VERSION_1", 1), ("CRYPTO_VERSION_2", 2)]}


#: A schema: message name -> [(field name, number, label, type)]; a type that is not a
#: scalar of :data:`_TYPES` names an enum of the same file or another message of it.
Schema = Mapping[str, Sequence[tuple[str, int, int, str]]]


def build_messages(
    file_name: str,
    package: str,
    schema: Schema,
    *,
    enums: Mapping[str, Sequence[tuple[str, int]]] | None = None,
) -> dict[str, type[Message]]:
    """The message classes of a proto2 file described by ``schema``, built without protoc.

    Each file gets a descriptor pool of its own. Shared by every protocol's schema
    (here, :mod:`taonet.protected`, :mod:`taonet.secrets`).
    """
    enums = enums or {}
    fdp = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto2")
    for enum_name, values in enums.items():
        enum = fdp.enum_type.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for msg_name, fields in schema.items():
        msg = fdp.message_type.add(name=msg_name)
        for field_name, number, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label)
            if type_name in _TYPES:
                field.type = _TYPES[type_name]
            else:
                field.type = _F.TYPE_ENUM if type_name in enums else _F.TYPE_MESSAGE
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in schema
    }


def parse_message(
    cls: type[Message], data: bytes, *, limit: int, what: str, required: bool = True
) -> Any:
    """Decode ``data`` (at most ``limit`` bytes) as ``cls``: CodecError and nothing else.

    With ``required``, every proto2 required field must be present.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise CodecError(f"{what}: {len(data)} bytes is over the {limit}-byte limit")
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"{what}: malformed protobuf: {exc}") from None
    errors: list[str] = []
    if required and not msg.IsInitialized(errors):  # type: ignore[call-arg]
        raise CodecError(f"{what}: missing required field(s): {', '.join(errors)}")
    return msg


MESSAGES: Final = build_messages("taonet/cloudproxy.proto", _PACKAGE, _SCHEMA, enums=_ENUMS)

#: Largest message we are willing to decode at all (the original's frame ceiling).
MAX_MESSAGE_BYTES: Final = 20 * 1024 * 1024


def message_class(name: str) -> Any:
    """Return the message class called ``name`` (e.g. ``"Attestation"``).

    Typed ``Any``: the classes are built at run time, so their fields are not known
    to the type checker. Callers keep them behind typed conversion functions.
    """
    return MESSAGES[name]


def parse(name: str, data: bytes, *, what: str | None = None) -> Any:
    """Decode ``data`` as message ``name``; all required fields must be present.

    Raises CodecError (and nothing else) on any malformed input.
    """
    return parse_message(MESSAGES[name], data, limit=MAX_MESSAGE_BYTES, what=what or name)


def serialize(msg: Message) -> bytes:
    """Serialize ``msg`` deterministically (required fields must be set)."""
    return msg.SerializeToString(deterministic=True)
