"""Text syntax of the authorization logic: a recursive-descent parser and the printer.

The grammar and the printed form follow the CloudProxy Go implementation.
Precedence, loosest first::

    F ::= forall V: F | exists V: F | O implies F | O
    O ::= A or A or ... | A
    A ::= H and H and ... | H
    H ::= not H | ( F ) | true | false | Name(T, ...) | T speaksfor T
        | T [from N] [until N] says F

``says``, ``forall`` and ``exists`` extend as far to the right as they can.
A principal type or predicate name must be followed directly by ``(``, and the
``.`` of an extension must follow its principal directly (no whitespace).

The printer uses single spaces and the fewest parentheses that parse back to
the same value. Two value shapes have no text of their own and print like
their Go counterparts: an And/Or with fewer than two members (``true``,
``false`` or the lone member), and an And (Or) whose first member is itself an
And (Or), which the parser, like Go's, flattens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

from taonet._errors import CodecError
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
)
from taonet.auth._lexer import Kind, Token, go_quote, lex

__all__ = [
    "MAX_DEPTH",
    "format_element",
    "parse_form",
    "parse_prin",
    "parse_prinext",
    "parse_subprin",
    "parse_term",
]

#: Deepest nesting (of formulas, terms and parentheses) the parsers and decoders accept.
#: Real policies nest a handful of levels. The limit is kept well under Python's
#: recursion limit so that code working on a decoded value (comparing, hashing,
#: printing, re-encoding it) has ample stack left, even deep inside a server.
MAX_DEPTH = 64

_T = TypeVar("_T")

# ---------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = lex(text)
        self.i = 0
        self.prev_end = 0
        self.depth = 0

    # -- token helpers

    @property
    def cur(self) -> Token:
        return self.toks[self.i]

    def at_word(self, word: str) -> bool:
        t = self.toks[self.i]
        return t.kind is Kind.WORD and t.text == word

    def advance(self) -> Token:
        t = self.toks[self.i]
        if t.kind is not Kind.EOF:
            self.i += 1
        self.prev_end = t.end
        return t

    def fail(self, expected: str, at: Token | None = None) -> NoReturn:
        t = self.cur if at is None else at
        raise CodecError(f"at offset {t.start}: expected {expected}, found {t.describe()}")

    def expect(self, kind: Kind) -> Token:
        if self.cur.kind is not kind:
            self.fail(kind.value)
        return self.advance()

    def directly_followed_by(self, kind: Kind) -> bool:
        """The current token is ``kind`` and touches the previous token."""
        t = self.cur
        return t.kind is kind and t.start == self.prev_end

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CodecError(f"at offset {self.cur.start}: nesting deeper than {MAX_DEPTH} levels")

    def expect_eof(self) -> None:
        if self.cur.kind is not Kind.EOF:
            self.fail("end of input")

    # -- terms

    def parse_term(self) -> Term:
        """A term, optionally inside parentheses."""
        n = 0
        while self.cur.kind is Kind.LP:
            self.advance()
            n += 1
        t = self.expect_term()
        for _ in range(n):
            self.expect(Kind.RP)
        return t

    def expect_term(self) -> Term:
        self.enter()
        t = self.cur
        result: Term
        if t.kind is Kind.STR:
            assert isinstance(t.value, str)
            result = Str(t.value)
            self.advance()
        elif t.kind is Kind.BYTES:
            assert isinstance(t.value, bytes)
            result = Bytes(t.value)
            self.advance()
        elif t.kind is Kind.INT:
            assert isinstance(t.value, int)
            result = Int(t.value)
            self.advance()
        elif t.kind is Kind.IDENT:
            result = TermVar(t.text)
            self.advance()
        elif t.kind is Kind.WORD and t.text == "ext":
            self.advance()
            exts = self.ext_chain()
            if not exts:
                self.fail("an extension directly after 'ext' (like ext.Name())")
            result = PrinTail(SubPrin(exts))
        elif t.kind is Kind.WORD and t.text not in RESERVED_WORDS:
            result = self.expect_prin()
        else:
            self.fail("a term")
        self.depth -= 1
        return result

    def expect_prin(self) -> Prin:
        t = self.advance()  # the principal type word
        if not self.directly_followed_by(Kind.LP):
            self.fail(f"'(' directly after principal type {t.text!r}")
        self.advance()
        key = self.expect_term()
        self.expect(Kind.RP)
        return Prin(t.text, key, SubPrin(self.ext_chain()))

    def ext_chain(self) -> tuple[PrinExt, ...]:
        """Extensions ``.A(...).B(...)``, each dot touching what precedes it."""
        exts: list[PrinExt] = []
        while self.directly_followed_by(Kind.DOT):
            self.advance()
            exts.append(self.expect_name_and_args(PrinExt))
        return tuple(exts)

    def expect_name_and_args(self, make: Callable[[str, tuple[Term, ...]], _T]) -> _T:
        if self.cur.kind is not Kind.IDENT:
            self.fail("an identifier")
        name = self.advance().text
        if not self.directly_followed_by(Kind.LP):
            self.fail(f"'(' directly after {name!r}")
        return make(name, self.arg_list())

    def arg_list(self) -> tuple[Term, ...]:
        """``(T, ...)``; the current token is the opening parenthesis."""
        self.enter()
        self.advance()
        args: list[Term] = []
        if self.cur.kind is Kind.RP:
            self.advance()
        else:
            while True:
                args.append(self.parse_term())
                if self.cur.kind is not Kind.COMMA:
                    break
                self.advance()
            self.expect(Kind.RP)
        self.depth -= 1
        return tuple(args)

    def parse_int(self) -> int:
        n = 0
        while self.cur.kind is Kind.LP:
            self.advance()
            n += 1
        t = self.expect(Kind.INT)
        for _ in range(n):
            self.expect(Kind.RP)
        assert isinstance(t.value, int)
        return t.value

    # -- formulas

    def parse_form(self) -> Form:
        """F ::= quantifier | O [implies F]."""
        self.enter()
        f: Form
        if self.at_word("forall") or self.at_word("exists"):
            f = self.expect_quantifier()
        else:
            f = self.parse_or()
            if self.at_word("implies"):
                self.advance()
                f = Implies(f, self.parse_form())
        self.depth -= 1
        return f

    def parse_or(self) -> Form:
        f = self.parse_and()
        if not self.at_word("or"):
            return f
        # Like Go, a parenthesized Or on the left is flattened: "(a or b) or c".
        parts: list[Form] = list(f.disjuncts) if isinstance(f, Or) else [f]
        while self.at_word("or"):
            self.advance()
            parts.append(self.parse_and())
        return Or(tuple(parts))

    def parse_and(self) -> Form:
        f = self.parse_high()
        if not self.at_word("and"):
            return f
        parts: list[Form] = list(f.conjuncts) if isinstance(f, And) else [f]
        while self.at_word("and"):
            self.advance()
            parts.append(self.parse_high())
        return And(tuple(parts))

    def parse_high(self) -> Form:
        self.enter()
        t = self.cur
        f: Form
        if t.kind is Kind.LP:
            self.advance()
            f = self.parse_form()
            self.expect(Kind.RP)
        elif t.kind is Kind.WORD and t.text in ("true", "false"):
            self.advance()
            f = Const(t.text == "true")
        elif t.kind is Kind.WORD and t.text == "not":
            self.advance()
            f = Not(self.parse_high())
        elif t.kind is Kind.WORD and t.text in ("forall", "exists"):
            f = self.expect_quantifier()
        elif t.kind in (Kind.STR, Kind.BYTES, Kind.INT, Kind.IDENT) or (
            t.kind is Kind.WORD and (t.text == "ext" or t.text not in RESERVED_WORDS)
        ):
            f = self.expect_term_operation()
        else:
            self.fail("a formula")
        self.depth -= 1
        return f

    def expect_quantifier(self) -> Form:
        word = self.advance().text
        var = self.expect(Kind.IDENT).text
        self.expect(Kind.COLON)
        body = self.parse_form()
        return Forall(var, body) if word == "forall" else Exists(var, body)

    def expect_term_operation(self) -> Form:
        """``Name(T, ...)``, ``T speaksfor T`` or ``T [from N] [until N] says F``."""
        t = self.cur
        subject: Term
        if t.kind is Kind.IDENT:
            self.advance()
            if self.directly_followed_by(Kind.LP):
                return Pred(t.text, self.arg_list())
            subject = TermVar(t.text)
        else:
            subject = self.expect_term()
        if self.at_word("speaksfor"):
            self.advance()
            return Speaksfor(subject, self.parse_term())
        if not (self.at_word("from") or self.at_word("until") or self.at_word("says")):
            self.fail("'speaksfor', 'from', 'until' or 'says'")
        time = self.optional_time("from")
        expiration = self.optional_time("until")
        if time is None:
            time = self.optional_time("from")
        if not self.at_word("says"):
            self.fail("'says'")
        self.advance()
        message = self.parse_form()
        return Says(subject, message, time=time, expiration=expiration)

    def optional_time(self, word: str) -> int | None:
        if not self.at_word(word):
            return None
        self.advance()
        return self.parse_int()


def _run(text: str, parse: Callable[[_Parser], _T]) -> _T:
    p = _Parser(text)
    try:
        result = parse(p)
    except RecursionError:  # pragma: no cover - MAX_DEPTH is meant to stop this first
        raise CodecError(f"auth text nests too deeply (limit {MAX_DEPTH})") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, CodecError):
            raise
        raise CodecError(f"invalid auth text: {e}") from None
    p.expect_eof()
    return result


def parse_form(text: str) -> Form:
    """Parse a formula; raises CodecError with the offset of the problem."""
    return _run(text, _Parser.parse_form)


def parse_term(text: str) -> Term:
    """Parse a term (outer parentheses allowed)."""
    return _run(text, _Parser.parse_term)


def parse_prin(text: str) -> Prin:
    """Parse a principal such as ``key([...]).Program([...])``."""
    t = parse_term(text)
    if not isinstance(t, Prin):
        raise CodecError(f"at offset 0: expected a principal, found {type(t).__name__}")
    return t


def _subprin(p: _Parser) -> SubPrin:
    exts: list[PrinExt] = []
    while p.cur.kind is Kind.DOT:
        p.advance()
        exts.append(p.expect_name_and_args(PrinExt))
    return SubPrin(tuple(exts))


def parse_subprin(text: str) -> SubPrin:
    """Parse extensions ``.A(...).B(...)``; the empty text is the empty SubPrin."""
    return _run(text, _subprin)


def parse_prinext(text: str) -> PrinExt:
    """Parse one extension ``Name(T, ...)``."""
    return _run(text, lambda p: p.expect_name_and_args(PrinExt))


# ---------------------------------------------------------------- printer

_LOW, _OR, _AND, _HIGH = range(4)


def _precedence(f: Form, followed: bool) -> int:
    """How tightly ``f`` binds; ``followed`` means more text follows it at this level."""
    if isinstance(f, Says | Speaksfor | Forall | Exists):
        return _LOW if followed else _HIGH
    if isinstance(f, Implies):
        return _LOW
    if isinstance(f, And | Or):
        members = f.conjuncts if isinstance(f, And) else f.disjuncts
        if not members:
            return _HIGH
        if len(members) == 1:
            return _precedence(members[0], followed)
        return _AND if isinstance(f, And) else _OR
    return _HIGH


def _form_at(out: list[str], f: Form, level: int, followed: bool) -> None:
    if level > _precedence(f, followed):
        out.append("(")
        _form(out, f, False)
        out.append(")")
    else:
        _form(out, f, followed)


def _junction(out: list[str], members: tuple[Form, ...], kind: type, followed: bool) -> None:
    level = _AND if kind is And else _OR
    word = " and " if kind is And else " or "
    last = len(members) - 1
    for i, m in enumerate(members):
        if i:
            out.append(word)
        inner = m.conjuncts if isinstance(m, And) else m.disjuncts if isinstance(m, Or) else ()
        if type(m) is kind and len(inner) >= 2:
            # Keep nesting visible ("a and (b and c)"); Go's printer drops it.
            out.append("(")
            _form(out, m, False)
            out.append(")")
        else:
            _form_at(out, m, level, followed or i < last)


def _form(out: list[str], f: Form, followed: bool) -> None:
    if isinstance(f, Pred):
        _name_and_args(out, f.name, f.args)
    elif isinstance(f, Const):
        out.append("true" if f.value else "false")
    elif isinstance(f, Not):
        out.append("not ")
        _form_at(out, f.negand, _HIGH, followed)
    elif isinstance(f, And):
        if not f.conjuncts:
            out.append("true")
        elif len(f.conjuncts) == 1:
            _form(out, f.conjuncts[0], followed)
        else:
            _junction(out, f.conjuncts, And, followed)
    elif isinstance(f, Or):
        if not f.disjuncts:
            out.append("false")
        elif len(f.disjuncts) == 1:
            _form(out, f.disjuncts[0], followed)
        else:
            _junction(out, f.disjuncts, Or, followed)
    elif isinstance(f, Implies):
        _form_at(out, f.antecedent, _OR, True)
        out.append(" implies ")
        _form_at(out, f.consequent, _LOW, followed)
    elif isinstance(f, Speaksfor):
        _term(out, f.delegate)
        out.append(" speaksfor ")
        _term(out, f.delegator)
    elif isinstance(f, Says):
        _term(out, f.speaker)
        if f.time is not None:
            out.append(f" from {f.time}")
        if f.expiration is not None:
            out.append(f" until {f.expiration}")
        out.append(" says ")
        _form_at(out, f.message, _LOW, followed)
    elif isinstance(f, Forall | Exists):
        out.append(f"{'forall' if isinstance(f, Forall) else 'exists'} {f.var}: ")
        _form_at(out, f.body, _LOW, followed)
    else:  # pragma: no cover - the union is exhausted above
        raise TypeError(f"not a Form: {type(f).__name__}")


def _name_and_args(out: list[str], name: str, args: tuple[Term, ...]) -> None:
    out.append(name)
    out.append("(")
    for i, a in enumerate(args):
        if i:
            out.append(", ")
        _term(out, a)
    out.append(")")


def _subprin_text(out: list[str], s: SubPrin) -> None:
    for e in s.exts:
        out.append(".")
        _name_and_args(out, e.name, e.args)


def _term(out: list[str], t: Term) -> None:
    if isinstance(t, Prin):
        out.append(f"{t.type}(")
        _term(out, t.key_hash)
        out.append(")")
        _subprin_text(out, t.ext)
    elif isinstance(t, PrinTail):
        out.append("ext")
        _subprin_text(out, t.ext)
    elif isinstance(t, Str):
        out.append(go_quote(t.value))
    elif isinstance(t, Bytes):
        out.append(f"[{t.value.hex()}]")
    elif isinstance(t, Int):
        out.append(str(t.value))
    elif isinstance(t, TermVar):
        out.append(t.name)
    else:  # pragma: no cover
        raise TypeError(f"not a Term: {type(t).__name__}")


def format_element(e: Element) -> str:
    """The canonical text of any term, formula, SubPrin or PrinExt."""
    out: list[str] = []
    if isinstance(e, SubPrin):
        _subprin_text(out, e)
    elif isinstance(e, PrinExt):
        _name_and_args(out, e.name, e.args)
    elif isinstance(e, Prin | PrinTail | Str | Bytes | Int | TermVar):
        _term(out, e)
    else:
        _form(out, e, False)
    return "".join(out)
