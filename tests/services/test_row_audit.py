"""RowAudit (pure): the secret server's chain replayed against its rows, case by case.

The end-to-end attacks are in ``test_audit_against_rows``; these pin the replay's
rules where a real server would need precise timing: a read that raced a change
(accepted) against a rolled-back version served after the change was known
(reported), rewraps by a key's rotation, and a delete whose epoch list was cut.
"""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Iterator, Mapping

import trio

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

    def audit(
        self, rows: list[RowVersion], covered: int | None = None
    ) -> dict[tuple[str, str, int], int]:
        audit = RowAudit(covered=covered)
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


# -- the outside review's attacks (A4) ------------------------------------------------


def test_entries_no_trusted_checkpoint_signs_are_no_evidence() -> None:
    # F1: entry hashes use no key; anyone who can write the database appends a
    # 'secret_written' naming an old copy's tag, then puts that copy back.
    chain = Chain()
    chain.add("secret_created", "/p#1", tag=T1.hex())
    covered = chain.add("secret_written", "/p#1", tag=T2.hex())
    chain.add("secret_created", "/gone#1", tag=T3.hex())
    forged = chain.add("secret_written", "/p#1", tag=T1.hex())
    deleted = chain.add("secret_deleted", "/gone", epochs="1")
    found = chain.audit([row("/p", T1)], covered=covered + 1)
    assert found == {("unverifiable", "/p", 1): forged, ("unverifiable", "/gone", 1): deleted}
    # The copy the chain's signed part names is still a rollback, not unverifiable.
    assert kinds(chain.audit([row("/p", T2), row("/gone", T3)], covered=covered + 1)) == {
        ("rolled_back", "/p", 1),
        ("unaudited_row", "/gone", 1),  # there, though the chain says deleted
    }
    # A log a trusted checkpoint covers whole: the same rows match.
    assert chain.audit([row("/p", T1)], covered=deleted) == {}
    assert chain.audit([row("/p", T1)]) == {}  # covered=None: every entry trusted


def test_a_release_that_does_not_say_what_it_knew_gets_no_race_excuse() -> None:
    # F3: read_after 0 (a fresh server) or missing: the version a write replaced,
    # served after the write, is a rollback, not a read that raced the write.
    for read_after in ("0", None):
        chain = Chain()
        chain.add("secret_created", "/p#1", tag=T1.hex())
        chain.add("secret_written", "/p#1", tag=T2.hex())
        details = {"tag": T1.hex()} if read_after is None else {"tag": T1.hex(), "read_after": "0"}
        served = chain.add("secret_released", "/p#1", **details)
        assert chain.audit([row("/p", T2)]) == {("served_rollback", "/p", 1): served}
    # A read that said it knew only entry 1 did race the write at entry 2.
    chain = Chain()
    chain.add("secret_created", "/p#1", tag=T1.hex())
    chain.add("secret_written", "/p#1", tag=T2.hex())
    chain.release("/p#1", T1, read_after=1)
    assert chain.audit([row("/p", T2)]) == {}


def test_an_old_child_served_after_its_keys_rotation_is_a_rollback() -> None:
    # F2: a child's older copy (wrapped under the retired key epoch) served after the
    # rotation, then the evidence put back and wiped by a later write or rotation.
    for then in ("write", "rotate"):
        chain = Chain()
        chain.add("secret_created", "/k#1", tag=T1.hex())
        chain.add("secret_created", "/k/c#1", tag=T2.hex(), protector="/k")
        chain.add("secret_written", "/k/c#1", tag=T3.hex())
        rotated = chain.add("secret_rotated", "/k#2", tag=T4.hex(), retired_tag=T1.hex())
        served = chain.release("/k/c#1", T2, read_after=rotated)
        fresh = bytes([7]) * 16
        keys = [row("/k", T1, 1), row("/k", T4, 2)]
        if then == "write":
            chain.add("secret_written", "/k/c#1", tag=fresh.hex())
            child = row("/k/c", fresh, protector=("/k", 2))
        else:
            chain.add("secret_rotated", "/k#3", tag=bytes([6]).hex() * 16, retired_tag=T4.hex())
            keys = [row("/k", T1, 1), row("/k", T4, 2), row("/k", bytes([6]) * 16, 3)]
            child = row("/k/c", fresh, protector=("/k", 3))
        assert chain.audit([*keys, child]) == {("served_rollback", "/k/c", 1): served}, then


def test_a_release_names_the_protector_epoch_it_was_served_under() -> None:
    # F2: the server records the release's protector (NAME#EPOCH): a version wrapped
    # under a retired epoch is a rollback, whatever its tag.
    chain = Chain()
    chain.add("secret_created", "/k#1", tag=T1.hex())
    chain.add("secret_created", "/k/c#1", tag=T2.hex(), protector="/k")
    rotated = chain.add("secret_rotated", "/k#2", tag=T3.hex(), retired_tag=T4.hex())
    unknown = bytes([9]) * 16
    served = chain.add(
        "secret_released", "/k/c#1", tag=unknown.hex(), read_after=str(rotated), protector="/k#1"
    )
    keys = [row("/k", T4, 1), row("/k", T3, 2)]
    assert chain.audit([*keys, row("/k/c", unknown, protector=("/k", 2))]) == {
        ("served_rollback", "/k/c", 1): served
    }
    chain.entries.pop()
    chain.add(
        "secret_released", "/k/c#1", tag=unknown.hex(), read_after=str(rotated), protector="/k#2"
    )
    assert chain.audit([*keys, row("/k/c", unknown, protector=("/k", 2))]) == {}
    # A read that raced the rotation served the version it replaced, under /k#1.
    chain.entries.pop()
    chain.add(
        "secret_released", "/k/c#1", tag=T2.hex(), read_after=str(rotated - 1), protector="/k#1"
    )
    assert chain.audit([*keys, row("/k/c", unknown, protector=("/k", 2))]) == {}


async def test_crafted_entries_do_not_make_the_replay_run_for_hours() -> None:
    # F4: a create of /app/x#9999999999 then a delete whose epoch list was cut made
    # the replay count to ten billion; a key rotated many times with many children
    # made every lookup walk every rotation. Run where it can be stopped.
    code = textwrap.dedent(
        """
        from taonet.audit import AuditEntry, RowAudit, RowVersion
        a = RowAudit()
        def add(seq, kind, subject, **details):
            a.replay(AuditEntry(seq=seq, time_ns=seq, kind=kind, actor="x", subject=subject,
                                outcome="ok", details=details))
        add(1, "secret_created", "/app/x#9999999999", tag="00" * 16)
        add(2, "secret_deleted", "/app/x", epochs="1," * 500)
        seq = 3
        add(seq, "secret_created", "/k#1", tag="01" * 16)
        for i in range(3000):
            seq += 1
            add(seq, "secret_created", f"/k/{i}#1", tag=f"{i:032x}", protector="/k")
        for epoch in range(2, 3002):
            seq += 1
            add(seq, "secret_rotated", f"/k#{epoch}", tag="02" * 16, retired_tag="03" * 16)
        for i in range(3000):
            seq += 1
            add(seq, "secret_released", f"/k/{i}#1", tag=f"{i + 10**6:032x}",
                read_after=str(seq - 1))
        a.finish()
        print("done", a.total)
        """
    )
    with trio.fail_after(120):
        done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
    # /k's 3,001 epochs and its 3,000 children are not in the (empty) rows: each is
    # reported gone; /app/x was deleted.
    assert done.stdout.decode().split() == ["done", "6001"], done.stdout
