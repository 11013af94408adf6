"""What a load test may be told: loopback addresses only, bounds, the open model's
schedule, the secret target's mix. Pure: no process, no socket."""

from __future__ import annotations

import pytest

from taonet import ConfigError
from taonet.loadtest import LoadConfig, intended_time, loopback_address, offered_between
from taonet.loadtest._secret import weighted_cycle


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1:80", "192.168.1.1:443", "172.16.0.1:80", "8.8.8.8:53", "0.0.0.0:80",
        "[::]:80", "[::ffff:127.0.0.1]:80", "[fe80::1]:80", "example.com:80",
        "127.0.0.1.nip.io:80", "localhost.evil:80", "127.0.0.1", "127.0.0.1:0",
        "127.0.0.1:70000", ":80",
    ],
)  # fmt: skip
def test_non_loopback_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError):
        loopback_address(address)


def test_loopback_addresses_are_accepted() -> None:
    assert loopback_address("127.0.0.1:8124") == ("127.0.0.1", 8124)
    assert loopback_address("127.9.9.9:1") == ("127.9.9.9", 1)
    assert loopback_address("localhost:80") == ("127.0.0.1", 80)
    assert loopback_address("[::1]:80") == ("::1", 80)


def test_a_config_cannot_name_a_non_loopback_server_nor_exceed_its_bounds() -> None:
    with pytest.raises(ConfigError, match="not a loopback"):
        LoadConfig(connect=("10.0.0.1", 80), tls=False)
    with pytest.raises(ConfigError, match="clients"):
        LoadConfig(clients=100_000)
    with pytest.raises(ConfigError, match="rate"):
        LoadConfig(rate=1e9)
    with pytest.raises(ConfigError, match="exceed"):
        LoadConfig(duration=1e6)
    # An interval of a nanosecond made a timeline line and a histogram per worker for
    # every one of them (0.7 GB for a 3 s run); ramp-up past the run's end never ends.
    with pytest.raises(ConfigError, match="interval"):
        LoadConfig(interval=1e-9)
    with pytest.raises(ConfigError, match="interval"):
        LoadConfig(interval=100.0, duration=10.0, warmup=1.0)
    with pytest.raises(ConfigError, match="ramp-up"):
        LoadConfig(ramp_up=1e9)
    assert LoadConfig(interval=0.1, ramp_up=11.0, duration=10.0, warmup=1.0).interval == 0.1


@pytest.mark.parametrize("ramp_up", [0.0, 2.0])
def test_the_schedule_offers_the_rate_and_ramps_linearly(ramp_up: float) -> None:
    rate = 100.0
    times = [intended_time(n, rate, ramp_up) for n in range(1000)]
    assert times == sorted(times)
    assert times[0] == 0.0
    # The sends due before t are what offered_between counts.
    for t in (0.5, 1.0, 3.0, 7.5):
        due = sum(1 for x in times if x < t)
        assert abs(due - offered_between(0, t, rate, ramp_up)) <= 1
    if ramp_up:
        assert offered_between(0, ramp_up, rate, ramp_up) == pytest.approx(rate * ramp_up / 2)


def test_the_handshake_target_runs_its_own_server_only() -> None:
    with pytest.raises(ConfigError, match="no --connect"):
        LoadConfig(target="handshake", connect=("127.0.0.1", 80), tls=False)


def test_the_mix_is_a_weighted_cycle() -> None:
    cycle = weighted_cycle((("read", 90), ("write", 5), ("list", 4), ("rotate", 1)))
    assert len(cycle) == 100
    assert {op: cycle.count(op) for op in set(cycle)} == {
        "read": 90, "write": 5, "list": 4, "rotate": 1,
    }  # fmt: skip
    # Interleaved, not in runs: no ten writes in a row, reads spread over the cycle.
    assert cycle[:3] == ["read", "read", "read"]
    assert max(i for i, op in enumerate(cycle) if op == "write") > 50
    assert weighted_cycle((("read", 2), ("write", 2), ("list", 0))) == ["read", "write"]


@pytest.mark.parametrize(
    "mix",
    [(("read", -1),), (("delete", 1),), (("read", 0), ("write", 0))],
)
def test_a_mix_must_weigh_known_operations(mix: tuple[tuple[str, int], ...]) -> None:
    with pytest.raises(ConfigError, match="mix"):
        LoadConfig(target="secret", mix=mix)


def test_a_state_directory_is_not_silently_ignored_on_postgres() -> None:
    """On PostgreSQL the run keeps nothing in a state directory: one given is refused,
    not ignored (the operator would look for a state that was never written)."""
    with pytest.raises(ConfigError, match="--state-dir"):
        LoadConfig(target="secret", postgres="postgresql://u@127.0.0.1/db", state_dir="/tmp/x")
