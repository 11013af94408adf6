"""Whether a caller could have a right anywhere under a prefix (List and Watch ask first).

List and Watch filter names one by one, so a caller with no right at all under the
prefix used to make the server scan every name or every event for nothing (and learn
from the time taken, or the cursor, how many there were). :class:`Reach` answers the
question before any scan: some rule of the guard gives the caller ``op`` on the
prefix, an ancestor of it, or a name under it; or an extension (grants) says one
might. A no is refused at once.

For an ACL guard the rules naming ``op`` are indexed once per guard object (a
reloaded guard is indexed anew) and the answers are remembered per (principal, op,
prefix) for as long as that guard is in force (at most :data:`MAX_ANSWERS`). A guard
of another kind cannot be enumerated: it is asked for the prefix and its ancestors,
and otherwise assumed to reach (its names are then filtered as before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from taonet import auth
from taonet.domain import ACLGuard, ConservativeGuard, Guard

__all__ = ["MAX_ANSWERS", "Reach", "under"]

#: Answers remembered per guard.
MAX_ANSWERS: Final = 4096

#: ``also(principal, op, prefix)``: whether an extension might give a right under it.
AlsoReaches = Callable[[auth.Prin, str, str], bool]


def under(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix`` or under it, segment-wise (``/a`` covers ``/a/b``)."""
    base = prefix.rstrip("/")
    return not base or name == base or name.startswith(base + "/")


class Reach:
    """Answers "could ``principal`` have ``op`` on a name under ``prefix``?"."""

    def __init__(self) -> None:
        self._guard: Guard | None = None
        self._names: dict[str, tuple[auth.Str, ...]] = {}
        self._answers: dict[tuple[auth.Prin, str, str], bool] = {}

    def _index(self, guard: Guard) -> None:
        if guard is self._guard:
            return
        names: dict[str, list[auth.Str]] = {}
        if isinstance(guard, ACLGuard):
            for rule in guard.rules:
                if (
                    isinstance(rule, auth.Pred)
                    and rule.name == "Authorized"
                    and len(rule.args) == 3
                    and isinstance(rule.args[1], auth.Str)
                    and isinstance(rule.args[2], auth.Str)
                ):
                    names.setdefault(rule.args[1].value, []).append(rule.args[2])
        self._names = {op: tuple(dict.fromkeys(found)) for op, found in names.items()}
        self._answers = {}
        self._guard = guard

    def reaches(
        self,
        guard: Guard,
        principal: auth.Prin,
        op: str,
        prefix: str,
        *,
        covered: bool,
        also: AlsoReaches | None = None,
    ) -> bool:
        """Whether ``principal`` could have ``op`` under ``prefix``. ``covered``: the
        caller already knows it has ``op`` on the prefix itself (or above)."""
        if covered:
            return True
        if also is not None and also(principal, op, prefix):
            return True  # asked every time: grants change without the guard
        self._index(guard)
        key = (principal, op, prefix)
        answer = self._answers.get(key)
        if answer is None:
            if isinstance(guard, ACLGuard):
                answer = any(
                    under(name.value, prefix) and guard.is_authorized(principal, op, [name])
                    for name in self._names.get(op, ())
                )
            else:
                answer = not isinstance(guard, ConservativeGuard)
            if len(self._answers) >= MAX_ANSWERS:
                self._answers.clear()
            self._answers[key] = answer
        return answer
