"""A secret server's audit chain held against the rows its database holds now.

The secret server records every change of a row in its audit chain, in the change's
own transaction: ``secret_created`` and ``secret_written`` with the ``tag`` of the row
written, ``secret_rotated`` with the tags of the new epoch's row and of the retired
one's (``tag``, ``retired_tag``), ``secret_deleted`` with the ``epochs`` removed; and
every release (``secret_released``) with the ``tag`` of the row served and the last
entry the server knew committed before it read the row (``read_after``). A row's tag
is 16 random bytes new at every write of the row, and bound to it by the row's MAC,
so a tag names one version of one row.

:class:`RowAudit` replays those entries (in sequence order, after the chain itself
verified) and then checks each row present (:meth:`RowAudit.check_row`) and, at the
end, each row the chain says is there (:meth:`RowAudit.finish`). What it reports
(:class:`MismatchKind`):

* ``rolled_back``: a row whose tag is not the tag of the last audited change of its
  name and epoch: an older (genuine, validly authenticated) copy of the row put back
  together with its name's manifest, which the server itself cannot tell from the
  latest; or a row still wrapped under a key epoch that a later audited rotation
  replaced;
* ``unaudited_row``: a row with no audited create, write or rotation, or one whose
  last audited change deleted it;
* ``deleted_unaudited``: a row the chain says exists, with no audited delete, that
  is gone;
* ``served_rollback``: a release whose tag is not that of the last audited change
  before it (a rolled-back version was served), or that differs from the version
  served before it with no audited change in between;
* ``served_unaudited``: a release of a name and epoch with no audited create (or
  deleted by the last audited change);
* ``unverifiable``: a row (or a row gone) that agrees with the chain only through
  entries after ``covered``, the last entry a trusted checkpoint signs. Entry hashes
  use no key: anyone who can write the database can append entries that link, so
  an entry no trusted checkpoint covers is no evidence of a legitimate change (a
  forged ``secret_written`` naming an old copy's tag would otherwise excuse that
  copy put back). A server signs a checkpoint when it stops: verify then;
* ``corrupt_row``: a row whose columns are not of their types (a text tag, a
  non-integer epoch: SQLite stores what it is given), reported by the caller with
  :meth:`RowAudit.corrupt_row`, never taken as a version.

Rotations of a key rewrap every object it protected with new tags that the chain
does not list (a rotation can rewrap thousands): after an audited rotation of its
protector, a row is checked by its protector (it must be wrapped under the new
epoch) and the first version served fixes its tag until the next audited change,
unless it is a version the chain recorded before (every rewrap makes a new tag: a
recorded tag served after the rewrap is an older copy put back), or the release
names (``protector``, ``NAME#EPOCH``) a protector epoch other than the one the
rotation made.
A release that serves the version an audited change replaced, when that change was
not yet known committed to the server as it read (its seq after the release's
``read_after``), is a read that raced the change, not a rollback; a change at or
before ``read_after`` committed before the read began, so the read had to see it.
Only the version just replaced is remembered: a read that raced two changes of one
name is reported (a false alarm that a second verify, after a new read, clears).

Memory: one small record per name and epoch (the tags of the last change), the
rotations of each key, and the tags recorded for rows under a key (to know an old
copy served after a rewrap). Time: every entry and row costs at most a logarithmic
number of steps, whatever the entries say (epoch numbers are never iterated: a
delete of every epoch visits the epochs the chain holds for the name; a row catches
up with its protector's rotations through remembered jumps). Pure: no I/O and no trio.
"""

from __future__ import annotations

import bisect
import enum
from typing import Final

import attrs

from taonet.audit._chain import AuditEntry

__all__ = ["Mismatch", "MismatchKind", "RowAudit", "RowVersion"]
#: Entries the replay understands.
_CHANGES: Final = frozenset(
    {"secret_created", "secret_written", "secret_rotated", "secret_deleted"}
)
_RELEASED: Final = "secret_released"
#: What a delete's ``epochs`` detail is cut to (the server cuts the list there).
_EPOCHS_CUT: Final = 1000


