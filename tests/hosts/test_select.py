"""Which hosted programs a selector names (taonet.hosts.linux._select): a table."""

from __future__ import annotations

import attrs
import pytest

from taonet import HostError, auth
from taonet.hosts.linux._select import (
    AmbiguousSelectorError,
    ProgramNotFoundError,
    program_file,
    select_programs,
)

SERVER = auth.parse_prin("key([0a]).Program([01])")
CLIENT = auth.parse_prin("key([0a]).Program([02])")


@attrs.frozen
class P:
    label: str
    pid: int
    id: str
    path: str
    name: auth.Prin


PROGRAMS = (
    P("a", 4242, "3f2a9c01" + "0" * 24, "/srv/one/server.py", SERVER),
    P("b", 4243, "3f2b0000" + "1" * 24, "/srv/two/server.py", SERVER),
    P("c", 77, "abcd" + "2" * 28, "/srv/client.py", CLIENT),
    # A pid that is also the start of another program's id.
    P("d", 1234, "9999" + "3" * 28, "/srv/1234", CLIENT),
    P("e", 5555, "1234" + "4" * 28, "/srv/tool", CLIENT),
    # A file named as another program's pid.
    P("f", 6, "5678" + "5" * 28, "/srv/4243", CLIENT),
)


def select(selector: str) -> list[str]:
    found = select_programs(
        selector,
        PROGRAMS,
        pid=lambda p: p.pid,
        program_id=lambda p: p.id,
        path=lambda p: p.path,
        names=lambda p: (p.name,),
        describe=lambda p: f"{p.label}:{p.pid}",
    )
    return [p.label for p in found]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("4242", ["a"]),
        ("pid:4242", ["a"]),
        ("3f2a", ["a"]),
        ("3F2A9C01", ["a"]),
        ("id:3f2b", ["b"]),
        ("3f2a9c01" + "0" * 24, ["a"]),
        ("/srv/one/server.py", ["a"]),
        ("client.py", ["c"]),
        ("file:client.py", ["c"]),
        ("abcd", ["c"]),
        ("tool", ["e"]),
        ("pid:1234", ["d"]),
        # An exact match (pid, file, whole id) wins over an id prefix: a pid always
        # selects its program, as before ids, though "1234" also begins e's id.
        ("1234", ["d"]),
        ("1234" + "4" * 28, ["e"]),
        ("5678", ["f"]),
        ("id:1234", ["e"]),
        ("file:1234", ["d"]),
        # A principal names every instance of its program.
        (str(SERVER), ["a", "b"]),
        ("key([0a]).Program([02])", ["c", "d", "e", "f"]),
    ],
)
def test_selects(selector: str, expected: list[str]) -> None:
    assert select(selector) == expected


@pytest.mark.parametrize(
    ("selector", "candidates"),
    [
        ("server.py", ["a:4242", "b:4243"]),  # two programs with one file name
        ("3f2", None),  # too short for a prefix: nothing
        ("3f2a9c01" + "0" * 25, None),
        ("id:3f2", None),  # explicit or not, an id prefix has four digits at least
        ("4243", ["b:4243", "f:6"]),  # one program's pid, another's file name
        ("nothing.py", None),
        ("pid:x", None),
        ("key([0b]).Program([01])", None),
    ],
)
def test_refuses(selector: str, candidates: list[str] | None) -> None:
    if candidates is None:
        with pytest.raises(ProgramNotFoundError, match="no hosted program"):
            select(selector)
        return
    with pytest.raises(AmbiguousSelectorError) as caught:
        select(selector)
    for candidate in candidates:
        assert candidate in str(caught.value)
    assert "names 2 programs" in str(caught.value)
    labels = [p.label for p in caught.value.candidates]  # type: ignore[attr-defined]
    assert labels == [c[0] for c in candidates]


def test_errors_are_host_errors_and_bounded() -> None:
    with pytest.raises(HostError, match="give what follows id:"):
        select("id:")
    with pytest.raises(ProgramNotFoundError) as caught:
        select("x" * 10_000)
    assert len(str(caught.value)) < 200


def test_many_candidates_are_listed_up_to_ten() -> None:
    many = [P(str(i), 100 + i, f"{i:032x}", "/x/same", SERVER) for i in range(25)]
    with pytest.raises(AmbiguousSelectorError) as caught:
        select_programs(
            "same", many, pid=lambda p: p.pid, program_id=lambda p: p.id, path=lambda p: p.path,
            names=lambda p: (p.name,), describe=lambda p: f"<{p.label}>",
        )  # fmt: skip
    text = str(caught.value)
    assert "names 25 programs" in text
    assert text.count("<") == 10
    assert "and 15 more" in text


def test_program_file() -> None:
    assert program_file("/srv/one/server.py") == "server.py"
    assert program_file("/srv/hosted_service/") == "hosted_service"
    assert program_file("/") == "/"
