"""``taonet auth parse|encode|decode``: the auth language from the shell.

With ``-o json`` each prints ``{"text": ..., "binary_hex": ..., "binary_base64url": ...}``:
the formula's canonical text and its binary encoding (hex, and unpadded base64url).
"""

from __future__ import annotations

import argparse
import base64
from typing import Any

from taonet import auth
from taonet.cli._output import add_output_option, emit


def register(sub: Any) -> None:
    p = sub.add_parser("auth", help="parse, encode and decode auth formulas")
    cmds = p.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    parse = cmds.add_parser("parse", help="print a formula's canonical text")
    parse.add_argument("form", metavar="FORM")
    add_output_option(parse)
    parse.set_defaults(func=_parse)
    enc = cmds.add_parser("encode", help="print base64url of a formula's binary encoding")
    enc.add_argument("form", metavar="FORM")
    add_output_option(enc)
    enc.set_defaults(func=_encode)
    dec = cmds.add_parser("decode", help="print the text of a base64url binary formula")
    dec.add_argument("data", metavar="B64URL")
    add_output_option(dec)
    dec.set_defaults(func=_decode)


def _document(form: auth.Form) -> dict[str, str]:
    data = auth.encode(form)
    return {
        "text": str(form),
        "binary_hex": data.hex(),
        "binary_base64url": base64.urlsafe_b64encode(data).decode().rstrip("="),
    }


def _parse(args: argparse.Namespace) -> int:
    form = auth.parse_form(args.form)
    emit(args, _document(form), lambda: print(form))
    return 0


def _encode(args: argparse.Namespace) -> int:
    document = _document(auth.parse_form(args.form))
    emit(args, document, lambda: print(document["binary_base64url"]))
    return 0


def b64url_decode(text: str) -> bytes:
    """Decode base64url or standard base64, padded or not; CodecError for anything else
    (see :func:`taonet.auth.decode_base64`)."""
    return auth.decode_base64(text)


def _decode(args: argparse.Namespace) -> int:
    form = auth.decode_form(b64url_decode(args.data))
    emit(args, _document(form), lambda: print(form))
    return 0
