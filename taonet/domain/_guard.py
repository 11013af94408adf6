"""Guards: who may do what, decided from the domain's policy.

A guard answers ``Authorized(P, "op", args...)`` queries. Three kinds exist, as in
the original CloudProxy, each named by the sub-principal a host extends its name with:

* :class:`LiberalGuard` (``TrivialGuard("Liberal")``): allows everything. For tests
  and demos only.
* :class:`ConservativeGuard` (``TrivialGuard("Conservative")``): allows nothing.
* :class:`ACLGuard` (``ACLGuard([sha256 of the serialized rule set])``): a set of auth
  formulas. A query holds when it is one of the rules, or when a rule of the same
  predicate has a principal *tail* in the first argument (``ext.Program([h])``) and the
  query's principal is a root key principal whose extensions begin with that tail
  (for a TPM 2.0 host, ``tpm2([h]).PCRs(...)``, the extensions after its ``PCRs``
  extension, which is part of the host's name). A tail beginning with ``PCRs(...)``
  matches only the first extensions of a ``tpm2`` principal (the host state itself).
  The tail form is what ``taonet domain policy --add-program`` writes: it authorizes
  the program ``Program([h])`` on any host the domain otherwise trusts (the domain
  service only accepts hosts the policy key certified), together with the names the
  program derives from its own (``...Program([h]).PolicyKey([k])``). Extensions
  cannot be prepended by anyone but the hosts in the chain, so a program cannot pass
  itself off as another by extending its own name.
* Trusted TPM host states are ACL rules too: ``Authorized(tpm2([h]).PCRs(...),
  "Host")`` (``taonet domain policy --add-host`` of a host's full name) trusts that
  PCR state on one TPM, ``Authorized(ext.PCRs("nums", "hexvals"), "Host")`` (of the
  bare ``PCRs(...)``) on every TPM the domain certified; see :mod:`taonet.domain._hosts`.

ACL rule sets are stored as the original's ``SignedACLSet``: the serialized
``ACLSet{entries: canonical rule text}`` signed by the policy key under the context
"tao.ACLGuard Version 1". :meth:`ACLGuard.from_signed` refuses a rule set whose
signature does not verify, so a hand-edited guard file is never trusted.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final

from taonet import auth
from taonet._errors import AuthenticationError, AuthorizationError, CodecError, ConfigError
from taonet.crypto import ACL_GUARD_CONTEXT, Signer, Verifier
from taonet.wire import message_class, parse, serialize

__all__ = [
    "GUARD_KINDS",
    "ACLGuard",
    "ConservativeGuard",
    "Guard",
    "LiberalGuard",
    "authorized",
]

MAX_RULES: Final = 100_000


def authorized(principal: auth.Term, op: str, args: Sequence[auth.Term] = ()) -> auth.Pred:
    """The query form ``Authorized(principal, "op", args...)``."""
    return auth.Pred("Authorized", (principal, auth.Str(op), *args))


class Guard(abc.ABC):
    """Decides ``Authorized(P, op, args)`` queries. Pure: no I/O."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def query(self, form: auth.Form) -> bool:
        """Whether the policy proves ``form``."""

    @abc.abstractmethod
    def subprincipal(self) -> auth.SubPrin:
        """The extension a host adds to its name to say it enforces this guard."""

    def is_authorized(self, principal: auth.Prin, op: str, args: Sequence[auth.Term] = ()) -> bool:
        """Whether ``principal`` may perform ``op`` with ``args``."""
        return self.query(authorized(principal, op, args))

    def check(self, principal: auth.Prin, op: str, args: Sequence[auth.Term] = ()) -> None:
        """Raise AuthorizationError unless ``principal`` may perform ``op``."""
        if not self.is_authorized(principal, op, args):
            raise AuthorizationError(
                f"the {self.kind} guard does not authorize {principal} to {op!r}"
            )


class LiberalGuard(Guard):
    """Allows everything (tests and demos only)."""

    kind = "Liberal"

    def query(self, form: auth.Form) -> bool:
        return True

    def subprincipal(self) -> auth.SubPrin:
        return auth.SubPrin((auth.PrinExt("TrivialGuard", (auth.Str("Liberal"),)),))


class ConservativeGuard(Guard):
    """Allows nothing."""

    kind = "Conservative"

    def query(self, form: auth.Form) -> bool:
        return False

    def subprincipal(self) -> auth.SubPrin:
        return auth.SubPrin((auth.PrinExt("TrivialGuard", (auth.Str("Conservative"),)),))


def _tail_matches(rule: auth.Form, form: auth.Form) -> bool:
    if not (isinstance(rule, auth.Pred) and isinstance(form, auth.Pred)):
        return False
    if rule.name != form.name or len(rule.args) != len(form.args) or not rule.args:
        return False
    tail, prin = rule.args[0], form.args[0]
    if not (isinstance(tail, auth.PrinTail) and isinstance(prin, auth.Prin)):
        return False
    if rule.args[1:] != form.args[1:] or not tail.ext.exts:
        return False
    n = len(tail.ext.exts)
    exts = prin.ext.exts
    if tail.ext.exts[0].name == "PCRs":
        # A host-state tail names a TPM 2.0 host's first extension, nothing else: not a
        # PCRs extension a host appended later, nor one on a key(...) principal.
        return prin.type == "tpm2" and exts[:n] == tail.ext.exts
    if exts[:n] == tail.ext.exts:
        return True
    # A TPM 2.0 host is named tpm2([h]).PCRs(...): its PCRs extension is part of the
    # host's name (its state, which "Host" rules decide), so a program's tail follows it.
    return (
        prin.type == "tpm2"
        and bool(exts)
        and exts[0].name == "PCRs"
        and exts[1 : n + 1] == tail.ext.exts
    )


