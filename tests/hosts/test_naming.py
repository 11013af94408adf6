"""program_subprin_on: the name a host gives a program file, worked out beforehand,
is the name a real host gives it, so a domain rule written from it lets it run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import trio

from taonet import AuthorizationError, ConfigError, auth
from taonet.domain import measure_file, program_subprin
from taonet.hosts.linux import AdminClient, LinuxHostConfig
from taonet.hosts.linux._naming import host_config_at, program_rule_on, program_subprin_on
from tests.conftest import MakeDomain
from tests.hosts.linux_helpers import init_root, open_root

TIMEOUT = 60
PYTHON = sys.executable


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def rule(ext: auth.SubPrin) -> str:
    return f'Authorized({auth.PrinTail(ext)}, "Execute")'


async def test_a_rule_from_the_worked_out_name_lets_each_kind_of_file_run(
    tmp_path: Path, make_domain: MakeDomain
) -> None:
    script = write(tmp_path / "script.py", "#!/usr/bin/env python3\nprint('script')\n")
    shell = write(tmp_path / "shell.sh", "#!/bin/sh\necho shell\n")
    binary = tmp_path / "true"
    shutil.copy("/bin/true", binary)
    config = LinuxHostConfig(kind="root", guard="Liberal", interpreters={"python3": PYTHON})
    names = {path: program_subprin_on(config, path) for path in (script, shell, binary)}
    # The env script is named with the host's interpreter; the others by their hash alone.
    assert names[script].exts[0].name == "Script"
    assert names[shell] == program_subprin(measure_file(shell))
    assert names[binary] == program_subprin(measure_file(binary))

    domain = make_domain(rules=tuple(rule(ext) for ext in names.values()))
    init_root(tmp_path / "host", domain=domain, interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            async with AdminClient.connect(host.socket_path) as admin:
                for path, ext in names.items():
                    info = await admin.start(str(path), [], env={"PATH": "/usr/bin:/bin"})
                    assert info.name == host.name.extend(ext)
                    done = await admin.wait(str(info.pid))
                    assert done.exit_status == 0
            await host.stop()


async def test_a_rule_naming_a_script_by_its_hash_alone_does_not_let_it_run(
    tmp_path: Path, make_domain: MakeDomain
) -> None:
    # What `domain policy --add-program` wrote before: refused by a host that runs
    # the script with its own interpreter.
    script = write(tmp_path / "script.py", "#!/usr/bin/env python3\nprint('script')\n")
    domain = make_domain(rules=(rule(program_subprin(measure_file(script))),))
    init_root(tmp_path / "host", domain=domain, interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            async with AdminClient.connect(host.socket_path) as admin:
                with pytest.raises(AuthorizationError, match=r"\.Script\(\["):
                    await admin.start(str(script), [], env={"PATH": "/usr/bin:/bin"})
            await host.stop()


def test_a_host_without_interpreters_names_a_script_by_its_hash(tmp_path: Path) -> None:
    script = write(tmp_path / "script.py", "#!/usr/bin/env python3\n")
    config = LinuxHostConfig(
        kind="root", guard="Liberal"
    )  # an earlier host.toml: no [interpreters]
    assert program_subprin_on(config, script) == program_subprin(measure_file(script))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#!/usr/bin/env ruby\n", "asks for 'ruby'"),
        ("#!/usr/bin/env python3 -u\n", "NAME' scripts"),
    ],
)
def test_what_the_host_would_refuse_is_refused(tmp_path: Path, text: str, message: str) -> None:
    script = write(tmp_path / "script", text)
    config = LinuxHostConfig(kind="root", guard="Liberal", interpreters={"python3": PYTHON})
    with pytest.raises(ConfigError, match=message):
        program_subprin_on(config, script)


def service_tree(root: Path) -> Path:
    """A program directory: a .py entry without '#!', a module, a package, data, a
    kernel-run shell entry, and a __pycache__ the host neither copies nor measures."""
    (root / "pkg").mkdir(parents=True)
    (root / "__main__.py").write_text("import helper, pkg\nprint(helper.WORD, pkg.N)\n")
    (root / "helper.py").write_text("WORD = 'tree'\n")
    (root / "pkg" / "__init__.py").write_text("N = 1\n")
    (root / "motd.txt").write_text("hello\n")
    write(root / "run.sh", "#!/bin/sh\necho shell\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0" * 16)
    return root


async def test_a_program_directory_is_named_as_a_real_host_names_it(
    tmp_path: Path, make_domain: MakeDomain
) -> None:
    """What `domain policy --add-program DIR` writes lets a guarded host run the
    directory (before, _naming refused directories: the operator had to copy the name
    from a refusal); a file changed afterwards gives another name, which is refused."""
    tree = service_tree(tmp_path / "svc")
    config = LinuxHostConfig(kind="root", guard="Liberal", interpreters={"python3": PYTHON})
    by_main = program_subprin_on(config, tree)
    by_shell = program_subprin_on(config, tree, entry="run.sh")
    assert by_main.exts[0].name == "ProgramTree"
    assert [type(arg) for arg in by_main.exts[0].args] == [
        auth.Bytes,
        auth.Str,
        auth.Str,
        auth.Bytes,
    ]  # the manifest hash, the entry, the host's interpreter and its hash
    assert len(by_shell.exts[0].args) == 2  # the kernel runs a '#!/bin/sh' entry
    assert by_main.exts[0].args[0] == by_shell.exts[0].args[0]  # one tree, one manifest

    domain = make_domain(rules=(rule(by_main), rule(by_shell)))
    init_root(tmp_path / "host", domain=domain, interpreters={"python3": PYTHON})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            host = await open_root(nursery, tmp_path / "host")
            async with AdminClient.connect(host.socket_path) as admin:
                for entry, ext in ((None, by_main), ("run.sh", by_shell)):
                    info = await admin.start(str(tree), [], entry=entry, env={"PATH": "/bin"})
                    assert info.name == host.name.extend(ext)
                    assert (await admin.wait(str(info.pid))).exit_status == 0
                (tree / "helper.py").write_text("WORD = 'changed'\n")
                with pytest.raises(AuthorizationError, match=r"\.ProgramTree\(\["):
                    await admin.start(str(tree), [], env={"PATH": "/bin"})
            await host.stop()
    changed = program_subprin_on(config, tree)
    assert changed != by_main
    assert program_subprin_on(config, tree) == changed  # measuring twice agrees


def test_what_the_host_refuses_in_a_directory_is_refused(tmp_path: Path) -> None:
    config = LinuxHostConfig(kind="root", guard="Liberal", interpreters={"python3": PYTHON})
    tree = service_tree(tmp_path / "svc")
    with pytest.raises(ConfigError, match=r"no file missing\.py to run"):
        program_subprin_on(config, tree, entry="missing.py")
    with pytest.raises(ConfigError, match="must be a relative path"):
        program_subprin_on(config, tree, entry="../x.py")
    with pytest.raises(ConfigError, match="an entry is for a program directory"):
        program_subprin_on(config, tree / "helper.py", entry="x.py")
    (tree / "link").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="symbolic link"):
        program_subprin_on(config, tree)
    (tree / "link").unlink()
    # An earlier host (no [interpreters]) cannot run a .py entry without '#!'.
    with pytest.raises(ConfigError, match="does not offer"):
        program_subprin_on(LinuxHostConfig(kind="root", guard="Liberal"), tree)
    with pytest.raises(ConfigError, match="cannot measure"):
        program_subprin_on(config, tmp_path / "missing")


def test_an_interpreter_others_can_write_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    shutil.copy(os.path.realpath(PYTHON), fake)
    fake.chmod(0o777)
    script = write(tmp_path / "script.py", "#!/usr/bin/env python3\n")
    config = LinuxHostConfig(kind="root", guard="Liberal", interpreters={"python3": str(fake)})
    with pytest.raises(ConfigError, match="interpreter"):
        program_subprin_on(config, script)


def test_the_rule_for_a_host_directory_or_none(tmp_path: Path, make_domain: MakeDomain) -> None:
    script = write(tmp_path / "script.py", "#!/usr/bin/env python3\n")
    assert host_config_at(tmp_path / "host") is None
    by_hash = program_rule_on(None, script)
    assert str(by_hash) == rule(program_subprin(measure_file(script)))
    init_root(tmp_path / "host", domain=make_domain(), interpreters={"python3": PYTHON})
    config = host_config_at(tmp_path / "host")
    assert config is not None
    assert str(program_rule_on(config, script)) == rule(program_subprin_on(config, script))
    assert program_rule_on(config, script) != by_hash


def test_domain_policy_add_program_names_a_script_as_the_domains_host_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`taonet domain policy --add-program` wrote Program([h]) for a '#!/usr/bin/env
    python3' script, a rule the host that runs it with its interpreter never matches:
    once the domain's host exists it writes the host's name for it."""
    from taonet.cli import main

    monkeypatch.delenv("TAO_HOST", raising=False)
    monkeypatch.delenv("TAO_DOMAIN", raising=False)
    (tmp_path / "pw").write_text("a password\n")
    script = write(tmp_path / "script.py", "#!/usr/bin/env python3\n")
    domain, pw = str(tmp_path / "d"), str(tmp_path / "pw")
    assert main(["domain", "init", domain, "--password-file", pw]) == 0
    assert main(["domain", "principal", "--domain", domain, "--program", str(script)]) == 0
    before_host = capsys.readouterr().out.splitlines()[-1]
    assert before_host.startswith("ext.Program([")
    host = ["--domain", domain, "--password-file", pw, "--policy-password-file", pw]
    assert main(["host", "init", "--root", *host]) == 0
    config = host_config_at(tmp_path / "d" / "linux_tao_host")
    assert config is not None
    assert config.interpreters
    policy = ["domain", "policy", "--domain", domain, "--password-file", pw]
    assert main([*policy, "--add-program", str(script)]) == 0
    capsys.readouterr()
    assert main(["domain", "policy", "--domain", domain, "--show"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(program_rule_on(config, script))]
    assert main(["domain", "principal", "--domain", domain, "--program", str(script)]) == 0
    assert capsys.readouterr().out.startswith(
        f"{auth.PrinTail(program_subprin_on(config, script))}."
    )
    assert main([*policy, "--remove-program", str(script)]) == 0
    capsys.readouterr()
    assert main(["domain", "policy", "--domain", domain, "--show"]) == 0
    assert "Script" not in capsys.readouterr().out


def test_domain_policy_add_program_names_a_directory_as_the_domains_host_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`taonet domain policy --add-program DIR [--entry RELPATH]`, `--remove-program DIR`
    and `domain principal --program DIR` name a program directory as the host does."""
    from taonet.cli import main

    monkeypatch.delenv("TAO_HOST", raising=False)
    monkeypatch.delenv("TAO_DOMAIN", raising=False)
    (tmp_path / "pw").write_text("a password\n")
    tree = service_tree(tmp_path / "svc")
    domain, pw = str(tmp_path / "d"), str(tmp_path / "pw")
    assert main(["domain", "init", domain, "--password-file", pw]) == 0
    host = ["--domain", domain, "--password-file", pw, "--policy-password-file", pw]
    assert main(["host", "init", "--root", *host]) == 0
    config = host_config_at(tmp_path / "d" / "linux_tao_host")
    assert config is not None
    policy = ["domain", "policy", "--domain", domain, "--password-file", pw]
    assert main([*policy, "--add-program", str(tree)]) == 0
    assert main([*policy, "--add-program", str(tree), "--entry", "run.sh"]) == 0
    capsys.readouterr()
    assert main(["domain", "policy", "--domain", domain, "--show"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(
        [str(program_rule_on(config, tree)), str(program_rule_on(config, tree, entry="run.sh"))]
    )
    assert main(["domain", "principal", "--domain", domain, "--program", str(tree)]) == 0
    assert capsys.readouterr().out.startswith(f"{auth.PrinTail(program_subprin_on(config, tree))}.")
    assert main([*policy, "--remove-program", str(tree), "--entry", "run.sh"]) == 0
    capsys.readouterr()
    assert main(["domain", "policy", "--domain", domain, "--show"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(program_rule_on(config, tree))]


def test_a_directory_before_the_domain_has_a_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a host, a directory is named as a host without [interpreters] names it:
    a kernel-run entry by the tree alone; a .py entry such a host cannot run is refused
    with the reason, in one line (it raised a ConfigError about the host's own guard)."""
    from taonet.cli import main

    monkeypatch.delenv("TAO_HOST", raising=False)
    monkeypatch.delenv("TAO_DOMAIN", raising=False)
    (tmp_path / "pw").write_text("a password\n")
    tree = service_tree(tmp_path / "svc")
    domain = str(tmp_path / "d")
    assert main(["domain", "init", domain, "--password-file", str(tmp_path / "pw")]) == 0
    capsys.readouterr()
    principal = ["domain", "principal", "--domain", domain, "--program", str(tree)]
    assert main([*principal, "--entry", "run.sh"]) == 0
    earlier = LinuxHostConfig(kind="root", guard="Liberal")
    expected = program_subprin_on(earlier, tree, entry="run.sh")
    assert capsys.readouterr().out.startswith(f"{auth.PrinTail(expected)}.")
    assert program_rule_on(None, tree, entry="run.sh") == program_rule_on(
        earlier, tree, entry="run.sh"
    )
    assert main(principal) != 0
    assert "does not offer" in capsys.readouterr().err
