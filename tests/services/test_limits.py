"""The refusal limiter: token buckets per client and in all, a bounded table, summaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taonet_services.domain_service._limits import (
    OVERFLOW_CLIENT,
    RefusalLimiter,
    RefusalLimits,
    client_key,
)


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**limits: float) -> tuple[RefusalLimiter, Clock]:
    clock = Clock()
    return RefusalLimiter(RefusalLimits(**limits), clock=clock), clock  # type: ignore[arg-type]


def test_a_client_gets_its_burst_then_one_refusal_per_refill() -> None:
    lim, clock = limiter(client_burst=3, client_rate=0.5)
    assert [lim.refused("10.0.0.1", "invalid_attestation") for _ in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    clock.now += 1.9  # not quite one token (0.5 per second)
    assert not lim.refused("10.0.0.1", "invalid_attestation")
    clock.now += 2.0
    assert lim.refused("10.0.0.1", "invalid_attestation")
    assert not lim.refused("10.0.0.1", "invalid_attestation")
    # Another client is not affected.
    assert lim.refused("10.0.0.2", "unauthorized")


def test_a_client_without_refusals_is_not_admitted_until_it_refills() -> None:
    lim, clock = limiter(client_burst=2, client_rate=0.1)
    assert lim.admit("10.0.0.1", code="rate_limited")  # unknown clients always are
    assert len(lim) == 0  # ... and are not entered in the table
    lim.refused("10.0.0.1", "invalid_attestation")
    assert lim.admit("10.0.0.1", code="rate_limited")
    lim.refused("10.0.0.1", "invalid_attestation")
    assert not lim.admit("10.0.0.1", code="rate_limited")
    assert not lim.admit("10.0.0.1", code="rate_limited")
    clock.now += 10.0
    assert lim.admit("10.0.0.1", code="rate_limited")
    (summary,) = lim.summaries(all_now=True)
    assert summary.client == "10.0.0.1"
    assert summary.codes == {"rate_limited": 2}


def test_the_total_bucket_bounds_many_clients() -> None:
    lim, clock = limiter(client_burst=5, total_burst=20, total_rate=1.0)
    full = sum(lim.refused(f"10.0.{i // 250}.{i % 250}", "x") for i in range(1000))
    assert full == 20
    clock.now += 3.0
    full = sum(lim.refused(f"10.1.{i // 250}.{i % 250}", "x") for i in range(1000))
    assert full == 3


def test_the_client_table_is_bounded_and_evicted_counts_are_kept() -> None:
    lim, _ = limiter(client_burst=1, max_clients=8, max_summaries=100)
    for i in range(100):
        lim.refused(f"10.0.0.{i}", "invalid_attestation")
        lim.refused(f"10.0.0.{i}", "invalid_attestation")  # the second one is counted
        assert len(lim) <= 8
    summaries = lim.summaries(all_now=True)
    assert sum(s.count for s in summaries) == 100
    overflow = [s for s in summaries if s.client == OVERFLOW_CLIENT]
    assert [s.count for s in overflow] == [92]
    assert len(summaries) == 9


def test_summaries_come_once_per_interval_and_are_capped() -> None:
    lim, clock = limiter(client_burst=1, summary_interval=60.0, max_summaries=3)
    for i in range(10):
        for _ in range(i + 2):
            lim.refused(f"10.0.0.{i}", "unauthorized")
    assert lim.summaries() == []  # the interval has not passed
    clock.now += 60.0
    summaries = lim.summaries()
    # The three busiest clients get a row each, the other seven one row together.
    assert [(s.client, s.count) for s in summaries] == [
        ("10.0.0.9", 10),
        ("10.0.0.8", 9),
        ("10.0.0.7", 8),
        (OVERFLOW_CLIENT, sum(range(1, 8))),
    ]
    assert lim.summaries() == []
    clock.now += 60.0
    assert lim.summaries() == []  # nothing pending
    assert lim.refused("10.0.0.9", "unauthorized")  # its bucket refilled meanwhile
    assert not lim.refused("10.0.0.9", "unauthorized")
    (summary,) = lim.summaries(all_now=True)
    assert (summary.client, summary.count, summary.first, summary.last) == (
        "10.0.0.9",
        1,
        clock.now,
        clock.now,
    )


def test_quiet_clients_leave_the_table() -> None:
    lim, clock = limiter(client_burst=2, client_rate=1.0)
    lim.refused("10.0.0.1", "x")
    lim.refused("10.0.0.2", "x")
    lim.refused("10.0.0.2", "x")
    lim.refused("10.0.0.2", "x")  # pending
    clock.now += 0.5
    lim.summaries(all_now=True)
    assert len(lim) == 2  # neither bucket is full yet
    clock.now += 5.0
    lim.summaries(all_now=True)
    assert len(lim) == 0


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("?", "?"),
        ("x" * 500, "x" * 64),
    ],
)
def test_client_keys(host: str, key: str) -> None:
    assert client_key(host) == key


@pytest.mark.parametrize(
    "bad",
    [
        {"client_burst": 0},
        {"client_rate": 0.0},
        {"total_rate": float("inf")},
        {"max_clients": -1},
        {"summary_interval": float("nan")},
    ],
)
def test_limits_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        RefusalLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RefusalLimits(client_burst=2.5)  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.floats(0, 30), st.booleans()),
        max_size=300,
    ),
    st.sampled_from([6, 21]),
)
def test_nothing_is_lost_and_the_rates_hold(
    events: list[tuple[int, float, bool]], max_clients: int
) -> None:
    limits = RefusalLimits(
        client_burst=3,
        client_rate=0.5,
        total_burst=10,
        total_rate=1.0,
        max_clients=max_clients,
        summary_interval=20.0,
        max_summaries=2,
    )
    clock = Clock()
    lim = RefusalLimiter(limits, clock=clock)
    start = clock.now
    full = counted = 0
    full_by_client: dict[str, int] = {}
    for client_number, advance, ask_first in events:
        clock.now += advance
        client = f"10.0.0.{client_number}"
        if ask_first and not lim.admit(client, code="rate_limited"):
            continue
        if lim.refused(client, "invalid_attestation"):
            full += 1
            full_by_client[client] = full_by_client.get(client, 0) + 1
        assert len(lim) <= limits.max_clients
        for summary in lim.summaries():
            counted += summary.count
        assert len(lim.summaries()) == 0
    counted += sum(s.count for s in lim.summaries(all_now=True))
    elapsed = clock.now - start
    refusals = len(events)
    assert full + counted == refusals
    assert full <= limits.total_burst + limits.total_rate * elapsed + 1e-9
    if max_clients == 21:  # every client fits: no eviction hands out a fresh bucket
        for n in full_by_client.values():
            assert n <= limits.client_burst + limits.client_rate * elapsed + 1e-9