class MismatchKind(enum.Enum):
    """How the rows and the audit chain disagree (see the module)."""

    ROLLED_BACK = "rolled_back"
    UNAUDITED_ROW = "unaudited_row"
    DELETED_UNAUDITED = "deleted_unaudited"
    SERVED_ROLLBACK = "served_rollback"
    SERVED_UNAUDITED = "served_unaudited"
    UNVERIFIABLE = "unverifiable"
    CORRUPT_ROW = "corrupt_row"


@attrs.frozen
class RowVersion:
    """A row as stored: its id, its protector's id and its tag."""

    name: str
    epoch: int
    protector_name: str
    protector_epoch: int
    tag: bytes


@attrs.frozen
class Mismatch:
    """One disagreement: what, for which name and epoch, the audit entry concerned
    (its seq: the release, or the last audited change; 0 when there is none), and a
    sentence that says it."""

    kind: MismatchKind
    name: str
    epoch: int
    seq: int
    detail: str


@attrs.define
class _Slot:
    """What the chain says of one name and epoch, as of the entry replayed last."""

    #: The entry of the last change (or rewrap).
    seq: int
    #: The tag the row must have (None: not recorded, or rewrapped and not yet served).
    tag: bytes | None
    #: The key protecting the row (name, epoch), None for the master key, or for
    #: a protector whose epoch the chain does not say ("?", 0 means unknown).
    protector: tuple[str, int] | None
    deleted: bool = False
    #: The seq of the release that fixed ``tag`` after a rewrap (0: an audited change did).
    served_seq: int = 0
    #: The tag the last change replaced: a release of it soon after raced the change.
    replaced: bytes | None = None
    seen: bool = False


def _split_id(subject: str) -> tuple[str, int] | None:
    name, sep, epoch = subject.rpartition("#")
    if not sep or not epoch.isdigit() or len(epoch) > 10:
        return None
    return name, int(epoch)


def _tag(entry: AuditEntry, key: str = "tag") -> bytes | None:
    text = entry.details.get(key)
    if text is None or len(text) > 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


