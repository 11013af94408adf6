"""RowAudit (pure): the secret server's chain replayed against its rows, case by case.

The end-to-end attacks are in ``test_audit_against_rows``; these pin the replay's
rules where a real server would need precise timing: a read that raced a change
(accepted) against a rolled-back version served after the change was known
(reported), rewraps by a key's rotation, and a delete whose epoch list was cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

from taonet.audit import AuditEntry, MismatchKind, RowAudit, RowVersion

T1, T2, T3, T4 = (bytes([i]) * 16 for i in (1, 2, 3, 4))


class Chain:
    def __init__(self) -> None:
        self.seq: Iterator[int] = itertools.count(1)
        self.entries: list[AuditEntry] = []

    def add(self, kind: str, subject: str, **details: str) -> int:
        seq = next(self.seq)
        self.entries.append(
            AuditEntry(
                seq=seq,
                time_ns=seq,
                kind=kind,
                actor="key([aa])",
                subject=subject,
                outcome="ok",
                details=details,
            )
        )
        return seq

    def release(self, subject: str, tag: bytes, read_after: int) -> int:
        return self.add("secret_released", subject, tag=tag.hex(), read_after=str(read_after))

    def audit(self, rows: list[RowVersion]) -> dict[tuple[str, str, int], int]:
        audit = RowAudit()
        for entry in self.entries:
            audit.replay(entry)
        for row in rows:
            audit.check_row(row)
        audit.finish()
        found: dict[tuple[str, str, int], int] = {}
        for m in audit.mismatches:
            found[(m.kind.value, m.name, m.epoch)] = m.seq
        assert audit.total == len(audit.mismatches)
        return found


def row(name: str, tag: bytes, epoch: int = 1, protector: tuple[str, int] = ("m", 1)) -> RowVersion:
    return RowVersion(name, epoch, protector[0], protector[1], tag)


def kinds(found: Mapping[tuple[str, str, int], int]) -> set[tuple[str, str, int]]:
    return set(found)


def test_a_read_that_raced_a_write_is_not_a_rollback_but_one_after_it_is() -> None:
    chain = Chain()
    chain.add("secret_created", "/a#1", tag=T1.hex())
    known = chain.add("secret_written", "/a#1", tag=T2.hex())
    # Read before the write was known committed (read_after < the write): raced.
    chain.release("/a#1", T1, read_after=known - 1)
    assert chain.audit([row("/a", T2)]) == {}
    # The same old version served once the write was known: a rollback served.
    served = chain.release("/a#1", T1, read_after=known)
    assert chain.audit([row("/a", T2)]) == {("served_rollback", "/a", 1): served}
    # An older version than the one just replaced is never a race.
    chain = Chain()
    chain.add("secret_created", "/a#1", tag=T1.hex())
    chain.add("secret_written", "/a#1", tag=T2.hex())
    chain.add("secret_written", "/a#1", tag=T3.hex())
    served = chain.release("/a#1", T1, read_after=0)
    assert kinds(chain.audit([row("/a", T3)])) == {("served_rollback", "/a", 1)}


def test_a_rotation_of_the_protector_rewraps_its_children() -> None:
    chain = Chain()
    chain.add("secret_created", "/k#1", tag=T1.hex())
    chain.add("secret_created", "/c#1", tag=T2.hex(), protector="/k")
    rotated = chain.add("secret_rotated", "/k#2", tag=T3.hex(), retired_tag=T4.hex())
    new_child = bytes([9]) * 16
    keys = [row("/k", T4, 1), row("/k", T3, 2)]
    # The child rewrapped under /k#2 with a tag the chain does not list: fine.
    assert chain.audit([*keys, row("/c", new_child, protector=("/k", 2))]) == {}
    # The child as it was before the rotation (its own tag, under /k#1): rolled back.
    assert chain.audit([*keys, row("/c", T2, protector=("/k", 1))]) == {
        ("rolled_back", "/c", 1): rotated
    }
    # The first version served after the rewrap fixes the tag until the next change.
    chain.release("/c#1", new_child, read_after=rotated)
    assert chain.audit([*keys, row("/c", new_child, protector=("/k", 2))]) == {}
    other = bytes([8]) * 16
    assert kinds(chain.audit([*keys, row("/c", other, protector=("/k", 2))])) == {
        ("rolled_back", "/c", 1)
    }
    served = chain.release("/c#1", other, read_after=rotated)
    assert chain.audit([*keys, row("/c", new_child, protector=("/k", 2))]) == {
        ("served_rollback", "/c", 1): served
    }
    # A second rotation: the child must be under /k#3 now.
    chain = Chain()
    chain.add("secret_created", "/k#1", tag=T1.hex())
    chain.add("secret_created", "/c#1", tag=T2.hex(), protector="/k")
    chain.add("secret_rotated", "/k#2", tag=T3.hex(), retired_tag=T4.hex())
    chain.add("secret_rotated", "/k#3", tag=T1.hex(), retired_tag=T2.hex())
    keys = [row("/k", T4, 1), row("/k", T2, 2), row("/k", T1, 3)]
    assert chain.audit([*keys, row("/c", new_child, protector=("/k", 3))]) == {}
    assert kinds(chain.audit([*keys, row("/c", new_child, protector=("/k", 2))])) == {
        ("rolled_back", "/c", 1)
    }


def test_deletes_and_rows_without_audit() -> None:
    chain = Chain()
    chain.add("secret_created", "/a#1", tag=T1.hex())
    chain.add("secret_rotated", "/a#2", tag=T2.hex(), retired_tag=T3.hex())
    deleted = chain.add("secret_deleted", "/a", epochs="1")
    # Epoch 1 deleted as audited, epoch 2 kept: clean.
    assert chain.audit([row("/a", T2, 2)]) == {}
    # Epoch 2 gone too, epoch 1 back, a name never made, a release of the deleted id.
    served = chain.release("/a#1", T3, read_after=deleted)
    found = chain.audit([row("/a", T3, 1), row("/new", T4)])
    assert found == {
        ("unaudited_row", "/a", 1): deleted,
        ("deleted_unaudited", "/a", 2): 2,
        ("unaudited_row", "/new", 1): 0,
        ("served_unaudited", "/a", 1): served,
    }


def test_a_delete_whose_epoch_list_was_cut_deletes_every_epoch() -> None:
    chain = Chain()
    for epoch in range(1, 301):
        if epoch == 1:
            chain.add("secret_created", "/a#1", tag=T1.hex())
        else:
            chain.add("secret_rotated", f"/a#{epoch}", tag=T2.hex(), retired_tag=T3.hex())
    listed = ",".join(map(str, range(1, 301)))[:1000]  # as the server cuts it
    chain.add("secret_deleted", "/a", epochs=listed)
    assert chain.audit([]) == {}


def test_the_output_is_bounded_however_many_rows_disagree() -> None:
    chain = Chain()
    audit = RowAudit(keep=5)
    for entry in chain.entries:
        audit.replay(entry)
    for i in range(1000):
        audit.check_row(row(f"/n/{i}", T1))
    audit.finish()
    assert len(audit.mismatches) == 5
    assert audit.counts[MismatchKind.UNAUDITED_ROW] == 1000
    assert audit.total == 1000
