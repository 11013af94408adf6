"""Why a disclosure directive was refused: DirectiveError and its DirectiveReason."""

from __future__ import annotations

import enum

from taonet._errors import AuthorizationError

__all__ = ["DirectiveError", "DirectiveReason"]


class DirectiveReason(enum.Enum):
    """What was wrong with a directive (``DirectiveError.reason``)."""

    #: Not a directive_message, or not one taonet reads: over the size bound, not
    #: protobuf, fields missing or written twice, a statement that is not
    #: ``Speaker says Op(Delegate, ObjectId)``, an object id that does not decode.
    MALFORMED = "malformed"
    #: A ``type`` other than SECRET_DISCLOSURE (or none).
    BAD_TYPE = "bad_type"
    #: The signature does not verify under the signer's key: altered statement,
    #: other key or context, bytes after the ECDSA value, a non-canonical SignedData.
    BAD_SIGNATURE = "bad_signature"
    #: The directive (or the program certificate that signed it) is past its end.
    EXPIRED = "expired"
    #: The directive (or its program certificate) is not valid yet.
    NOT_YET_VALID = "not_yet_valid"
    #: The directive has no end (the original's: no time or expiration) and the
    #: caller did not accept such directives (``allow_unbounded``), or it ends
    #: further from now than the caller's ``max_lifetime_ns``.
    UNBOUNDED = "unbounded"
    #: The signer is not the policy key and carries no usable program certificate,
    #: or its certificate certifies another key than the signer's.
    UNKNOWN_SIGNER = "unknown_signer"
    #: The program certificate is not signed by this domain's policy key.
    WRONG_DOMAIN = "wrong_domain"
    #: The statement's speaker is not the principal its signer stands for (the
    #: policy key itself, or the program its certificate names).
    WRONG_SPEAKER = "wrong_speaker"
    #: The program certificate's serial is revoked.
    REVOKED = "revoked"
    #: The operation is not one of Read, Write, Create, Delete, Own.
    BAD_OP = "bad_op"


class DirectiveError(AuthorizationError):
    """A directive was refused; ``.reason`` (a :class:`DirectiveReason`) says why."""

    def __init__(self, message: str, *, reason: DirectiveReason) -> None:
        super().__init__(message)
        self.reason = reason