class RowAudit:
    """Replay a secret server's audit entries, then check its rows (see the module).

    Feed every entry in sequence order with :meth:`replay`, then every row with
    :meth:`check_row` (each at most once), then call :meth:`finish`. Mismatches are
    counted by kind in :attr:`counts`; the first ``keep`` of them are kept in
    :attr:`mismatches` (the output stays bounded however many rows disagree).

    ``covered``: the last entry a trusted checkpoint signs (``None``: every entry is
    taken as genuine). A row or a gone row that agrees with the chain only through
    entries after it is reported ``unverifiable``.
    """

    def __init__(self, *, keep: int = 100, covered: int | None = None) -> None:
        self.keep = keep
        self.covered = covered
        self.mismatches: list[Mismatch] = []
        self.counts: dict[MismatchKind, int] = dict.fromkeys(MismatchKind, 0)
        self.entries = 0
        self.releases_checked = 0
        self.rows = 0
        self._slots: dict[tuple[str, int], _Slot] = {}
        #: Per key, per retired epoch, the seqs of the rotations that retired it (sorted).
        self._rotations: dict[str, dict[int, list[int]]] = {}
        #: (key, seq of a rotation of it) -> the furthest (epoch, rotation seq) known
        #: to follow it (links never change once found, so jumps stay true).
        self._jumps: dict[tuple[str, int], tuple[int, int]] = {}
        #: The epochs the chain holds a slot for, per name (an int while there is one:
        #: most names have one epoch, and a set per name would double the memory).
        self._epochs: dict[str, int | set[int]] = {}
        #: Tags recorded for rows under a key (before a rewrap, each is an older copy).
        self._recorded: set[bytes] = set()
        #: The latest epoch of each name, as the chain says (what a create under a key
        #: uses; and up to where a delete of every epoch goes).
        self._latest: dict[str, int] = {}

    @property
    def total(self) -> int:
        """How many mismatches were found (kept or not)."""
        return sum(self.counts.values())

    def _report(self, kind: MismatchKind, name: str, epoch: int, seq: int, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.mismatches) < self.keep:
            self.mismatches.append(Mismatch(kind, name, epoch, seq, detail))

    # -- replay -----------------------------------------------------------------------

    def replay(self, entry: AuditEntry) -> None:
        """Take one entry of the chain into account (entries in sequence order)."""
        self.entries += 1
        if entry.outcome != "ok":
            return
        if entry.kind == _RELEASED:
            self._released(entry)
        elif entry.kind in _CHANGES:
            self._changed(entry)

    def _advance(self, key: str, epoch: int, seq: int) -> tuple[int, int]:
        """Where a row wrapped under ``key#epoch`` as of entry ``seq`` is after the
        rotations of ``key`` replayed so far: (epoch, seq of the last rotation), or
        the same (epoch, seq) when none applies. Amortized logarithmic."""
        by_epoch = self._rotations.get(key)
        if not by_epoch:
            return epoch, seq
        path: list[int] = []
        while True:
            seqs = by_epoch.get(epoch)
            if not seqs:
                break
            i = bisect.bisect_right(seqs, seq)
            if i == len(seqs):
                break
            rotation = seqs[i]
            path.append(rotation)
            epoch, seq = self._jumps.get((key, rotation), (epoch + 1, rotation))
        for rotation in path:
            self._jumps[key, rotation] = (epoch, seq)
        return epoch, seq

    def _slot(self, name: str, epoch: int) -> _Slot | None:
        """The slot of ``name#epoch``, brought up to date with its protector's rotations."""
        slot = self._slots.get((name, epoch))
        if slot is None or slot.protector is None or slot.deleted:
            return slot
        key, key_epoch = slot.protector
        new_epoch, seq = self._advance(key, key_epoch, slot.seq)
        if seq != slot.seq:
            # Rewrapped under the new epoch with a tag the chain does not list (after
            # more than one rotation, the version replaced is unknown).
            slot.replaced = slot.tag if new_epoch == key_epoch + 1 else None
            slot.tag = None
            slot.served_seq = 0
            slot.seq = seq
            slot.protector = (key, new_epoch)
        return slot

    def _set(
        self,
        name: str,
        epoch: int,
        entry: AuditEntry,
        tag: bytes | None,
        protector: tuple[str, int] | None,
    ) -> None:
        old = self._slots.get((name, epoch))
        held = self._epochs.setdefault(name, epoch)
        if isinstance(held, set):
            held.add(epoch)
        elif held != epoch:
            self._epochs[name] = {held, epoch}
        if protector is not None and tag is not None:
            self._recorded.add(tag)
        self._slots[name, epoch] = _Slot(
            entry.seq,
            tag,
            protector,
            replaced=None if old is None else old.tag,
        )

    def _changed(self, entry: AuditEntry) -> None:
        if entry.kind == "secret_deleted":
            self._deleted(entry)
            return
        found = _split_id(entry.subject)
        if found is None:
            return
        name, epoch = found
        tag = _tag(entry)
        if entry.kind == "secret_created":
            key = entry.details.get("protector")
            protector = None if key is None else (key, self._latest.get(key, 0))
            self._set(name, epoch, entry, tag, protector)
            self._latest[name] = epoch
        elif entry.kind == "secret_written":
            slot = self._slot(name, epoch)
            self._set(name, epoch, entry, tag, None if slot is None else slot.protector)
        else:  # rotated: the new epoch's id; the old epoch is the one before it
            old = self._slot(name, epoch - 1)
            protector = None if old is None else old.protector
            self._set(name, epoch - 1, entry, _tag(entry, "retired_tag"), protector)
            self._set(name, epoch, entry, tag, protector)
            self._latest[name] = epoch
            seqs = self._rotations.setdefault(name, {}).setdefault(epoch - 1, [])
            bisect.insort(seqs, entry.seq)  # entries come in order: an append

    def _deleted(self, entry: AuditEntry) -> None:
        name = entry.subject
        text = entry.details.get("epochs", "")
        parts = text.split(",")
        if len(text) >= _EPOCHS_CUT:
            # The list was cut: only a delete of every epoch lists that many (the
            # epochs the chain holds for the name, never a range of numbers).
            held = self._epochs.get(name, ())
            epochs = sorted(held) if isinstance(held, set | tuple) else [held]
        else:
            epochs = [int(p) for p in parts if p.isdigit() and len(p) <= 10]
        for epoch in epochs:
            slot = self._slot(name, epoch)
            self._slots[name, epoch] = _Slot(
                entry.seq,
                None,
                None,
                deleted=True,
                replaced=None if slot is None else slot.tag,
            )

    def _released(self, entry: AuditEntry) -> None:
        tag = _tag(entry)
        found = _split_id(entry.subject)
        if tag is None or found is None:  # a release from before tags were recorded
            return
        self.releases_checked += 1
        name, epoch = found
        slot = self._slot(name, epoch)
        after = entry.details.get("read_after", "")
        known = int(after) if after.isdigit() and len(after) <= 19 else 0
        # A change the server did not yet know committed when it read may have raced
        # it; a release that does not say what it knew (no read_after, or 0) may not.
        raced = (
            0 < known < entry.seq and slot is not None and slot.seq > known and slot.replaced == tag
        )
        if slot is None or slot.deleted:
            if not raced:
                why = "no audited create" if slot is None else f"deleted at entry {slot.seq}"
                self._report(
                    MismatchKind.SERVED_UNAUDITED,
                    name,
                    epoch,
                    entry.seq,
                    f"released at entry {entry.seq} (tag {tag.hex()}), but the audit has {why}",
                )
            return
        served_under = _split_id(entry.details.get("protector", ""))
        wanted = slot.protector
        if (
            not raced  # a read that raced a rotation served the version it replaced
            and served_under is not None
            and wanted is not None
            and wanted[1] != 0
            and served_under != wanted
        ):
            self._report(
                MismatchKind.SERVED_ROLLBACK,
                name,
                epoch,
                entry.seq,
                f"released at entry {entry.seq} wrapped under {served_under[0]}#{served_under[1]},"
                f" but the chain has it under {wanted[0]}#{wanted[1]} (entry {slot.seq}):"
                " an older copy was served",
            )
            return
        if slot.tag is None and tag != slot.replaced:
            if tag in self._recorded:
                self._report(
                    MismatchKind.SERVED_ROLLBACK,
                    name,
                    epoch,
                    entry.seq,
                    f"released at entry {entry.seq} with tag {tag.hex()}, a version recorded"
                    f" before the rewrap at entry {slot.seq} (a rewrap makes a new tag):"
                    " an older copy was served",
                )
                return
            # The first version served since a rewrap: the rewrap's (its row was
            # rewritten with a tag the chain does not list; the row check holds its
            # protector against the rotation).
            slot.tag, slot.served_seq = tag, entry.seq
            self._recorded.add(tag)
            return
        if tag != slot.tag and not raced:
            if slot.tag is None:
                since = f"the version the rotation at entry {slot.seq} rewrapped"
            elif slot.served_seq:
                since = (
                    f"the version served at entry {slot.served_seq} after the rewrap at"
                    f" entry {slot.seq}"
                )
            else:
                since = f"the last audited change (entry {slot.seq}, tag {slot.tag.hex()})"
            self._report(
                MismatchKind.SERVED_ROLLBACK,
                name,
                epoch,
                entry.seq,
                f"released at entry {entry.seq} with tag {tag.hex()}, not {since}:"
                " a rolled-back or edited row was served",
            )

    # -- rows -------------------------------------------------------------------------

    def check_row(self, row: RowVersion) -> None:
        """Check one row present in the database (after every entry was replayed)."""
        self.rows += 1
        slot = self._slot(row.name, row.epoch)
        if slot is None:
            self._report(
                MismatchKind.UNAUDITED_ROW,
                row.name,
                row.epoch,
                0,
                f"a row (tag {row.tag.hex()}) that no audited create, write or rotation made",
            )
            return
        slot.seen = True
        if slot.deleted:
            self._report(
                MismatchKind.UNAUDITED_ROW,
                row.name,
                row.epoch,
                slot.seq,
                f"a row (tag {row.tag.hex()}) present though deleted at entry {slot.seq},"
                " with no audited change since",
            )
            return
        if slot.tag is None or slot.served_seq:
            # Rewrapped by a rotation of its protector: the row must be wrapped under
            # the epoch the rotation made.
            wanted = slot.protector
            if (
                wanted is not None
                and wanted[1] != 0
                and (row.protector_name, row.protector_epoch) != wanted
            ):
                self._report(
                    MismatchKind.ROLLED_BACK,
                    row.name,
                    row.epoch,
                    slot.seq,
                    f"the row is wrapped under {row.protector_name}#{row.protector_epoch},"
                    f" but the audited rotation at entry {slot.seq} rewrapped it under"
                    f" {wanted[0]}#{wanted[1]}: an older copy",
                )
                return
        if slot.tag is not None and row.tag != slot.tag:
            what = (
                f"the version served at entry {slot.served_seq}"
                if slot.served_seq
                else f"the last audited change (entry {slot.seq}, tag {slot.tag.hex()})"
            )
            self._report(
                MismatchKind.ROLLED_BACK,
                row.name,
                row.epoch,
                slot.seq,
                f"the row's tag {row.tag.hex()} is not that of {what}: an older or edited"
                " copy of the row",
            )
            return
        self._uncovered(slot, row.name, row.epoch, "the row agrees with the chain only through")

    def _uncovered(self, slot: _Slot, name: str, epoch: int, what: str) -> None:
        """Report ``unverifiable`` when ``slot`` rests on an entry no trusted
        checkpoint covers."""
        if self.covered is None:
            return
        last = max(slot.seq, slot.served_seq)
        if last > self.covered:
            self._report(
                MismatchKind.UNVERIFIABLE,
                name,
                epoch,
                last,
                f"{what} entry {last}, after the last trusted checkpoint (entry"
                f" {self.covered}): entries no checkpoint signs can be appended by anyone"
                " who can write the database; verify again after the server's next"
                " checkpoint (it signs one when it stops)",
            )

    def corrupt_row(self, name: str, epoch: int, detail: str) -> None:
        """Report a row whose columns are not of their types (see the module); the
        caller describes it (``name`` and ``detail`` as printable, bounded text)."""
        self.rows += 1
        self._report(MismatchKind.CORRUPT_ROW, name, epoch, 0, detail)

    def corrupt_rows(self, count: int) -> None:
        """Count ``count`` more corrupt rows that are not described one by one."""
        self.rows += count
        self.counts[MismatchKind.CORRUPT_ROW] += count

    def finish(self) -> None:
        """Report every row the chain says exists that :meth:`check_row` did not see."""
        for name, epoch in self._slots:
            slot = self._slot(name, epoch)
            assert slot is not None
            if not slot.deleted and not slot.seen:
                self._report(
                    MismatchKind.DELETED_UNAUDITED,
                    name,
                    epoch,
                    slot.seq,
                    f"the row is gone, but the audit has no delete of it (last change:"
                    f" entry {slot.seq})",
                )
            elif slot.deleted and not slot.seen:
                self._uncovered(slot, name, epoch, "the row is gone, deleted at")
