"""Hypothesis strategies for auth terms, formulas and principals (reusable by other tests).

``terms()``, ``forms()`` and ``prins()`` produce values whose text form parses
back to the same value. ``forms(canonical=False)`` also produces the shapes
that only the binary form keeps exactly (And/Or with fewer than two members,
And/Or whose first member is an And/Or of the same kind).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

from hypothesis import strategies as st

from taonet import auth

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

__all__ = [
    "bytes_terms",
    "forms",
    "int_terms",
    "key_prins",
    "names",
    "prin_types",
    "prinexts",
    "prins",
    "str_terms",
    "subprins",
    "terms",
]


def names() -> st.SearchStrategy[str]:
    """Identifiers: predicate and extension names, variables."""
    return st.one_of(
        st.sampled_from(["P", "Q", "X", "Y", "Program", "PCRs", "Authorized", "A_1"]),
        st.from_regex(r"[A-Z][A-Za-z0-9_]{0,8}", fullmatch=True),
    )


def prin_types() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["key", "tpm", "tpm2"]),
        st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True).filter(
            lambda s: s not in auth.RESERVED_WORDS
        ),
    )


def str_terms() -> st.SearchStrategy[auth.Str]:
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)  # type: ignore[arg-type]
    return st.builds(auth.Str, st.one_of(text, st.sampled_from(['"', "\\", "\n\t\x00", "é😀"])))


def bytes_terms() -> st.SearchStrategy[auth.Bytes]:
    return st.builds(auth.Bytes, st.binary(max_size=40))


def int_terms() -> st.SearchStrategy[auth.Int]:
    return st.builds(
        auth.Int,
        st.one_of(
            st.integers(INT64_MIN, INT64_MAX),
            st.sampled_from([0, -1, 1, 127, 128, INT64_MIN, INT64_MAX]),
        ),
    )


def _var_terms() -> st.SearchStrategy[auth.TermVar]:
    return st.builds(auth.TermVar, names())


@functools.cache
def _leaf_terms() -> st.SearchStrategy[auth.Term]:
    return st.one_of(str_terms(), bytes_terms(), int_terms(), _var_terms())


def _exts(args: st.SearchStrategy[auth.Term], min_size: int) -> st.SearchStrategy[auth.SubPrin]:
    ext = st.builds(auth.PrinExt, names(), st.lists(args, max_size=3).map(tuple))
    return st.lists(ext, min_size=min_size, max_size=3).map(lambda xs: auth.SubPrin(tuple(xs)))


def _extend_terms(children: st.SearchStrategy[auth.Term]) -> st.SearchStrategy[auth.Term]:
    prin = st.builds(auth.Prin, prin_types(), children, _exts(children, 0))
    tail = st.builds(auth.PrinTail, _exts(children, 1))
    return st.one_of(prin, tail)


@functools.cache
def terms() -> st.SearchStrategy[auth.Term]:
    """Any term, nested a little (principals inside principals)."""
    return st.recursive(_leaf_terms(), _extend_terms, max_leaves=8)


@functools.cache
def key_prins() -> st.SearchStrategy[auth.Prin]:
    """Realistic principals: ``type([32-byte hash]).Ext(...)...`` with flat arguments."""
    key_hash = st.binary(min_size=32, max_size=32).map(
        lambda b: auth.Bytes(hashlib.sha256(b).digest())
    )
    return st.builds(auth.Prin, prin_types(), key_hash, _exts(_leaf_terms(), 0))


@functools.cache
def prins() -> st.SearchStrategy[auth.Prin]:
    """Principals, mostly realistic, sometimes with any term as key hash."""
    return st.one_of(
        key_prins(),
        st.builds(auth.Prin, prin_types(), terms(), _exts(terms(), 0)),
    )


def prinexts() -> st.SearchStrategy[auth.PrinExt]:
    return st.builds(auth.PrinExt, names(), st.lists(terms(), max_size=3).map(tuple))


def subprins() -> st.SearchStrategy[auth.SubPrin]:
    return st.lists(prinexts(), max_size=4).map(lambda xs: auth.SubPrin(tuple(xs)))


def _times() -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(INT64_MIN, INT64_MAX))


def _leaf_forms() -> st.SearchStrategy[auth.Form]:
    return st.one_of(
        st.builds(auth.Pred, names(), st.lists(terms(), max_size=3).map(tuple)),
        st.builds(auth.Const, st.booleans()),
        st.builds(auth.Speaksfor, terms(), terms()),
    )


def _first_not(kind: type, xs: list[auth.Form]) -> tuple[auth.Form, ...]:
    if isinstance(xs[0], kind):
        return (auth.Not(xs[0]), *xs[1:])
    return tuple(xs)


def _extend_forms(
    canonical: bool,
) -> Callable[[st.SearchStrategy[auth.Form]], st.SearchStrategy[auth.Form]]:
    def extend(children: st.SearchStrategy[auth.Form]) -> st.SearchStrategy[auth.Form]:
        members = st.lists(children, min_size=2 if canonical else 0, max_size=4)
        if canonical:
            # Two or more members, the first not of the same kind (text can't keep that).
            conj = members.map(lambda xs: auth.And(_first_not(auth.And, xs)))
            disj = members.map(lambda xs: auth.Or(_first_not(auth.Or, xs)))
        else:
            conj = members.map(lambda xs: auth.And(tuple(xs)))
            disj = members.map(lambda xs: auth.Or(tuple(xs)))
        return st.one_of(
            st.builds(auth.Not, children),
            conj,
            disj,
            st.builds(auth.Implies, children, children),
            st.builds(
                auth.Says,
                st.one_of(prins(), terms()),
                children,
                time=_times(),
                expiration=_times(),
            ),
            st.builds(auth.Forall, names(), children),
            st.builds(auth.Exists, names(), children),
        )

    return extend


@functools.cache
def forms(*, canonical: bool = True) -> st.SearchStrategy[auth.Form]:
    """Any formula, nested a few levels."""
    return st.recursive(_leaf_forms(), _extend_forms(canonical), max_leaves=10)
