"""The name a Linux host gives a program file, worked out without starting it.

A domain's guard must name a program as its host will (the host checks
``Authorized(name, "Execute")`` before it starts a program, and the domain service
the same before it certifies one). Since hosts run ``#!/usr/bin/env NAME`` scripts
with their own interpreter, the name of such a script holds that interpreter's path
and hash (see :mod:`taonet.hosts.linux._process`), so a rule written from the file
alone (``Program([h])``) never matches it. :func:`program_subprin_on` gives the
extension the host of a ``host.toml`` would name a single file with: ``Program([h])``
when the kernel runs it, ``Script([h], "/interpreter", [i])`` when the host's
interpreter does. It reads the file and measures the interpreter as the host does
(the same functions), and raises ConfigError for what it cannot name: a script asking
for an interpreter the host does not offer, say. A program directory is named
``ProgramTree([manifest], "entry", ...)`` from a walk and copy of the tree as this
process's user, made by the host's own code (``_prepare_tree`` in
:mod:`taonet.hosts.linux._process`) into a scratch directory that is removed after:
the host walks it as the user who starts it, so name it as that user. :func:`program_rule_on`
is the guard rule that lets it execute, and :func:`host_config_at` reads the
``host.toml`` of a host directory if there is one (``taonet domain policy
--add-program`` names programs as the domain's host does once that host exists).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import attrs

from taonet import auth
from taonet._errors import AuthorizationError, ConfigError, HostError
from taonet.domain import measure_file, program_subprin
from taonet.hosts.linux._config import CONFIG_FILE, LinuxHostConfig
from taonet.hosts.linux._interpreters import (
    SHEBANG_BYTES,
    Interpreter,
    check_interpreter,
    choose_interpreter,
)
from taonet.hosts.linux._process import PreparedProgram, _lookup, _prepare_tree

__all__ = ["host_config_at", "program_rule_on", "program_subprin_on"]


def host_config_at(directory: str | os.PathLike[str]) -> LinuxHostConfig | None:
    """The configuration of the host in ``directory``; None if it holds no host.toml."""
    if not (Path(directory) / CONFIG_FILE).is_file():
        return None
    return LinuxHostConfig.load(Path(directory))


def program_rule_on(
    config: LinuxHostConfig | None, path: str | os.PathLike[str], *, entry: str | None = None
) -> auth.Form:
    """``Authorized(ext.NAME, "Execute")`` for the program at ``path`` (a file, or a
    program directory run from ``entry``) as the host of ``config`` names it; with no
    host (None), a file by its hash, ``Program([h])``, and a directory as a host
    without ``[interpreters]`` names it."""
    if config is None:
        if Path(path).is_dir():
            ext = program_subprin_on(
                LinuxHostConfig(kind="root", guard="Liberal"), path, entry=entry
            )
        else:
            if entry is not None:
                raise ConfigError(f"{path} is a file: an entry is for a program directory")
            ext = program_subprin(measure_file(Path(path)))
    else:
        ext = program_subprin_on(config, path, entry=entry)
    return auth.Pred("Authorized", (auth.PrinTail(ext), auth.Str("Execute")))


def program_subprin_on(
    config: LinuxHostConfig, path: str | os.PathLike[str], *, entry: str | None = None
) -> auth.SubPrin:
    """The extension the host of ``config`` names the program at ``path`` with: a
    file, or a program directory whose ``entry`` (default ``__main__.py``) runs.

    Without program ids (a host with ``program_ids`` adds the next id, which no rule
    can know). The host's interpreters are checked as the host checks them, with the
    owner of the host directory as the host's user (this process's, if unknown). A
    directory is walked as this process's user within the host's ``[program_tree]``
    limits; what the host would refuse in it is a ConfigError, what this user may not
    read an AuthorizationError.
    """
    program = Path(path)
    if program.is_dir():
        return _tree_subprin_on(config, program, entry, _offered(config))
    if entry is not None:
        raise ConfigError(f"{program} is a file: an entry is for a program directory")
    program_hash = measure_file(program)
    try:
        with open(program, "rb") as file:
            head = file.read(SHEBANG_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read {program}: {exc.strerror or exc}") from None
    offered = _offered(config)
    try:
        chosen = choose_interpreter(head, what=str(program), interpreters=offered)
    except HostError as exc:
        raise ConfigError(str(exc)) from None
    if chosen is None:
        return program_subprin(program_hash)
    assert offered is not None  # an interpreter is only chosen from those offered
    prepared = PreparedProgram(
        path=program,
        directory=program.parent,
        program_hash=program_hash,
        source=str(program),
        interpreter=offered[chosen],
    )
    return prepared.subprin()


def _offered(config: LinuxHostConfig) -> dict[str, Interpreter] | None:
    """The interpreters the host of ``config`` offers, checked as it checks them."""
    owner = os.geteuid()
    if config.directory is not None:
        try:
            owner = os.stat(config.directory).st_uid
        except OSError as exc:
            raise ConfigError(
                f"cannot read the host directory {config.directory}: {exc.strerror or exc}"
            ) from None
    if config.interpreters is None:
        return None
    return {
        name: check_interpreter(name, where, owner=owner) for name, where in config.interpreters
    }


def _tree_subprin_on(
    config: LinuxHostConfig,
    program: Path,
    entry: str | None,
    offered: dict[str, Interpreter] | None,
) -> auth.SubPrin:
    """A program directory's name: the host's walk and copy (``_prepare_tree``) into
    a scratch directory, then the interpreter its entry asks for, as the host does."""
    uid, gid, groups = os.geteuid(), os.getegid(), tuple(os.getgroups())
    what = f"the program {program}"
    limits = config.program_tree
    try:
        with tempfile.TemporaryDirectory(prefix="taonet-naming-") as scratch:
            found, real = _lookup(os.path.abspath(program), uid, gid, groups, what)
            try:
                prepared, _ = _prepare_tree(
                    found.fd,
                    real,
                    str(program),
                    Path(scratch) / "programs",
                    uid,
                    gid,
                    groups,
                    limits.max_bytes,
                    entry,
                    limits,
                )
            finally:
                found.close()
            try:
                with open(prepared.path, "rb") as file:
                    head = file.read(SHEBANG_BYTES)
            except OSError as exc:
                raise ConfigError(f"cannot read {what}: {exc.strerror or exc}") from None
            finally:
                prepared.cleanup()
            where = f"{program}/{prepared.entry}"
            chosen = choose_interpreter(
                head, what=where, interpreters=offered, entry=prepared.entry
            )
    except AuthorizationError:
        raise
    except HostError as exc:
        raise ConfigError(str(exc)) from None
    interpreter = None if chosen is None or offered is None else offered[chosen]
    return attrs.evolve(prepared, interpreter=interpreter).subprin()
