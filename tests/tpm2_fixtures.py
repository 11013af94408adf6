"""Real swtpm TPMs for the tests (a pytest plugin: ``tests/conftest.py`` registers it).

* ``swtpm`` (session): one throwaway TPM for the whole session, in a temporary
  directory, stopped at the end: a :class:`taonet.hosts.tpm2.Swtpm` (``.tcti``,
  ``.manufacturer_ca_pems()``). Tests that extend PCRs use 16 or 23 and reset them;
  tests that stop, restart or otherwise disturb the TPM use ``fresh_swtpm``.
* ``swtpm_tcti`` (session): its TCTI string. ``swtpm_ca_pems`` (session): its
  manufacturer CA, ``(root PEM, intermediate PEM)``.
* ``fresh_swtpm`` (function): a TPM of the test's own, started; stopped after the test.
  It is a copy of the session's pristine TPM (same EK and CA, taken before anything
  ran on it), so it costs a copy and a start, not a new CA and EK certificates.
* :func:`tpm2_or_skip`: for code that needs a TPM outside these fixtures.

Without swtpm, its tools or tpm2-pytss, a test asking for a TPM skips with the
install line; with ``CI=true`` it fails instead (CI must run the TPM tests).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

#: What the TPM tests need, as one line.
INSTALL_LINE = (
    "TPM tests need swtpm and tpm2-pytss: apt-get install swtpm swtpm-tools libtss2-dev"
    " pkg-config && pip install 'taonet[tpm2]'"
)
_TOOLS = ("swtpm", "swtpm_setup", "swtpm_localca")
_copies = itertools.count(1)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tpm2() -> str | None:
    """What is missing for the TPM tests (None if nothing)."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    try:
        import taonet.hosts.tpm2  # noqa: F401
    except ImportError as exc:
        missing.append(f"tpm2-pytss ({exc})")
    return ", ".join(missing) or None


def tpm2_or_skip() -> None:
    """Skip the test (fail it when CI=true) if swtpm or tpm2-pytss is missing."""
    missing = missing_tpm2()
    if missing is None:
        return
    if in_ci():
        pytest.fail(f"CI needs the TPM tests to run; missing {missing}. {INSTALL_LINE}")
    pytest.skip(f"missing {missing}. {INSTALL_LINE}")


@pytest.fixture(scope="session")
def _swtpm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine TPM (CA, EK certificates, state), stopped: what every TPM here copies."""
    tpm2_or_skip()
    from taonet.hosts.tpm2 import Swtpm

    directory = tmp_path_factory.mktemp("swtpm") / "template"
    Swtpm.create(directory, start=False)
    return directory


def _copy(template: Path, directory: Path) -> Swtpm:
    from taonet.hosts.tpm2 import Swtpm

    # Not the template's pid, port or lock: each copy runs on a free port of its own.
    shutil.copytree(
        template,
        directory,
        symlinks=True,
        ignore=shutil.ignore_patterns("swtpm.pid", "swtpm.port", ".lock"),
    )
    tpm = Swtpm(directory)
    tpm.start()
    return tpm


@pytest.fixture(scope="session")
def swtpm(_swtpm_template: Path) -> Iterator[Swtpm]:
    """The session's swtpm, started (see the module docstring)."""
    tpm = _copy(_swtpm_template, _swtpm_template.parent / "session")
    try:
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture(scope="session")
def swtpm_tcti(swtpm: Swtpm) -> str:
    """The session swtpm's TCTI string (``swtpm:host=127.0.0.1,port=N``)."""
    return swtpm.tcti


@pytest.fixture(scope="session")
def swtpm_ca_pems(swtpm: Swtpm) -> tuple[bytes, bytes]:
    """The session swtpm's manufacturer CA: ``(root PEM, intermediate PEM)``."""
    return swtpm.manufacturer_ca_pems()


@pytest.fixture
def fresh_swtpm(_swtpm_template: Path) -> Iterator[Swtpm]:
    """A started swtpm of this test's own (a copy of the pristine one); stopped after."""
    tpm = _copy(_swtpm_template, _swtpm_template.parent / f"fresh{next(_copies)}")
    try:
        yield tpm
    finally:
        tpm.stop()
        shutil.rmtree(tpm.directory, ignore_errors=True)
