"""The CloudProxy authorization logic: terms, formulas, principal names and their codecs.

Pure and synchronous: no I/O, no trio. Every value is a frozen, hashable attrs
class; ``str(x)`` is its canonical text and :func:`encode` its binary form,
both compatible with the original Go ``tao/auth`` package.

Terms
    * principal ``type(key_hash).Ext(...)...`` (:class:`Prin`), e.g.
      ``key([9f86...]).Program([a1b2...])``; the type is a lower-case word
      (key, tpm, tpm2, ...); ``key_hash`` is the SHA-256 of the PKIX DER public key
      (:func:`key_principal`, :func:`principal_for_key`);
    * principal tail ``ext.A(...).B(...)`` (:class:`PrinTail`);
    * string ``"..."`` (Go escapes), bytes ``[hex]`` or ``{base64url}``, int64,
      and variables ``X`` (identifiers start with an upper-case letter).

Formulas, loosest binding first
    * ``forall X: F``, ``exists X: F``, ``A implies B`` (right associative),
      ``P [from T] [until T] says F`` and ``A speaksfor B``;
    * ``F or G or ...``;
    * ``F and G and ...``;
    * ``not F``, ``true``, ``false``, predicates ``Name(T, ...)``, ``( F )``.

``says``, ``forall`` and ``exists`` reach as far right as they can:
``P says A and B`` is ``P says (A and B)``.

Sub-principals: ``child.is_sub_principal_of(parent)`` holds when both have the
same type and key hash and the parent's extensions are a prefix of the child's
(a principal is its own sub-principal).

Binary: tags 1-18 as in Go's ``binary.go``; see :mod:`taonet.auth._binary`.
Parsing text or decoding bytes from outside raises :class:`taonet.CodecError`
and nothing else, with sizes (``MAX_TEXT_SIZE``) and nesting (``MAX_DEPTH``)
bounded. :func:`decode_base64` reads the base64 forms of the binary (url or
standard alphabet, padded or not) and refuses anything else.
"""

from __future__ import annotations

from taonet.auth._ast import (
    RESERVED_WORDS,
    And,
    Bytes,
    Const,
    Element,
    Exists,
    Forall,
    Form,
    Implies,
    Int,
    Not,
    Or,
    Pred,
    Prin,
    PrinExt,
    PrinTail,
    Says,
    Speaksfor,
    Str,
    SubPrin,
    Term,
    TermVar,
    is_sub_principal_or_identical,
    key_principal,
    principal_for_key,
)
from taonet.auth._base64 import decode_base64
from taonet.auth._binary import (
    decode_form,
    decode_prin,
    decode_prinext,
    decode_subprin,
    decode_term,
    encode,
)
from taonet.auth._lexer import MAX_TEXT_SIZE
from taonet.auth._text import (
    MAX_DEPTH,
    parse_form,
    parse_prin,
    parse_prinext,
    parse_subprin,
    parse_term,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_TEXT_SIZE",
    "RESERVED_WORDS",
    "And",
    "Bytes",
    "Const",
    "Element",
    "Exists",
    "Forall",
    "Form",
    "Implies",
    "Int",
    "Not",
    "Or",
    "Pred",
    "Prin",
    "PrinExt",
    "PrinTail",
    "Says",
    "Speaksfor",
    "Str",
    "SubPrin",
    "Term",
    "TermVar",
    "decode_base64",
    "decode_form",
    "decode_prin",
    "decode_prinext",
    "decode_subprin",
    "decode_term",
    "encode",
    "is_sub_principal_or_identical",
    "key_principal",
    "parse_form",
    "parse_prin",
    "parse_prinext",
    "parse_subprin",
    "parse_term",
    "principal_for_key",
]
