"""What ``pip install`` of taonet puts in an environment, and that it runs.

An installed taonet used to put top-level packages named ``services`` and
``examples`` into site-packages, where they collide with any other project's
folder of that name (and ``import services`` found taonet's). This test builds the
wheel as ``pip install /path/to/checkout`` would (a plain, non-editable build),
installs it into a fresh environment, and from a directory outside the
repository runs ``taonet demo`` and ``taonet demo --hosted`` to the end.

No network is needed for the environment: the new venv gets taonet from the
wheel and its dependencies from this test environment's site-packages through a
``.pth`` file (added after the install, so pip never sees the editable taonet).
Building the wheel needs the build backend that ``[build-system]`` names, from the
package index pip is configured with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What a wheel may hold at its top level (besides its .dist-info).
TOP_LEVEL = {"taonet", "taonet_services", "taonet_examples"}
#: Bound on each step (a wheel build, an install, a demo run).
STEP_TIMEOUT = 600

pytestmark = pytest.mark.slow


def _run(
    argv: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [os.fspath(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built from a copy of what the sdist would hold."""
    base = tmp_path_factory.mktemp("build")
    source = base / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "taonet", "services", "examples"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = base / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, source],
        cwd=base,
    )
    (found,) = out.glob("taonet-*.whl")
    return found


@pytest.fixture(scope="module")
def environment(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel installed; its bin directory and a clean environment."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", "--clear", venv], cwd=venv)
    python = venv / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            wheel,
        ],
        cwd=venv,
    )
    purelib = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv
        ).stdout.strip()
    )
    # The dependencies (trio, cryptography, ...) from this environment, after the
    # venv's own site-packages on sys.path.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "taonet_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "TAO_", "CLOUDPROXY_", "TAONET_", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    env["TAONET_LOG"] = "warning"
    return venv / "bin", env


def test_the_wheel_installs_only_taonet_named_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        recorded = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
        top_level_txt = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = (
            set(archive.read(top_level_txt[0]).decode().split()) if top_level_txt else TOP_LEVEL
        )
    top = {path.split("/")[0] for path in recorded if path}
    assert {t for t in top if not t.endswith(".dist-info")} == TOP_LEVEL
    assert declared == TOP_LEVEL
    for needed in (
        "taonet/py.typed",
        "taonet_services/py.typed",
        "taonet_examples/py.typed",
        "taonet/domain/templates/",
        "taonet_services/domain_service/__init__.py",
        "taonet_examples/simpleexample/simpleserver.py",
    ):
        assert any(path.startswith(needed) for path in recorded), needed


def test_generic_names_are_not_importable(
    environment: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = environment
    python = bin_dir / "python"
    where = _run(
        [python, "-c", "import taonet, taonet_services, taonet_examples; print(taonet.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent)
    for name in ("services", "examples"):
        result = subprocess.run(
            [python, "-c", f"import {name}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        assert result.returncode != 0, name
        assert f"No module named '{name}'" in result.stderr


@pytest.mark.parametrize("hosted", [False, True], ids=["soft", "hosted"])
def test_taonet_demo_runs_from_the_installed_wheel(
    environment: tuple[Path, dict[str, str]], tmp_path: Path, hosted: bool
) -> None:
    bin_dir, env = environment
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    argv: list[str | Path] = [bin_dir / "taonet", "demo", "--dir", outside / "demo"]
    if hosted:
        argv.append("--hosted")
    result = _run(argv, cwd=outside, env=env)
    assert "== Done" in result.stdout
    assert re.search(r"received the secret [0-9a-f]{64}", result.stdout), result.stdout
    assert "Traceback" not in result.stderr


def test_taonet_demo_upgrade_runs_from_the_installed_wheel(
    environment: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = environment
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    argv: list[str | Path] = [bin_dir / "taonet", "demo", "--upgrade", "--dir", outside / "up"]
    for _ in range(2):  # and again over the sealed state of the first run
        result = _run(argv, cwd=outside, env=env)
        assert "== Done" in result.stdout
        assert "[v2] read the record under /upgrade/content#" in result.stdout, result.stdout
        assert "Traceback" not in result.stderr
