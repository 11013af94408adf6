"""Text syntax: parse/print tables from the Go tests, precedence, errors, limits, round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import CodecError, auth
from taonet.auth import (
    And,
    Bytes,
    Const,
    Exists,
    Forall,
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
    TermVar,
)

from .strategies import forms, prinexts, prins, subprins, terms

K0 = "key([4b657930])"
K1 = "key([4b657931])"
K3 = "tpm({BgWWala-pkV7l_Yg043wLQ==})"
P1, P2, P3, P4 = (Pred("P", (Int(i),)) for i in (1, 2, 3, 4))
KEY0 = Prin("key", Bytes(b"Key0"))
KEY1 = Prin("key", Bytes(b"Key1"))

# Terms and formulas that print exactly as written (from the Go auth_test.go).
CANONICAL_TERMS = [
    "bogus([face])",
    "42",
    "0",
    "-1",
    '"Hello World"',
    '"Includes \\n newlines and \\t tabs"',
    "[010203abcdef]",
    "[]",
    K0,
    K1,
    K0 + ".Extension(1)",
    K0 + '.Extension(1).A().B(1).C(1, "Hello").D(' + K1 + ".E(" + K1 + ".G().H()))",
    "ext.Extension(1)",
    'ext.Extension(1).A().B(1).C(1, "Hello").D(' + K1 + ".E(" + K1 + ".G().H()))",
    'ext.PCRs("17, 18", "0a877e9010800b0c0d98, b7c5820097262978e8a7").Hash([71])',
    'tpm2([00ff]).PCRs("17,18", "ab,cd")',
    "X",
    "key(X).Program(Y)",
]

CANONICAL_FORMS = [
    "true",
    "false",
    K0 + " says true",
    K0 + " from 1 says true",
    K0 + " until 2 says true",
    K0 + " from 1 until 2 says true",
    K0 + " from -5 until -2 says true",
    K0 + " speaksfor " + K1,
    K0 + ".Sub(1).Sub(2) speaksfor " + K1 + ".Sub(1).Sub(2)",
    "P(1)",
    "Foo()",
    "P(1) and P(2)",
    "P(1) and P(2) and P(3) and P(4)",
    "P(1) or P(2)",
    "P(1) or P(2) or P(3) or P(4)",
    "P(1) implies P(2)",
    "P(1) implies P(2) implies P(3) or P(4)",
    "not P(1)",
    "not not P(1)",
    "not not not not P(1)",
    "P(1) and " + K0 + " speaksfor " + K1,
    "P(1) and P(2) and P(3) or P(4)",
    "P(1) and P(2) and (P(3) or P(4))",
    "P(1) and (P(2) or P(3)) and P(4)",
    "(P(1) or P(2)) and P(3) and P(4)",
    "P(1) and P(2) and P(3) implies P(4)",
    "P(1) and P(2) and (P(3) implies P(4))",
    "P(1) and (P(2) implies P(3)) and P(4)",
    "(P(1) implies P(2)) and P(3) and P(4)",
    "P(1) or P(2) or P(3) implies P(4)",
    "P(1) or P(2) or (P(3) implies P(4))",
    "P(1) or (P(2) implies P(3)) or P(4)",
    "(P(1) implies P(2)) or P(3) or P(4)",
    "P(1) or " + K0 + " says P(2) or P(3)",
    "forall X: P(X)",
    "forall X: forall Y: P(X, Y)",
    "exists X: P(X)",
    "exists X: exists Y: P(X, Y)",
    "forall X: P(X) implies exists Y: Q(X, Y) and R(X)",
    "P(1) and forall X: Q(X)",
    "(forall X: Q(X)) and P(1)",
    "forall X: forall Y: X says P(1) implies Y says P(1)",
    "(" + K0 + " says P(1)) and P(2)",
    "(" + K0 + " speaksfor " + K1 + ") and P(2)",
    "not (X says P(1)) and P(2)",
    "not X says P(1) and P(2)",
    "P(1) and (X says P(2)) or P(3)",
    '"a" says 5 speaksfor [00]',
    "ext.A() says true",
    "(X says P(1)) implies P(2)",
    "P(1) implies (P(2) implies P(3)) implies P(4)",
    "P(1) and (P(2) and P(3))",
    "P(1) or (P(2) or P(3)) or P(4)",
    "not (P(1) and P(2))",
    "not (P(1) implies P(2))",
    "not forall X: P(X)",
    "not (forall X: P(X)) or P(1)",
]


@pytest.mark.parametrize("text", CANONICAL_TERMS)
def test_term_prints_as_written(text: str) -> None:
    t = auth.parse_term(text)
    assert str(t) == text
    assert auth.parse_term(str(t)) == t
    assert auth.parse_term("((" + text + "))") == t


@pytest.mark.parametrize("text", CANONICAL_FORMS)
def test_form_prints_as_written(text: str) -> None:
    f = auth.parse_form(text)
    assert str(f) == text
    assert auth.parse_form("(" + text + ")") == f
    assert auth.decode_form(auth.encode(f)) == f


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("P(1) and P(2) or P(3)", Or((And((P1, P2)), P3))),
        ("P(1) or P(2) and P(3)", Or((P1, And((P2, P3))))),
        ("not P(1) and P(2)", And((Not(P1), P2))),
        ("P(1) implies P(2) implies P(3)", Implies(P1, Implies(P2, P3))),
        ("X says P(1) and P(2)", Says(TermVar("X"), And((P1, P2)))),
        ("X says P(1) implies P(2)", Says(TermVar("X"), Implies(P1, P2))),
        ("P(1) and X says P(2) or P(3)", And((P1, Says(TermVar("X"), Or((P2, P3)))))),
        ("(X says P(1)) and P(2)", And((Says(TermVar("X"), P1), P2))),
        ("forall X: P(1) or P(2)", Forall("X", Or((P1, P2)))),
        ("P(1) or forall X: P(2) or P(3)", Or((P1, Forall("X", Or((P2, P3)))))),
        ("not X says P(1) or P(2)", Not(Says(TermVar("X"), Or((P1, P2))))),
        ("X speaksfor Y and P(1)", And((Speaksfor(TermVar("X"), TermVar("Y")), P1))),
        ("X speaksfor (((Y)))", Speaksfor(TermVar("X"), TermVar("Y"))),
        ("X until 2 from 1 says true", Says(TermVar("X"), Const(True), time=1, expiration=2)),
        ("X from (3) says false", Says(TermVar("X"), Const(False), time=3)),
        ("exists Y: true", Exists("Y", Const(True))),
        # Like Go, a parenthesized And on the left of "and" is flattened.
        ("(P(1) and P(2)) and P(3)", And((P1, P2, P3))),
        ("(P(1) or P(2)) or P(3)", Or((P1, P2, P3))),
        ("P(1) and (P(2) and P(3))", And((P1, And((P2, P3))))),
        ("(((P(((1)), (tpm({S2V5Mw==}))))))", Pred("P", (Int(1), Prin("tpm", Bytes(b"Key3"))))),
        ("  P(1)\n\tand\u00a0P(2)  ", And((P1, P2))),
        (
            'P("\\x41\\101\\u0041\\U00000041\\a\\b\\f\\n\\r\\t\\v\\\\\\"")',
            Pred("P", (Str('AAAA\a\b\f\n\r\t\v\\"'),)),
        ),
        ('P("\\xc3\\xa9")', Pred("P", (Str("é"),))),
        ("P([01 02 03abcd ef])", Pred("P", (Bytes(bytes.fromhex("010203abcdef")),))),
        ("P([AbCd])", Pred("P", (Bytes(b"\xab\xcd"),))),
        ("P({S2V5Mw==}, {})", Pred("P", (Bytes(b"Key3"), Bytes(b"")))),
        ("P({S2V5\nMw==})", Pred("P", (Bytes(b"Key3"),))),
        ("P(007, -0)", Pred("P", (Int(7), Int(0)))),
        (
            "P(-9223372036854775808, 9223372036854775807)",
            Pred("P", (Int(-(1 << 63)), Int((1 << 63) - 1))),
        ),
    ],
)
def test_parse_table(text: str, value: auth.Form) -> None:
    assert auth.parse_form(text) == value


def test_whitespace_allowed_after_extension_dot() -> None:
    # Go skips whitespace between '.' and the extension name.
    assert auth.parse_term("key([00]). A()") == Prin("key", Bytes(b"\0"), (PrinExt("A"),))


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("", 0),
        ("P(1", 3),
        ("P(1))", 4),
        ("P (1)", 2),  # a predicate name must touch its '('
        ("key ([00]) says true", 4),  # so must a principal type
        ("key([00]) .A() says true", 10),  # and the '.' of an extension
        ("P(1) and", 8),
        ("P(1) or or P(2)", 8),
        ("not", 3),
        ("forall x: P(x)", 7),
        ("forall X P(X)", 9),
        ("X says", 6),
        ("X from says true", 7),
        ("X from 1 from 2 says true", 9),
        ("X until 1 until 2 says true", 10),
        ("X", 1),
        ("X P(1)", 2),
        ("(key([00])) says true", 10),
        ("says true", 0),
        ("ext says true", 4),
        ("ext([704569])", 3),
        ("P(Q(1))", 3),
        ("P(1) P(2)", 5),
        ('P("abc)', 2),
        ('P("a\nb")', 4),
        ('P("\\q")', 3),
        ('P("\\\'")', 3),
        ('P("\\xg0")', 3),
        ('P("\\400")', 3),
        ('P("\\ud800")', 3),
        ('P("\\U00110000")', 3),
        ('P("\\xff")', 2),  # escapes must form valid UTF-8
        ('P("\ud800")', 3),
        ("P([0])", 3),
        ("P([0 1])", 3),
        ("P([0g])", 4),
        ("P([00)", 5),
        ("P({S2V5Mw})", 2),
        ("P({BgWWala+pkV7l/Yg043wLQ==})", 10),
        ("P({QQ==QQ==})", 2),
        ("P({QQ==)", 7),
        ("P(-)", 2),
        ("P(- 1)", 2),
        ("P(9223372036854775808)", 2),
        ("P(-9223372036854775809)", 2),
        ("P(1) # comment", 5),
        ("P(1) and X", 10),
        ("key(", 4),
        ("key()", 4),
        ("tpm()", 4),
        ("P(1) implies", 12),
    ],
)
def test_parse_errors_say_where(text: str, offset: int) -> None:
    with pytest.raises(CodecError, match=rf"^at offset {offset}: "):
        auth.parse_form(text)


@pytest.mark.parametrize(
    "text", ["ext", "key()", "tpm()", "ext([704569])", "p", "1 2", "(1", "P()"]
)
def test_bad_terms(text: str) -> None:
    with pytest.raises(CodecError):
        auth.parse_term(text)


def test_parse_prin_and_subprin() -> None:
    p = auth.parse_prin('key([01]).A(1).B("x")')
    assert p == Prin("key", Bytes(b"\x01"), (PrinExt("A", (Int(1),)), PrinExt("B", (Str("x"),))))
    with pytest.raises(CodecError, match="expected a principal"):
        auth.parse_prin("ext.A()")
    with pytest.raises(CodecError):
        auth.parse_prin("42")
    assert auth.parse_subprin("") == SubPrin()
    assert auth.parse_subprin(".A().B(1)") == SubPrin((PrinExt("A"), PrinExt("B", (Int(1),))))
    with pytest.raises(CodecError):
        auth.parse_subprin("A()")
    assert auth.parse_prinext("Program([ab], 2)") == PrinExt("Program", (Bytes(b"\xab"), Int(2)))
    with pytest.raises(CodecError):
        auth.parse_prinext(".Program()")


def test_printing_of_element_kinds() -> None:
    assert str(SubPrin()) == ""
    assert str(SubPrin((PrinExt("A"), PrinExt("B", (Int(-3),))))) == ".A().B(-3)"
    assert str(PrinExt("Program", (Bytes(b"\x01\xff"),))) == "Program([01ff])"
    assert str(PrinTail((PrinExt("A"),))) == "ext.A()"
    assert str(Str('q"\\')) == '"q\\"\\\\"'
    assert str(TermVar("Xy_1")) == "Xy_1"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("\x00\x1f\x7f", '"\\x00\\x1f\\x7f"'),
        ("\a\b\f\n\r\t\v", '"\\a\\b\\f\\n\\r\\t\\v"'),
        ("\u0085\u00a0\u2028\ufeff", '"\\u0085\\u00a0\\u2028\\ufeff"'),
        ("\U000e0001", '"\\U000e0001"'),
        ("é中😀 ", '"é中😀 "'),
    ],
)
def test_strings_quote_like_go(value: str, text: str) -> None:
    assert str(Str(value)) == text
    assert auth.parse_term(text) == Str(value)


def test_degenerate_junctions_print_like_go() -> None:
    assert str(And(())) == "true"
    assert str(Or(())) == "false"
    assert str(And((P1,))) == "P(1)"
    assert str(Or((Says(TermVar("X"), P1),))) == "X says P(1)"
    assert str(And((P1, Or((Says(TermVar("X"), P2),)), P3))) == "P(1) and (X says P(2)) and P(3)"


def test_trailing_says_is_parenthesized_when_followed() -> None:
    # Go's printer gets this one wrong ("P(1) and X says P(2) or P(3)" reparses differently).
    f = Or((And((P1, Says(TermVar("X"), P2))), P3))
    assert str(f) == "P(1) and (X says P(2)) or P(3)"
    assert auth.parse_form(str(f)) == f


def test_deep_text_nesting_is_a_codec_error() -> None:
    for text in (
        "not " * 10_000 + "P(1)",
        "(" * 10_000 + "P(1)" + ")" * 10_000,
        "X says " * 10_000 + "true",
        "P(1) implies " * 10_000 + "true",
        "forall X: " * 10_000 + "true",
        "P(" + "key(" * 10_000 + "[00]" + ")" * 10_001,
        "P(" + "ext.A(" * 10_000 + "1" + ")" * 10_001,
        "P(1) and " + "not " * 10_000 + "P(1)",
    ):
        with pytest.raises(CodecError, match="nesting deeper than"):
            auth.parse_form(text)


def test_moderate_nesting_parses() -> None:
    f: auth.Form = P1
    for _ in range(auth.MAX_DEPTH // 8):
        f = Not(And((P1, Says(TermVar("X"), f))))
    assert auth.parse_form(str(f)) == f
    assert auth.parse_form("not " * (auth.MAX_DEPTH - 4) + "P(1)") is not None
    t: auth.Term = Bytes(b"")
    for i in range(auth.MAX_DEPTH // 4):
        t = Prin("key", t) if i % 2 else Prin("tpm", Bytes(b"k"), (PrinExt("A", (t,)),))
    assert auth.parse_term(str(t)) == t


def test_text_size_is_bounded() -> None:
    with pytest.raises(CodecError, match="characters"):
        auth.parse_form("P(" + "1, " * (auth.MAX_TEXT_SIZE // 3) + "1)")
    with pytest.raises(CodecError):
        auth.parse_form(b"P(1)")  # type: ignore[arg-type]


@given(terms())
def test_term_round_trip(t: auth.Term) -> None:
    text = str(t)
    assert auth.parse_term(text) == t
    assert str(auth.parse_term(text)) == text


@given(forms())
def test_form_round_trip(f: auth.Form) -> None:
    text = str(f)
    parsed = auth.parse_form(text)
    assert parsed == f
    assert str(parsed) == text


@given(prins())
def test_prin_round_trip(p: auth.Prin) -> None:
    assert auth.parse_prin(str(p)) == p


@given(subprins(), prinexts())
def test_subprin_and_prinext_round_trip(s: auth.SubPrin, e: auth.PrinExt) -> None:
    assert auth.parse_subprin(str(s)) == s
    assert auth.parse_prinext(str(e)) == e


_ALPHABET = st.sampled_from(
    [
        *'()[]{},.:"\\ -0123456789abcdefxyzAPXkeytpm_=\n\t\u00e9',
        "key(",
        "says ",
        " and ",
        " or ",
        "not ",
        "forall ",
        "exists ",
        "implies ",
        "ext.",
        "from ",
        "until ",
        "speaksfor ",
        "true",
        "false",
        "[00]",
        "P(",
        "\\x",
        "\\u",
        "{QQ==}",
    ]
)


@given(st.one_of(st.text(), st.lists(_ALPHABET, max_size=40).map("".join)))
def test_random_text_raises_only_codec_error(text: str) -> None:
    for parse in (
        auth.parse_form,
        auth.parse_term,
        auth.parse_prin,
        auth.parse_subprin,
        auth.parse_prinext,
    ):
        try:
            value = parse(text)
        except CodecError:
            continue
        # Whatever parses prints to text that parses back to the same value (modulo the
        # documented And/Or flattening, which only arises from parenthesized input).
        again = parse(str(value))
        assert str(again) == str(value)


@given(forms())
def test_mutated_form_text_raises_only_codec_error(f: auth.Form) -> None:
    text = str(f)
    for i in range(0, len(text), max(1, len(text) // 8)):
        for mutated in (text[:i], text[:i] + text[i + 1 :], text[:i] + "(" + text[i:]):
            with contextlib.suppress(CodecError):
                auth.parse_form(mutated)
