"""README.md, followed in order, works: its blocks are copied out of it and run.

Everything from ``## A short tour`` to the end of README.md is run as a reader would
follow it: one bash session (``set -e``) in a new directory that holds only a copy of
the repository's ``examples/`` (what the tour runs, as a reader has it in a clone), with
this repository's virtual environment first on ``PATH`` and ``HOME`` in the temporary
directory.

* ```` ```sh ```` (or ``bash``) blocks run as written;
* ```` ```console ```` blocks are commands (``$ `` lines, continued on the next line
  after a ``\\``) and the output they print (standard output and error together).
  The output must match: ``...`` stands for any text within a line, and a line of
  just ``...`` for any lines. The commands may fail (Troubleshooting shows failures);
  the output decides;
* ```` ```python ```` blocks under ``<!-- readme-test: file PATH -->`` show a file of
  the repository whole (the text before the block names it, and it must be byte for
  byte that file): the reader has it from the start, so the session does too, written
  from the README before the first command; other python blocks are run in place;
* ```` ```text ````, ``toml`` and ``json`` blocks are not run. A block of any other
  kind, or none, is an error: whoever adds a block says whether it runs.

Other markers, an HTML comment on the line before a block: ``<!-- readme-test: skip
(why) -->`` (not run: e.g. ``make demo``, which the test environment stands for) and
``<!-- readme-test: as-user nobody -->`` (a console block run as uid 65534, with an
interpreter that user can run; as root only).

Each ``127.0.0.1:PORT`` in a run block becomes a free port of this machine (the same
one wherever the README names that port). Whatever the session left running is
stopped at the end, also when it fails: its process group, every Linux host under the
directory (``taonet host stop``), then any process whose working directory or command
line is in the directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio

import taonet

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent
TOUR = "## A short tour"
#: What the session starts with from the repository, as a reader has it in a clone (the
#: programs a new section of the README runs, without showing every file whole).
REPO_FILES = ("examples",)
#: The whole session, and each cleanup step, are bounded by these.
SESSION_TIMEOUT = 240.0
CLEANUP_TIMEOUT = 60.0
NOBODY = 65534

#: In the session: say which README line failed, and the command.
_ON_ERROR = "trap 'echo \"README.md:$((LINENO + __readme_base)): failed: $BASH_COMMAND\" >&2' ERR"
RUN_LANGS = frozenset({"sh", "bash"})
QUIET_LANGS = frozenset({"text", "toml", "json"})
LANGS = RUN_LANGS | QUIET_LANGS | {"console", "python"}
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->$")
_FENCE = re.compile(r"^```(.*)$")
_ADDRESS = re.compile(r"127\.0\.0\.1:(\d{2,5})\b")


class ReadmeError(Exception):
    """README.md (or a text like it) is malformed or did not run as it says."""


@attrs.frozen
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directive: str  # "" when none
    prose: str  # the text between the previous block and this one

    @property
    def file(self) -> str | None:
        if self.directive.startswith("file "):
            return self.directive.removeprefix("file ").strip()
        return None


@attrs.frozen
class Command:
    line: int
    command: str
    expected: tuple[str, ...]
    as_nobody: bool


def extract(markdown: str, *, start: str = TOUR) -> list[Block]:
    """The fenced blocks from the ``start`` heading on; ReadmeError if malformed."""
    lines = markdown.splitlines()
    try:
        first = lines.index(start)
    except ValueError:
        raise ReadmeError(f"no {start!r} heading") from None
    blocks: list[Block] = []
    prose: list[str] = []
    i = first
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            prose.append(lines[i])
            i += 1
            continue
        lang = fence.group(1).strip()
        if lang not in LANGS:
            raise ReadmeError(
                f"README.md:{i + 1}: a block of kind {lang or '(none)'!r}: use one of "
                f"{', '.join(sorted(LANGS))} (text, toml and json are not run)"
            )
        directive = ""
        if i > 0 and (marker := _DIRECTIVE.match(lines[i - 1].strip())):
            directive = marker.group(1)
            prose.pop()
        end = i + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        if end == len(lines):
            raise ReadmeError(f"README.md:{i + 1}: the block is never closed")
        body = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(i + 1, lang, body, directive, "\n".join(prose)))
        prose = []
        i = end + 1
    for block in blocks:
        _check_directive(block)
    return blocks


def _check_directive(block: Block) -> None:
    d = block.directive
    where = f"README.md:{block.line}"
    if not d or d.startswith("skip"):
        return
    if block.file is not None:
        if block.lang != "python":
            raise ReadmeError(f"{where}: 'file' is for python blocks")
        if f"`{block.file}`" not in block.prose:
            raise ReadmeError(f"{where}: the text before the block does not name {block.file}")
        return
    if d == "as-user nobody":
        if block.lang != "console":
            raise ReadmeError(f"{where}: 'as-user' is for console blocks")
        return
    raise ReadmeError(f"{where}: unknown marker {d!r}")


def console_commands(block: Block) -> list[Command]:
    """The ``$ `` commands of a console block, each with the output it shows."""
    commands: list[Command] = []
    command: str | None = None
    expected: list[str] = []
    line = block.line
    for offset, text in enumerate(block.text.splitlines(), start=1):
        if command is not None and not expected and command.endswith("\\"):
            command += "\n" + text  # a command continued on the next line
        elif text.startswith("$ "):
            if command is not None:
                commands.append(Command(line, command, tuple(expected), _nobody(block)))
            command, expected, line = text[2:], [], block.line + offset
        elif command is None:
            raise ReadmeError(f"README.md:{block.line + offset}: output before any '$ ' command")
        else:
            expected.append(text)
    if command is None:
        raise ReadmeError(f"README.md:{block.line}: a console block without a '$ ' command")
    commands.append(Command(line, command, tuple(expected), _nobody(block)))
    return commands


def _nobody(block: Block) -> bool:
    return block.directive == "as-user nobody"


def output_pattern(expected: Sequence[str]) -> re.Pattern[str]:
    """A regex for output shown as ``expected`` (``...`` for any text, or any lines)."""
    parts = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:.*\n)*?")
        else:
            parts.append(re.escape(line).replace(r"\.\.\.", ".*?") + r"\n")
    return re.compile("".join(parts))


def output_matches(expected: Sequence[str], actual: str) -> bool:
    if actual and not actual.endswith("\n"):
        actual += "\n"
    return output_pattern(expected).fullmatch(actual) is not None


def free_ports(blocks: Sequence[Block]) -> dict[str, str]:
    """A free port of this machine for each port a run block names on 127.0.0.1."""
    found: dict[str, str] = {}
    for block in blocks:
        if block.lang in QUIET_LANGS or block.directive.startswith("skip"):
            continue
        for port in _ADDRESS.findall(block.text):
            if port not in found and port != "0":
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    found[port] = str(sock.getsockname()[1])
    return found


def with_ports(text: str, ports: dict[str, str]) -> str:
    return _ADDRESS.sub(lambda m: f"127.0.0.1:{ports.get(m.group(1), m.group(1))}", text)


@attrs.define
class Session:
    """The bash script for a README, and what to check once it has run."""

    workdir: Path
    stage: Path
    nobody_bin: Path | None
    files: list[str] = attrs.Factory(list)
    script: list[str] = attrs.Factory(list)
    checks: list[tuple[Command, Path]] = attrs.Factory(list)
    skipped_nobody: list[int] = attrs.Factory(list)

    def add(self, block: Block, ports: dict[str, str]) -> None:
        if block.directive.startswith("skip") or block.lang in QUIET_LANGS:
            return
        if block.lang in RUN_LANGS:
            self._at(block.line + 1)
            self.script.append(with_ports(block.text, ports))
        elif block.lang == "console":
            for command in console_commands(block):
                self._console(command, ports)
        elif block.file is not None:
            staged = self.stage / f"block{block.line}.py"
            staged.write_text(block.text)
            target = shlex.quote(block.file)
            mode = "755" if block.text.startswith("#!") else "644"
            self.files.append(
                f'mkdir -p "$(dirname {target})" && cp {shlex.quote(str(staged))} {target}'
                f" && chmod {mode} {target}"
            )
        else:
            staged = self.stage / f"block{block.line}.py"
            staged.write_text(block.text)
            self._at(block.line)
            self.script.append(f"python {shlex.quote(str(staged))}")

    def _at(self, line: int) -> None:
        """Make the session's next line README.md's ``line`` in what the trap says."""
        self.script.append(f"__readme_base=$(({line} - 1 - LINENO))")

    def _console(self, command: Command, ports: dict[str, str]) -> None:
        out = self.stage / f"out{len(self.checks)}"
        text = with_ports(command.command, ports)
        if command.as_nobody:
            if self.nobody_bin is None:
                self.skipped_nobody.append(command.line)
                return
            text = (
                f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
                f'env PATH="{self.nobody_bin}:/usr/bin:/bin" bash -c {shlex.quote(text)}'
            )
        expected = tuple(with_ports(line, ports) for line in command.expected)
        self.checks.append((attrs.evolve(command, expected=expected), out))
        self.script.append("set +e; trap - ERR")
        self._at(command.line)
        self.script += [
            f"{{ {text}\n}} > {shlex.quote(str(out))} 2>&1 < /dev/null",
            f"set -e; {_ON_ERROR}",
        ]

    def text(self) -> str:
        head = ["set -e", _ON_ERROR, "__readme_base=0"]
        return "\n".join(head + self.files + self.script) + "\n"


def nobody_interpreter() -> Path | None:
    """A ``taonet`` command uid 65534 can run (this Python, or the system's of its
    version, with this environment's packages), in a directory it can read; None if
    not root or there is none."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = [str(Path(taonet.__file__).resolve().parents[1]), *site.getsitepackages()]
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not _runs_as_nobody(python, paths):
            continue
        directory = Path(tempfile.mkdtemp(prefix="taonet-readme-nobody-", dir="/tmp"))
        directory.chmod(0o755)
        command = directory / "taonet"
        command.write_text(
            f"#!{python}\nimport sys\nsys.path[:0] = {paths!r}\n"
            "from taonet.cli._main import _entry\n_entry()\n"
        )
        command.chmod(0o755)
        return directory
    return None


def _runs_as_nobody(python: str, paths: list[str]) -> bool:
    code = f"import sys; sys.path[:0] = {paths!r}; import taonet.cli._main"
    try:
        probe = subprocess.run(
            [python, "-c", code],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (PermissionError, FileNotFoundError):
        return False
    return probe.returncode == 0


@attrs.frozen
class Result:
    skipped_nobody: tuple[int, ...]


async def run_readme(
    markdown: str,
    base: Path,
    *,
    nobody_bin: Path | None = None,
    repo_files: Sequence[str] = REPO_FILES,
) -> Result:
    """Run ``markdown``'s tour in ``base`` (made empty but for copies of the
    repository's ``repo_files``); ReadmeError on any failure."""
    blocks = extract(markdown)
    workdir, stage, home = base / "session", base / "stage", base / "home"
    for path in (workdir, stage, home):
        path.mkdir(parents=True)
    for name in repo_files:
        shutil.copytree(
            REPO / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    session = Session(workdir, stage, nobody_bin)
    ports = free_ports(blocks)
    for block in blocks:
        session.add(block, ports)
    script = stage / "session.sh"
    script.write_text(session.text())
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TAO_", "TAONET_", "CLOUDPROXY_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}",
        HOME=str(home),
    )
    log = stage / "session.log"
    proc: trio.Process | None = None
    try:
        with log.open("wb") as out:
            proc = await trio.lowlevel.open_process(
                ["bash", str(script)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            try:
                with trio.move_on_after(SESSION_TIMEOUT) as scope:
                    status = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
        if scope.cancelled_caught:
            raise ReadmeError(
                f"the session did not finish within {SESSION_TIMEOUT:g} s\n{_tail(log, workdir)}"
            )
        if status != 0:
            raise ReadmeError(f"the session failed (status {status})\n{_tail(log, workdir)}")
    finally:
        with trio.CancelScope(shield=True):
            await stop_everything(proc.pid if proc is not None else None, base)
    failures = []
    for command, printed in session.checks:
        actual = printed.read_text(errors="replace") if printed.exists() else ""
        if not output_matches(command.expected, actual):
            failures.append(
                f"README.md:{command.line}: $ {command.command}\n"
                f"  shows:\n{_indent(command.expected)}\n  printed:\n"
                f"{_indent(actual.splitlines())}"
            )
    if failures:
        raise ReadmeError("\n".join(failures))
    return Result(tuple(session.skipped_nobody))


def _indent(lines: Sequence[str]) -> str:
    return "\n".join(f"    {line}" for line in lines) or "    (nothing)"


def _tail(log: Path, workdir: Path) -> str:
    """The session's last lines and those of each log file it wrote."""
    parts = ["--- session ---", *log.read_text(errors="replace").splitlines()[-40:]]
    for path in sorted(workdir.rglob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-10:]
        parts += [f"--- {path.relative_to(workdir)} ---", *lines]
    return "\n".join(parts)


async def stop_everything(pgid: int | None, base: Path) -> None:
    """Stop what a session left running: its process group, its hosts, then the rest."""
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    hosts = await trio.to_thread.run_sync(lambda: [s.parent for s in base.rglob("admin.sock")])
    for host in hosts:
        with trio.move_on_after(CLEANUP_TIMEOUT):
            await trio.run_process(
                [str(VENV_BIN / "taonet"), "host", "stop", "--host", str(host)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with trio.move_on_after(5):
            for pid in _processes_in(base):
                await _signal_and_wait(pid, sig)


async def _signal_and_wait(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` and wait until it has exited (its pidfd is readable)."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, PermissionError):
        return
    try:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _processes_in(base: Path) -> list[int]:
    """Live processes (not this one) working in ``base`` or naming it in their argv."""
    found = []
    marker = str(base)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        proc = Path("/proc") / entry
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cwd = os.readlink(proc / "cwd")
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue
        if cwd == marker or cwd.startswith(marker + "/") or marker in argv:
            found.append(int(entry))
    return found


# -- README.md itself -----------------------------------------------------------------


def readme_blocks() -> list[Block]:
    return extract(README.read_text())


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("```sh")
    commands = [line.split("#")[0].strip() for line in lines[start + 1 : start + 3]]
    assert commands == ["make demo", "make test"]
    assert lines[start + 3] == "```"
    assert not any(line.startswith("```") for line in lines[:start])


def test_readme_programs_are_the_repository_files() -> None:
    files = [block for block in readme_blocks() if block.file is not None]
    assert files, "the tour shows no program whole"
    for block in files:
        assert block.file is not None
        path = REPO / block.file
        assert path.is_file(), f"README.md:{block.line}: {block.file} is not in the repository"
        assert block.text == path.read_text(), (
            f"README.md:{block.line} differs from {block.file}: copy the file into the README"
        )
        if block.text.startswith("#!"):
            assert os.access(path, os.X_OK), f"{block.file} has a #! line but is not executable"


@pytest.fixture
def nobody_bin() -> Iterator[Path | None]:
    directory = nobody_interpreter()
    try:
        yield directory
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
async def test_readme_runs_in_order(tmp_path: Path, nobody_bin: Path | None) -> None:
    result = await run_readme(README.read_text(), tmp_path, nobody_bin=nobody_bin)
    assert not _processes_in(tmp_path)
    if result.skipped_nobody:
        pytest.skip(
            "the whole README ran, except the commands as another user at README.md:"
            f"{', '.join(map(str, result.skipped_nobody))} (needs root, setpriv and an "
            "interpreter uid 65534 can run)"
        )


# -- the runner itself: it must fail when a snippet is broken ---------------------------


def tour(*blocks: str) -> str:
    return "# t\n\n" + TOUR + "\n\n" + "\n\n".join(blocks) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# no tour here\n", "no '## A short tour' heading"),
        (tour("```\necho hi\n```"), "a block of kind '(none)'"),
        (tour("```shell-session\necho hi\n```"), "a block of kind 'shell-session'"),
        (tour("```sh\necho hi\n"), "never closed"),
        (tour("<!-- readme-test: frobnicate -->\n```sh\necho hi\n```"), "unknown marker"),
        (tour("<!-- readme-test: file a.py -->\n```python\npass\n```"), "does not name a.py"),
        (tour("`a.py`:\n<!-- readme-test: file a.py -->\n```sh\nls\n```"), "'file' is for python"),
        (tour("<!-- readme-test: as-user nobody -->\n```sh\nls\n```"), "'as-user' is for console"),
    ],
)
def test_extract_refuses_what_it_cannot_run(text: str, message: str) -> None:
    def read() -> None:
        for block in extract(text):
            if block.lang == "console":
                console_commands(block)

    with pytest.raises(ReadmeError, match=re.escape(message)):
        read()


def test_extract_reads_kinds_markers_and_lines() -> None:
    text = tour(
        "```console\n$ echo a\na\n$ echo b\n```",
        "`x.py`:\n\n<!-- readme-test: file x.py -->\n```python\nprint(1)\n```",
        "```text\nnot run\n```",
    )
    blocks = extract(text)
    assert [(b.line, b.lang, b.file) for b in blocks] == [
        (5, "console", None),
        (14, "python", "x.py"),
        (18, "text", None),
    ]
    assert console_commands(blocks[0]) == [
        Command(6, "echo a", ("a",), False),
        Command(8, "echo b", (), False),
    ]
    continued = extract(tour("```console\n$ echo a \\\n  b\na b\n```"))[0]
    assert console_commands(continued) == [Command(6, "echo a \\\n  b", ("a b",), False)]
    with pytest.raises(ReadmeError, match="output before any"):
        console_commands(extract(tour("```console\nhello\n$ echo\n```"))[0])


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        (["a", "b"], "a\nb\n", True),
        (["a", "b"], "a\nb", True),
        (["a", "b"], "a\nc\n", False),
        (["a"], "a\nb\n", False),
        (["a", "b"], "a\n", False),
        ([], "", True),
        ([], "surprise\n", False),
        (["key([...]) says x"], "key([00ff]) says x\n", True),
        (["key([...]) says x"], "key([00ff]) says y\n", False),
        (["...", "last"], "one\ntwo\nlast\n", True),
        (["...", "last"], "last\n", True),
        (["...", "last"], "one\nlast\nmore\n", False),
        (["a.b"], "aXb\n", False),  # only ... is special
    ],
)
def test_output_matching(expected: list[str], actual: str, matches: bool) -> None:
    assert output_matches(expected, actual) is matches


async def test_runner_runs_a_good_readme_as_one_session(tmp_path: Path) -> None:
    text = tour(
        "`prog.py`:\n\n<!-- readme-test: file prog.py -->\n```python\nprint('from a file')\n```",
        "```sh\nexport GREETING=hello\ncd sub 2>/dev/null || mkdir sub\n```",
        '```console\n$ echo "$GREETING" && python prog.py\nhello\nfrom a file\n'
        "$ echo 127.0.0.1:8124 | grep -c ':8124$'\n0\n$ false\n```",
        "```python\nimport os\nassert os.path.isdir('sub')\n```",
        "<!-- readme-test: skip (not here) -->\n```sh\nexit 3\n```",
        "```text\nexit 4\n```",
    )
    with trio.fail_after(60):
        await run_readme(text, tmp_path, repo_files=())


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("```sh\ntrue\nfalse\ntouch ran-on\n```", "README.md:7: failed: false"),
        ("```python\nraise SystemExit(3)\n```", "README.md:5: failed: python"),
        ("```console\n$ echo hello\nhallo\n```", "shows:\n    hallo\n  printed:\n    hello"),
        ("```console\n$ echo one; echo two\none\n```", "printed:\n    one\n    two"),
    ],
)
async def test_runner_fails_on_a_broken_snippet(tmp_path: Path, block: str, message: str) -> None:
    with trio.fail_after(60), pytest.raises(ReadmeError) as caught:
        await run_readme(tour(block), tmp_path, repo_files=())
    assert message in str(caught.value)
    assert not (tmp_path / "session" / "ran-on").exists()


