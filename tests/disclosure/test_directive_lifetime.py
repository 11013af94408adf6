"""A directive that ends too far from now is refused like one without end (review A5
F9): the 366 days ``taonet domain directive`` signs at most were nowhere on the
verifying side, so an end in 2262 passed where no end does not."""

from __future__ import annotations

import time

import pytest

from taonet import auth
from taonet.disclosure import (
    MAX_LIFETIME_NS,
    DirectiveError,
    DirectiveOp,
    DirectiveReason,
    sign_directive,
    verify_directive,
)
from taonet.protected import ObjectId
from taonet.testing import CertificateFactory

DAY = 86400 * 10**9
TO = auth.parse_prin("key([0a0b]).Program([0c0d])")


def signed(factory: CertificateFactory, not_after: int) -> bytes:
    return sign_directive(
        factory.signer,
        op=DirectiveOp.READ,
        delegate=TO,
        object_id=ObjectId("/app/key", 1),
        not_before=None,
        not_after=not_after,
    )


@pytest.mark.parametrize(
    ("end", "refused"),
    [
        (2**63 - 1, True),  # 2262
        (368 * DAY, True),
        (MAX_LIFETIME_NS + 1, True),
        (MAX_LIFETIME_NS, False),
        (366 * DAY, False),
        (30 * DAY, False),
    ],
)
def test_an_end_too_far_from_now_is_refused(end: int, refused: bool) -> None:
    now = time.time_ns()
    factory = CertificateFactory.generate(now_ns=now)
    raw = signed(factory, end if end > 2**62 else now + end)
    if not refused:
        assert verify_directive(raw, policy=factory.anchor, now_ns=now).by_policy
        return
    with pytest.raises(DirectiveError, match="refused like one without end") as caught:
        verify_directive(raw, policy=factory.anchor, now_ns=now)
    assert caught.value.reason is DirectiveReason.UNBOUNDED
    # The caller may say otherwise, explicitly.
    got = verify_directive(raw, policy=factory.anchor, now_ns=now, max_lifetime_ns=None)
    assert got.not_after == (end if end > 2**62 else now + end)
    assert verify_directive(raw, policy=factory.anchor, now_ns=now, max_lifetime_ns=2**63)


def test_the_bound_is_from_the_verifiers_now() -> None:
    """The bound counts from the verifier's now: a directive of 366 days is too long
    for a verifier whose clock is 30 days behind, and taken at the signer's time."""
    now = time.time_ns()
    factory = CertificateFactory.generate(now_ns=now - 40 * DAY)
    raw = signed(factory, now + 366 * DAY)
    with pytest.raises(DirectiveError):
        verify_directive(raw, policy=factory.anchor, now_ns=now - 30 * DAY)
    assert verify_directive(raw, policy=factory.anchor, now_ns=now)
