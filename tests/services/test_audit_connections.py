"""Every SQLite connection to the audit log is closed, on the error paths too.

Python 3.13 reports a connection left to the garbage collector as a ResourceWarning
(an error here: warnings are errors), but only when and where the collector runs, and
3.11 and 3.12 say nothing. So these tests count, through /proc/self/fd, the files of
the audit log this process still holds at the moment the code under test returns or
raises: the same answer on every interpreter, and pinned to the path that leaked.
"""

from __future__ import annotations

import functools
import gc
import os
import sqlite3
import warnings
from pathlib import Path

import pytest
import trio

from taonet import ConfigError
from taonet.cli import main
from taonet_services.domain_service import AUDIT_FILE, AuditLog, DomainService
from tests.cli.cli_helpers import password_file
from tests.conftest import PASSWORD, MakeDomain


def held(path: Path) -> int:
    """How many descriptors of this process are open on ``path`` or its -wal/-shm files."""
    target = str(path.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, now closed
            continue
        if name in (target, target + "-wal", target + "-shm"):
            count += 1
    return count


def test_the_service_holds_the_log_until_closed(make_domain: MakeDomain) -> None:
    domain = make_domain()
    audit = domain.path / AUDIT_FILE
    service = DomainService.open(domain.path, PASSWORD)
    assert held(audit) > 0  # what the other tests count is really there while open
    service.close()
    assert held(audit) == 0
    service.close()  # twice is fine


async def test_a_closed_service_refuses_to_use_its_log(make_domain: MakeDomain) -> None:
    domain = make_domain()
    with DomainService.open(domain.path, PASSWORD) as service:
        await service.current_crl()
    assert held(domain.path / AUDIT_FILE) == 0
    with pytest.raises(ConfigError, match="closed"):
        await service.current_crl()


async def test_serving_then_stopping_leaves_nothing_open(make_domain: MakeDomain) -> None:
    domain = make_domain()
    with trio.fail_after(30), DomainService.open(domain.path, PASSWORD) as service:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(service.serve, 0))
            nursery.cancel_scope.cancel()
    assert held(domain.path / AUDIT_FILE) == 0


def test_open_closes_the_log_when_the_service_cannot_be_built(make_domain: MakeDomain) -> None:
    # The audit log is opened before the service is built; a failure building it
    # (here the caller's clock) used to leave the connection to the collector.
    domain = make_domain()

    def broken_clock() -> float:
        raise RuntimeError("clock unavailable")

    with pytest.raises(RuntimeError, match="clock unavailable") as caught:
        DomainService.open(domain.path, PASSWORD, monotonic=broken_clock)
    # The traceback keeps open()'s frame, and with it any connection it did not close.
    assert caught.traceback
    assert held(domain.path / AUDIT_FILE) == 0


def test_a_service_left_to_the_collector_is_reported_on_every_python(
    make_domain: MakeDomain,
) -> None:
    # What the tests above check by hand, warnings-as-errors checks everywhere else:
    # a log nobody closed warns when collected, on 3.11 and 3.12 too (where sqlite3
    # itself says nothing), so a test that forgets close() fails where it forgot it.
    domain = make_domain()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        service = DomainService.open(domain.path, PASSWORD)
        del service
        gc.collect()
    said = [(w.category, str(w.message)) for w in caught]
    del caught  # 3.13's own warning holds the connection it names as its source
    gc.collect()
    assert (ResourceWarning, f"unclosed audit log {domain.path / AUDIT_FILE}") in said, said
    assert held(domain.path / AUDIT_FILE) == 0


def test_open_closes_a_file_that_is_not_an_audit_log(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(ConfigError, match="not a taonet audit log"):
        AuditLog.open(other)
    assert held(other) == 0


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("domain", "audit"), id="audit"),
        pytest.param(("domain", "revoke", "12345", "--reason", "test"), id="revoke-unknown"),
        pytest.param(("domain", "crl"), id="crl"),
    ],
)
def test_cli_commands_close_the_log_on_success_and_on_error(
    make_domain: MakeDomain,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: tuple[str, ...],
) -> None:
    domain = make_domain()
    AuditLog.open(domain.path / AUDIT_FILE).close()  # as after a domain service has run
    pw = str(password_file(tmp_path, PASSWORD.decode()))
    args = [*command, "--domain", str(domain.path)]
    if command[1] != "audit":
        args += ["--password-file", pw]
    code = main(args)
    out, err = capsys.readouterr()
    if command[1] == "revoke":
        assert code != 0, out  # no certificate with that serial: an error path
        assert "12345" in err
    else:
        assert code == 0, err
    assert held(domain.path / AUDIT_FILE) == 0