async def test_runner_stops_what_a_failed_session_started(tmp_path: Path) -> None:
    text = tour("```sh\nsleep 1000 &\necho $! > sleeper.pid\nfalse\n```")
    with trio.fail_after(60), pytest.raises(ReadmeError, match="failed: false"):
        await run_readme(text, tmp_path, repo_files=())
    pid = int((tmp_path / "session" / "sleeper.pid").read_text())
    assert not _alive(pid)
    assert not _processes_in(tmp_path)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- what the README's findings were, repeated ------------------------------------------


def test_activating_the_venv_puts_taonet_on_path(tmp_path: Path) -> None:
    """`taonet` was not on PATH after `make demo`: the tour now activates .venv."""
    if VENV_BIN != REPO / ".venv" / "bin":
        pytest.skip("the tests do not run in the repository's .venv")
    path = os.pathsep.join(p for p in os.defpath.split(os.pathsep) if p)
    found = subprocess.run(
        ["bash", "-c", ". .venv/bin/activate && command -v taonet && taonet --version"],
        cwd=REPO,
        env={"PATH": path, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert found.stdout.splitlines()[0] == str(VENV_BIN / "taonet")
    assert found.stdout.splitlines()[1].startswith("taonet ")


async def test_attest_and_seal_reruns_and_leaves_nothing(tmp_path: Path) -> None:
    """The attestation snippet worked only with one password and left a directory that
    made every rerun fail: the program reads the password file and runs again."""
    from taonet.crypto import KdfParams
    from taonet.domain import Domain, DomainTemplate

    password = b"not the README's password"
    Domain.create(tmp_path / "d", DomainTemplate(), password, kdf=KdfParams.for_tests())
    (tmp_path / "pw").write_bytes(password + b"\n")
    (tmp_path / "wrong").write_bytes(b"policy password\n")
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    program = REPO / "examples" / "taonet_examples" / "readme" / "attest_and_seal.py"
    env = {**os.environ, "TMPDIR": str(scratch)}

    async def run(password_file: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(60):
            return await trio.run_process(
                [sys.executable, str(program), str(tmp_path / "d"), str(tmp_path / password_file)],
                cwd=work,
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    for _ in range(2):
        done = await run("pw")
        assert done.returncode == 0, done.stderr
        assert b"unsealed b'my secret' under policy 'self'" in done.stdout
        assert not list(work.iterdir())
        assert not list(scratch.iterdir())
    refused = await run("wrong")
    assert refused.returncode != 0
    assert refused.stderr.decode().splitlines() == [
        f"attest_and_seal: error: {tmp_path / 'd'}/policy_keys/keys: wrong password or "
        "corrupted keyset"
    ]
