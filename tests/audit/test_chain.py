"""taonet.audit: the chain's encoding, hashing, checkpoints, and every tampering verify catches."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet import AuthenticationError, TaoError
from taonet.audit import (
    GENESIS,
    MAX_ACTOR_CHARS,
    MAX_DETAILS,
    AuditEntry,
    AuditError,
    AuditReason,
    Checkpoint,
    bounded,
    encode_entry,
    sign_checkpoint,
    verify_chain,
)
from taonet.crypto import Signer

SIGNER = Signer.generate()
OTHER = Signer.generate()


def chain(n: int, *, start_ns: int = 1_000) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        entry = AuditEntry(
            seq=seq,
            time_ns=start_ns + seq,
            kind="secret_read",
            actor=f"key([{seq:02x}])",
            subject=f"/acme/key{seq}",
            outcome="ok",
            details={"epoch": str(seq), "note": "x" * seq},
            prev_hash=prev,
        )
        entry = attrs.evolve(entry, recorded_hash=entry.hash)
        entries.append(entry)
        prev = entry.hash
    return entries


def checkpoint(entries: list[AuditEntry], seq: int, signer: Signer = SIGNER) -> Checkpoint:
    return sign_checkpoint(signer, seq=seq, head_hash=entries[seq - 1].hash, time_ns=5)


def test_hash_is_sha256_of_prev_and_encoding() -> None:
    entry = chain(1)[0]
    assert entry.hash == hashlib.sha256(GENESIS + encode_entry(entry)).digest()
    # Golden: the encoding is length-prefixed and starts with its tag and version.
    assert encode_entry(entry).startswith(b"taonet audit entry v1\x00" + (1).to_bytes(8, "big"))


def test_a_good_chain_verifies() -> None:
    entries = chain(10)
    cps = [checkpoint(entries, 5), checkpoint(entries, 10)]
    summary = verify_chain(entries, cps, [SIGNER.verifier()])
    assert (summary.entries, summary.checkpoints, summary.head_seq) == (10, 2, 10)
    assert summary.head_hash == entries[-1].hash
    assert summary.last_checkpoint_seq == 10
    assert summary.trusted
    assert verify_chain([], [], [SIGNER.verifier()]).head_hash == GENESIS
    assert not verify_chain(entries, cps).trusted


def _expect(reason: AuditReason, seq: int, fn: Callable[[], object]) -> AuditError:
    with pytest.raises(AuditError) as info:
        fn()
    assert info.value.reason is reason, info.value
    assert info.value.seq == seq, info.value
    assert f"{seq}" in str(info.value)
    return info.value


@pytest.mark.parametrize(
    "change",
    [
        {"details": {"epoch": "3", "note": "changed"}},
        {"outcome": "refused"},
        {"time_ns": 1},
        {"actor": "key([ff])"},
        {"kind": "secret_write"},
    ],
)
def test_an_edited_field_is_caught(change: dict[str, object]) -> None:
    entries = chain(6)
    entries[2] = attrs.evolve(entries[2], **change)  # type: ignore[arg-type]
    _expect(AuditReason.EDITED, 3, lambda: verify_chain(entries, []))


def test_an_edit_with_recomputed_hashes_is_caught_by_the_checkpoint() -> None:
    entries = chain(6)
    cps = [checkpoint(entries, 6)]
    # The editor rewrites entry 3 and every hash and link after it.
    forged: list[AuditEntry] = entries[:2]
    prev = entries[1].hash
    for entry in entries[2:]:
        changed = attrs.evolve(entry, prev_hash=prev, outcome="refused" if entry.seq == 3 else "ok")
        changed = attrs.evolve(changed, recorded_hash=changed.hash)
        forged.append(changed)
        prev = changed.hash
    verify_chain(forged, [])  # without a checkpoint nothing shows
    _expect(AuditReason.CHECKPOINT_MISMATCH, 6, lambda: verify_chain(forged, cps))


def test_an_edit_with_its_own_hash_recomputed_breaks_the_next_link() -> None:
    entries = chain(6)
    edited = attrs.evolve(entries[2], outcome="refused")
    entries[2] = attrs.evolve(edited, recorded_hash=edited.hash)
    _expect(AuditReason.REMOVED, 4, lambda: verify_chain(entries, []))


def test_a_removed_entry_is_caught() -> None:
    entries = chain(6)
    del entries[3]
    err = _expect(AuditReason.REMOVED, 4, lambda: verify_chain(entries, []))
    assert "removed" in str(err)


def test_a_removed_and_renumbered_entry_is_caught() -> None:
    entries = chain(6)
    del entries[3]
    entries[3:] = [attrs.evolve(e, seq=e.seq - 1) for e in entries[3:]]
    with pytest.raises(AuditError) as info:
        verify_chain(entries, [])
    assert info.value.seq == 4


def test_swapped_entries_are_caught_as_reordered() -> None:
    entries = chain(6)
    # The rows of entries 3 and 4 trade sequence numbers.
    third, fourth = entries[2], entries[3]
    entries[2] = attrs.evolve(fourth, seq=3)
    entries[3] = attrs.evolve(third, seq=4)
    err = _expect(AuditReason.REORDERED, 3, lambda: verify_chain(entries, []))
    assert "moved" in str(err)


def test_out_of_order_rows_are_caught() -> None:
    entries = chain(4)
    entries[1], entries[2] = entries[2], entries[1]
    with pytest.raises(AuditError) as info:
        verify_chain(entries, [])
    assert info.value.reason in (AuditReason.REMOVED, AuditReason.REORDERED)


def test_truncation_before_a_checkpoint_is_caught() -> None:
    entries = chain(8)
    cps = [checkpoint(entries, 8)]
    err = _expect(AuditReason.TRUNCATED, 7, lambda: verify_chain(entries[:6], cps))
    assert "7 to 8" in str(err)


def test_truncation_after_the_last_checkpoint_cannot_be_seen() -> None:
    # What the chain cannot prove: a cut after the last checkpoint looks like a log that
    # stopped there. The summary says how far the signatures reach.
    entries = chain(8)
    summary = verify_chain(entries[:6], [checkpoint(entries, 5)], [SIGNER.verifier()])
    assert summary.head_seq == 6
    assert summary.last_checkpoint_seq == 5


def test_a_checkpoint_by_another_key_is_refused() -> None:
    entries = chain(4)
    forged = checkpoint(entries, 4, OTHER)
    err = _expect(
        AuditReason.UNTRUSTED_SIGNER,
        4,
        lambda: verify_chain(entries, [forged], [SIGNER.verifier()]),
    )
    assert isinstance(err, AuthenticationError)
    assert isinstance(err, TaoError)


def test_a_checkpoint_naming_the_trusted_key_but_signed_by_another_is_refused() -> None:
    entries = chain(4)
    honest = checkpoint(entries, 4)
    forged = checkpoint(entries, 4, OTHER)
    lying = attrs.evolve(forged, signer=honest.signer, signer_key=honest.signer_key)
    _expect(
        AuditReason.CHECKPOINT_SIGNATURE,
        4,
        lambda: verify_chain(entries, [lying], [SIGNER.verifier()]),
    )
    moved = attrs.evolve(honest, seq=3, head_hash=entries[2].hash)
    _expect(
        AuditReason.CHECKPOINT_SIGNATURE,
        3,
        lambda: verify_chain(entries, [moved], [SIGNER.verifier()]),
    )


def test_fields_are_bounded() -> None:
    entry = chain(1)[0]
    with pytest.raises(ValueError, match="actor"):
        attrs.evolve(entry, actor="a" * (MAX_ACTOR_CHARS + 1))
    with pytest.raises(ValueError, match="details"):
        attrs.evolve(entry, details={f"k{i}": "v" for i in range(MAX_DETAILS + 1)})
    with pytest.raises(ValueError, match="kind"):
        attrs.evolve(entry, kind="Not A Word")
    with pytest.raises(ValueError, match="UTF-8"):
        attrs.evolve(entry, subject="\udc80")
    with pytest.raises(ValueError, match="seq"):
        attrs.evolve(entry, seq=0)
    long = "p" * 100_000
    cut = bounded(long)
    assert len(cut) == MAX_ACTOR_CHARS
    assert hashlib.sha256(long.encode()).hexdigest() in cut


texts = st.text(max_size=40)


@given(
    a=st.tuples(
        texts,
        texts,
        st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), texts, max_size=4),
    ),
    b=st.tuples(
        texts,
        texts,
        st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), texts, max_size=4),
    ),
)
def test_different_entries_encode_differently(
    a: tuple[str, str, dict[str, str]], b: tuple[str, str, dict[str, str]]
) -> None:
    def make(fields: tuple[str, str, dict[str, str]]) -> AuditEntry:
        return AuditEntry(
            seq=1,
            time_ns=0,
            kind="k",
            actor=fields[0],
            subject=fields[1],
            outcome="ok",
            details=fields[2],
        )

    assert (encode_entry(make(a)) == encode_entry(make(b))) == (a == b)


def test_a_removed_checkpoint_that_later_entries_name_is_caught() -> None:
    entries = chain(3)
    cp3 = checkpoint(entries, 3)
    # Entries 4 and 5 are written after checkpoint 3, and name it.
    prev = entries[-1].hash
    for seq in (4, 5):
        entry = AuditEntry(
            seq=seq,
            time_ns=9,
            kind="k",
            actor="a",
            subject="s",
            outcome="ok",
            prev_hash=prev,
            checkpoint_seq=3,
        )
        entries.append(attrs.evolve(entry, recorded_hash=entry.hash))
        prev = entry.hash
    assert verify_chain(entries, [cp3], [SIGNER.verifier()]).head_seq == 5
    err = _expect(AuditReason.CHECKPOINT_REMOVED, 4, lambda: verify_chain(entries, []))
    assert "checkpoint 3" in str(err)
    with pytest.raises(ValueError, match="checkpoint_seq"):
        AuditEntry(
            seq=1, time_ns=0, kind="k", actor="", subject="", outcome="ok", checkpoint_seq=-1
        )
    bad = attrs.evolve(entries[3], checkpoint_seq=4)
    _expect(AuditReason.EDITED, 4, lambda: verify_chain([*entries[:3], bad], [cp3]))