class ACLGuard(Guard):
    """A signed set of auth rules (see the module docstring). Immutable."""

    kind = "ACL"

    def __init__(self, rules: Iterable[auth.Form] = ()) -> None:
        ordered: dict[auth.Form, None] = {}
        for rule in rules:
            ordered[rule] = None
        if len(ordered) > MAX_RULES:
            raise ConfigError(f"an ACL guard holds at most {MAX_RULES} rules")
        self._rules: tuple[auth.Form, ...] = tuple(ordered)
        self._exact = frozenset(self._rules)
        self._tails = tuple(
            r
            for r in self._rules
            if isinstance(r, auth.Pred) and r.args and isinstance(r.args[0], auth.PrinTail)
        )

    @property
    def rules(self) -> tuple[auth.Form, ...]:
        return self._rules

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ACLGuard) and other._rules == self._rules

    def __hash__(self) -> int:
        return hash(self._rules)

    def __repr__(self) -> str:
        return f"ACLGuard({len(self._rules)} rules)"

    def query(self, form: auth.Form) -> bool:
        if form in self._exact:
            return True
        return any(_tail_matches(rule, form) for rule in self._tails)

    @staticmethod
    def check_rule(rule: auth.Form) -> None:
        """ConfigError unless ``rule`` has the shape of a query this guard can answer.

        Queries are ``Authorized(P, "op", args...)`` with ``P`` a principal, so a rule
        of any other shape (a conjunction, another predicate, a missing or empty
        operation, a first argument that is neither a principal nor a principal tail
        with an extension) could never match one: it is a mistake, not a rule.
        """
        if not isinstance(rule, auth.Pred) or rule.name != "Authorized":
            raise ConfigError(
                f'{rule} is not an Authorized(PRINCIPAL, "op", ...) rule, '
                "the only kind the ACL guard matches"
            )
        if len(rule.args) < 2:
            raise ConfigError(f'{rule} needs a principal and an operation: Authorized(P, "op")')
        who, op = rule.args[0], rule.args[1]
        if not (isinstance(who, auth.Prin) or (isinstance(who, auth.PrinTail) and who.ext.exts)):
            raise ConfigError(
                f"{rule}: the first argument must be a principal (key([...]) ...) or a "
                "principal tail with an extension (ext.Program([...]))"
            )
        if not isinstance(op, auth.Str) or not op.value:
            raise ConfigError(
                f'{rule}: the second argument must be the operation, a string ("Execute")'
            )

    def with_rule(self, rule: auth.Form) -> ACLGuard:
        """A guard that also holds ``rule`` (no change if it already does)."""
        return ACLGuard((*self._rules, rule))

    def without_rule(self, rule: auth.Form) -> ACLGuard:
        """A guard without ``rule``; ConfigError if it does not hold it."""
        if rule not in self._exact:
            raise ConfigError(f"the guard has no rule {rule}")
        return ACLGuard(r for r in self._rules if r != rule)

    # -- the signed form ------------------------------------------------------

    def _serialized_set(self) -> bytes:
        msg = message_class("ACLSet")()
        msg.entries.extend(str(r) for r in self._rules)
        return serialize(msg)

    def subprincipal(self) -> auth.SubPrin:
        digest = hashlib.sha256(self._serialized_set()).digest()
        return auth.SubPrin((auth.PrinExt("ACLGuard", (auth.Bytes(digest),)),))

    def to_signed(self, signer: Signer) -> bytes:
        """Serialize as a SignedACLSet signed by ``signer`` (the policy key)."""
        serialized = self._serialized_set()
        msg = message_class("SignedACLSet")(
            serialized_aclset=serialized,
            signature=signer.sign(serialized, ACL_GUARD_CONTEXT),
        )
        return serialize(msg)

    @classmethod
    def from_signed(cls, data: bytes, verifier: Verifier) -> ACLGuard:
        """Load a SignedACLSet, refusing it unless ``verifier`` (the policy key) signed it."""
        try:
            signed = parse("SignedACLSet", data, what="guard rules")
        except CodecError as exc:
            raise AuthenticationError(f"guard rules are not a signed rule set: {exc}") from None
        serialized = bytes(signed.serialized_aclset)
        try:
            verifier.verify(serialized, ACL_GUARD_CONTEXT, bytes(signed.signature))
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"guard rules are not signed by this domain's policy key: {exc}"
            ) from None
        try:
            aclset = parse("ACLSet", serialized, what="guard rules")
        except CodecError as exc:
            raise ConfigError(f"signed guard rules are malformed: {exc}") from None
        rules = []
        for i, entry in enumerate(aclset.entries):
            try:
                rules.append(auth.parse_form(entry))
            except CodecError as exc:
                raise ConfigError(f"guard rule {i + 1} is not a formula: {exc}") from None
        return cls(rules)


GUARD_KINDS: Final[dict[str, type[Guard]]] = {
    "Liberal": LiberalGuard,
    "Conservative": ConservativeGuard,
    "ACL": ACLGuard,
}
