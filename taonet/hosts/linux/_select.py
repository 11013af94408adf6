"""Which hosted programs a selector names: by id, id prefix, file name, pid or principal.

Pure: the host selects among its children with it, and ``taonet stop|kill`` among
the programs a list returned, so both say the same about the same selector.

Every program a host starts gets an id: 32 lowercase hex digits, random, its own
for as long as the host knows it (two instances of one program have two ids).
``taonet list`` shows the first :data:`SHORT_ID` of them. A selector is

* ``id:HEX``, ``pid:N`` or ``file:NAME``: only that kind;
* a principal in text form (``key([...]).Program([...])``): every running instance
  of that program (the one selector that may name several);
* otherwise what it matches exactly, a pid (decimal), a whole id, or a program's
  file name (the last part of the path it was started from) or that whole path; and
  only if it matches nothing exactly, a prefix of an id (at least
  :data:`MIN_ID_PREFIX` hex digits). So a pid always selects its program, as it did
  before ids existed, even where it also begins another program's id (as Docker
  prefers an exact name to an id prefix).

Except for a principal, a selector must name exactly one program: one that names
none raises :class:`ProgramNotFoundError`, one that names several (two programs with
the same file name, a prefix of two ids, one program's pid that is another's file
name) :class:`AmbiguousSelectorError`, whose message lists the candidates and whose
``candidates`` holds them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from taonet import auth
from taonet._errors import CodecError, HostError

__all__ = [
    "ID_DIGITS",
    "MIN_ID_PREFIX",
    "SHORT_ID",
    "AmbiguousSelectorError",
    "ProgramNotFoundError",
    "is_program_id",
    "program_file",
    "select_programs",
]

#: Hex digits in a program's id.
ID_DIGITS: Final = 32
#: Digits of the id that ``taonet list`` shows.
SHORT_ID: Final = 12
#: The shortest id prefix a bare selector is read as.
MIN_ID_PREFIX: Final = 4
#: How many candidates an ambiguity error lists.
_LISTED: Final = 10
_HEX: Final = re.compile(r"[0-9a-f]+")
_ID: Final = re.compile(rf"[0-9a-f]{{{ID_DIGITS}}}")


class ProgramNotFoundError(HostError):
    """The selector names no program the host knows."""


class AmbiguousSelectorError(HostError):
    """The selector names several programs where it must name one."""

    def __init__(self, message: str, candidates: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


def program_file(path: str) -> str:
    """A program's file name: the last part of the path it was started from."""
    return os.path.basename(path.rstrip("/")) or path


def is_program_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


_T = TypeVar("_T")


def select_programs(
    selector: str,
    programs: Sequence[_T],
    *,
    pid: Callable[[_T], int],
    program_id: Callable[[_T], str],
    path: Callable[[_T], str],
    names: Callable[[_T], Sequence[auth.Prin]],
    describe: Callable[[_T], str],
) -> list[_T]:
    """The programs ``selector`` names (see the module docstring for the rules)."""
    kind, sep, value = selector.partition(":")
    if sep and kind in ("id", "pid", "file"):
        if not value:
            raise HostError(f"{selector!r}: give what follows {kind}:")
        return _one(selector, _matches(kind, value, programs, pid, program_id, path), describe)
    prin = _principal(selector)
    if prin is not None:
        found = [p for p in programs if prin in names(p)]
        if not found:
            raise ProgramNotFoundError(f"no hosted program {_shown(selector)}")
        return found
    exact: list[_T] = []
    for kind in ("pid", "file"):
        exact += [p for p in _matches(kind, selector, programs, pid, program_id, path)
                  if not any(p is q for q in exact)]  # fmt: skip
    exact += [p for p in programs if program_id(p) == selector and not any(p is q for q in exact)]
    if exact:
        return _one(selector, exact, describe)
    return _one(selector, _matches("id", selector, programs, pid, program_id, path), describe)


def _principal(selector: str) -> auth.Prin | None:
    """The principal ``selector`` spells, if it spells one."""
    if "(" not in selector:
        return None  # every principal has one; spare the parser file names and pids
    try:
        return auth.parse_prin(selector)
    except (CodecError, ValueError, TypeError):
        return None


def _matches(
    kind: str,
    value: str,
    programs: Sequence[_T],
    pid: Callable[[_T], int],
    program_id: Callable[[_T], str],
    path: Callable[[_T], str],
) -> list[_T]:
    if kind == "pid":
        if not (value.isascii() and value.isdigit()):
            return []
        return [p for p in programs if pid(p) == int(value)]
    if kind == "id":
        prefix = value.lower()
        if len(prefix) < MIN_ID_PREFIX or not _HEX.fullmatch(prefix):
            return []
        return [p for p in programs if program_id(p).startswith(prefix)]
    return [p for p in programs if value in (program_file(path(p)), path(p))]


def _one(selector: str, found: list[_T], describe: Callable[[_T], str]) -> list[_T]:
    if not found:
        raise ProgramNotFoundError(f"no hosted program {_shown(selector)}")
    if len(found) > 1:
        listed = "; ".join(describe(p) for p in found[:_LISTED])
        more = f"; and {len(found) - _LISTED} more" if len(found) > _LISTED else ""
        raise AmbiguousSelectorError(
            f"{_shown(selector)} names {len(found)} programs: {listed}{more}; "
            "give a longer id prefix (id:...), pid:N, or the full principal",
            found,
        )
    return found


def _shown(selector: str) -> str:
    """The selector as an error message repeats it (bounded, printable)."""
    text = selector if len(selector) <= 80 else selector[:77] + "..."
    return repr(text)
