"""Base64 as ``taonet auth decode`` reads it: every form Go writes, and nothing else.

The vectors are Go 1.19's ``encoding/base64`` output (``URLEncoding``, ``RawURLEncoding``,
``StdEncoding``, ``RawStdEncoding``) for the binary form of each formula; the refusals
are the garbage that the earlier decoder let through on Python 3.11 (and that 3.13's
``base64`` started refusing for some of them but not others).
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, auth
from taonet.auth import decode_base64
from taonet.auth._base64 import MAX_BASE64_CHARS
from taonet.cli import main

# formula text -> Go's URLEncoding, RawURLEncoding, StdEncoding, RawStdEncoding of its binary.
GO_VECTORS = {
    "key([74657374206b6579]) speaksfor key([746573742074616f206b6579])": (
        "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA",
        "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA",
        "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA",
        "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA",
    ),
    'Pred("a?>", 7)': (
        "BwRQcmVkAgMDYT8-BQc=",
        "BwRQcmVkAgMDYT8-BQc",
        "BwRQcmVkAgMDYT8+BQc=",
        "BwRQcmVkAgMDYT8+BQc",
    ),
    'Q("?", [fbff])': (
        "BwFRAgMBPwQC-_8=",
        "BwFRAgMBPwQC-_8",
        "BwFRAgMBPwQC+/8=",
        "BwFRAgMBPwQC+/8",
    ),
    "key([ff]) says Q(1)": (
        "DgEDa2V5BAH_EQAAAAcBUQEFAQ==",
        "DgEDa2V5BAH_EQAAAAcBUQEFAQ",
        "DgEDa2V5BAH/EQAAAAcBUQEFAQ==",
        "DgEDa2V5BAH/EQAAAAcBUQEFAQ",
    ),
}
GO_FORMS = [
    pytest.param(text, encoded, id=f"{kind}-{n}")
    for n, (text, forms) in enumerate(GO_VECTORS.items())
    for kind, encoded in zip(("url", "rawurl", "std", "rawstd"), forms, strict=True)
]

# What was refused and why; each of these decoded to something before.
GARBAGE = {
    "excess-padding": "DQEDa2V5BAh0ZXN0IGtleREAAQNrZXkEDHRlc3QgdGFvIGtleREA==",
    "one-pad-too-many": "BwRQcmVkAgMDYT8-BQc==",
    "one-pad-too-few": "DgEDa2V5BAH_EQAAAAcBUQEFAQ=",
    "three-pads": "DgEDa2V5BAH_EQAAAAcBUQEFAQ===",
    "padding-inside": "BwRQcmVkAgMDYT8-BQ=c",
    "padded-then-more": "BwRQcmVkAgMDYT8-BQc=BwRQ",
    "mixed-alphabets": "BwFRAgMBPwQC-/8=",
    "mixed-alphabets-raw": "BwFRAgMBPwQC+_8",
    "non-canonical-bits": "BwRQcmVkAgMDYT8-BQd",
    "non-canonical-bits-padded": "DgEDa2V5BAH_EQAAAAcBUQEFAR==",
    "impossible-length": "DgEDa2V5B",
    "space-inside": "BwRQcmVk AgMDYT8-BQc",
    "not-ascii": "BwRQcmVkAgMDYT8-BQ\N{DEVANAGARI DIGIT ONE}",
    "only-padding": "====",
}


def test_the_vectors_cover_every_padding_and_both_alphabets() -> None:
    # Guards the meaning of the table: padding of 0, 1 and 2 characters, and values
    # whose url and std forms differ.
    assert {len(forms[0]) - len(forms[1]) for forms in GO_VECTORS.values()} == {0, 1, 2}
    assert any("-" in forms[0] and "+" in forms[2] for forms in GO_VECTORS.values())
    assert any("_" in forms[0] and "/" in forms[2] for forms in GO_VECTORS.values())


@pytest.mark.parametrize(("text", "encoded"), GO_FORMS)
def test_every_form_go_writes_decodes(text: str, encoded: str) -> None:
    form = auth.parse_form(text)
    assert decode_base64(encoded) == auth.encode(form)
    assert decode_base64(f"  {encoded}\n") == auth.encode(form)


@pytest.mark.parametrize(("text", "encoded"), GO_FORMS)
def test_taonet_auth_decode_reads_every_form_go_writes(
    capsys: pytest.CaptureFixture[str], text: str, encoded: str
) -> None:
    code = main(["auth", "decode", encoded])
    out, err = capsys.readouterr()
    assert (code, out, err) == (0, text + "\n", "")


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_a_codec_error(garbage: str) -> None:
    with pytest.raises(CodecError, match="base64"):
        decode_base64(garbage)


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_taonet_auth_decode_refuses_garbage_in_one_line(
    capsys: pytest.CaptureFixture[str], garbage: str
) -> None:
    code = main(["auth", "decode", garbage])
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert err.startswith("taonet: error: ")
    assert "base64" in err
    assert err.count("\n") == 1


def test_text_past_the_bound_is_refused_before_decoding() -> None:
    with pytest.raises(CodecError, match="longer than"):
        decode_base64("A" * (MAX_BASE64_CHARS + 4))


@given(st.binary(max_size=64))
def test_round_trip_in_all_four_forms(data: bytes) -> None:
    url = base64.urlsafe_b64encode(data).decode()
    std = base64.b64encode(data).decode()
    for encoded in (url, url.rstrip("="), std, std.rstrip("=")):
        assert decode_base64(encoded) == data


@given(st.text(alphabet="AZaz09-_+/= ", max_size=24))
def test_whatever_is_accepted_has_one_spelling(text: str) -> None:
    # Anything that decodes is exactly what an encoder writes for those bytes (up to
    # padding and the surrounding whitespace): no second spelling of a value gets in.
    try:
        data = decode_base64(text)
    except CodecError:
        return
    body = text.strip().rstrip("=")
    assert body in {
        base64.urlsafe_b64encode(data).decode().rstrip("="),
        base64.b64encode(data).decode().rstrip("="),
    }
