"""The public API the applications need, and that they use nothing else.

The ``taonet`` command, the services and the examples are built only on public API:
they import no private module (``_name``) of another package. They used to import
``taonet._files``, ``taonet.cli._logging`` and the domain service's ``_audit``; a
change inside a package could break them, and an outside program had no way to do
what they did.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

import taonet
import taonet.attestation.tpm2
import taonet.cli
import taonet.disclosure
import taonet.files
import taonet.hosts
import taonet.hosts.linux
import taonet_services.domain_service as ds
from taonet import ConfigError, configure_logging

ROOT = Path(__file__).resolve().parent.parent

#: Each application's own code, and the package under which its own private modules
#: live (only it may import them).
APPLICATIONS = {
    ROOT / "taonet" / "cli": "taonet.cli",
    ROOT / "services" / "taonet_services": "taonet_services",
    ROOT / "examples" / "taonet_examples": "taonet_examples",
}


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_imports(directory: Path, own: str) -> list[str]:
    """``file: module`` (file relative to ``directory``) for each import of another
    package's private module."""
    found = []
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                first = next((i for i, p in enumerate(parts) if _is_private(p)), None)
                if first is None:
                    continue
                home = ".".join(parts[:first])
                if home == own or home.startswith(own + "."):
                    continue  # its own private module
                found.append(f"{path.relative_to(directory)}: {name}")
    return found


def test_applications_import_only_public_api() -> None:
    found = [line for d, own in APPLICATIONS.items() for line in private_imports(d, own)]
    assert found == []


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from taonet._files import atomic_write\n"
        "def f():\n    import taonet_services.domain_service._audit\n"
        "from taonet.cli._main import main\n"
    )
    found = private_imports(tmp_path, "taonet_examples")
    assert [line.split(": ")[1] for line in found] == [
        "taonet._files",
        "taonet.cli._main",
        "taonet_services.domain_service._audit",
    ]
    assert private_imports(tmp_path, "taonet") == ["app.py: taonet_services.domain_service._audit"]


def test_public_objects_report_their_public_module() -> None:
    for name in taonet.__all__:
        if name != "__version__":
            assert getattr(taonet, name).__module__ == "taonet", name
    for name in taonet.files.__all__:
        assert getattr(taonet.files, name).__module__ == "taonet.files", name
    assert repr(ConfigError) == "<class 'taonet.ConfigError'>"
    assert taonet.cli.main.__module__ == "taonet.cli"
    for package in (taonet.hosts, taonet.hosts.linux, taonet.disclosure, taonet.attestation.tpm2):
        for name in package.__all__:
            if not name.isupper():  # constants have no module
                assert getattr(package, name).__module__ == package.__name__, name
    assert repr(taonet.hosts.linux.LinuxHost) == "<class 'taonet.hosts.linux.LinuxHost'>"
    for name in ds.__all__:
        if not name.isupper():  # constants have no module
            assert getattr(ds, name).__module__ == ds.__name__, name


def test_the_domain_service_exports_what_the_cli_needs() -> None:
    for name in ("AuditLog", "format_events", "DomainService"):
        assert name in ds.__all__


# -- logging ---------------------------------------------------------------------------

_IMPORT_EVERYTHING = """
import structlog
import taonet, taonet.files, taonet.channel, taonet.hosts, taonet.provision, taonet.domain
import taonet.hosts.linux
import taonet.cli, taonet.cli._main
import taonet_services.domain_service
import taonet_examples.simpleexample.demo, taonet_examples.simpleexample.hosted
import taonet_examples.simpleexample.simpleserver, taonet_examples.simpleexample.simpleclient
CALL
assert not structlog.is_configured(), structlog.get_config()
"""


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TAONET_", "PYTHON"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
        cwd=ROOT,
    )


def test_importing_taonet_and_its_applications_configures_no_logging() -> None:
    result = _python(_IMPORT_EVERYTHING.replace("CALL", ""))
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_logging_check_notices_a_configuration() -> None:
    result = _python(_IMPORT_EVERYTHING.replace("CALL", "taonet.configure_logging()"))
    assert result.returncode != 0
    assert "AssertionError" in result.stderr


_LOG = """
import structlog, taonet
taonet.configure_logging(ARGS)
log = structlog.get_logger("probe")
log.debug("debug_event")
log.info("info_event", peer="p")
log.warning("warning_event", conn_id=7)
"""


def _events(args: str = "", **env: str) -> list[str]:
    result = _python(_LOG.replace("ARGS", args), env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # log lines go to stderr, never into a program's output
    return result.stderr.splitlines()


def test_json_lines_from_the_level_up() -> None:
    lines = _events("json=True, level='info'")
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["level"]) for e in events] == [
        ("info_event", "info"),
        ("warning_event", "warning"),
    ]
    assert events[0]["peer"] == "p"
    assert events[1]["conn_id"] == 7
    assert all(e["timestamp"].endswith("Z") for e in events)


def test_text_lines_and_the_default_level_is_info() -> None:
    lines = _events()
    assert len(lines) == 2
    assert "info_event" in lines[0]
    assert "peer=p" in lines[0]
    assert "warning_event" in lines[1]
    assert "conn_id=7" in lines[1]
    assert not lines[0].startswith("{")


def test_the_environment_sets_level_and_format() -> None:
    lines = _events(TAONET_LOG="DEBUG", TAONET_LOG_FORMAT="json")
    assert [json.loads(line)["event"] for line in lines] == [
        "debug_event",
        "info_event",
        "warning_event",
    ]
    lines = _events(TAONET_LOG="warning")
    assert len(lines) == 1
    assert "warning_event" in lines[0]
    # What the caller says wins over the environment.
    assert len(_events("level='debug', json=False", TAONET_LOG="error")) == 3


def test_an_unknown_level_or_format_is_refused_and_configures_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = structlog.get_config()
    with pytest.raises(ConfigError, match=r"level: unknown log level 'loud'"):
        configure_logging(level="loud")
    with pytest.raises(ConfigError, match="a log level is >= 0"):
        configure_logging(level=-1)
    monkeypatch.setenv("TAONET_LOG", "x" * 10_000)
    with pytest.raises(ConfigError, match="TAONET_LOG: unknown log level") as info:
        configure_logging()
    assert len(str(info.value)) < 200  # what came from outside is bounded
    monkeypatch.setenv("TAONET_LOG", "info")
    monkeypatch.setenv("TAONET_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="TAONET_LOG_FORMAT: unknown log format 'xml'"):
        configure_logging()
    assert structlog.get_config() == before
