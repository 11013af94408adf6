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
(the same functions), and raises ConfigError for what it cannot name: a program
directory (its manifest comes from a walk as the caller; name it with a rule), or a
script asking for an interpreter the host does not offer. :func:`program_rule_on`
is the guard rule that lets it execute, and :func:`host_config_at` reads the
``host.toml`` of a host directory if there is one (``taonet domain policy
--add-program`` names programs as the domain's host does once that host exists).
"""

from __future__ import annotations

import os
from pathlib import Path

from taonet import auth
from taonet._errors import ConfigError, HostError
from taonet.domain import measure_file, program_subprin
from taonet.hosts.linux._config import CONFIG_FILE, LinuxHostConfig
from taonet.hosts.linux._interpreters import SHEBANG_BYTES, check_interpreter, choose_interpreter
from taonet.hosts.linux._process import PreparedProgram

__all__ = ["host_config_at", "program_rule_on", "program_subprin_on"]


def host_config_at(directory: str | os.PathLike[str]) -> LinuxHostConfig | None:
    """The configuration of the host in ``directory``; None if it holds no host.toml."""
    if not (Path(directory) / CONFIG_FILE).is_file():
        return None
    return LinuxHostConfig.load(Path(directory))


def program_rule_on(config: LinuxHostConfig | None, path: str | os.PathLike[str]) -> auth.Form:
    """``Authorized(ext.NAME, "Execute")`` for the program file ``path`` as the host of
    ``config`` names it; with no host (None), by the file's hash, ``Program([h])``."""
    if config is None:
        ext = program_subprin(measure_file(Path(path)))
    else:
        ext = program_subprin_on(config, path)
    return auth.Pred("Authorized", (auth.PrinTail(ext), auth.Str("Execute")))


def program_subprin_on(config: LinuxHostConfig, path: str | os.PathLike[str]) -> auth.SubPrin:
    """The extension the host of ``config`` names the program file ``path`` with.

    Without program ids (a host with ``program_ids`` adds the next id, which no rule
    can know). The host's interpreters are checked as the host checks them, with the
    owner of the host directory as the host's user (this process's, if unknown).
    """
    program = Path(path)
    if program.is_dir():
        raise ConfigError(
            f"{program} is a program directory: its name comes from a walk of the tree "
            "(ProgramTree([manifest], entry, ...)); allow it with a rule naming it"
        )
    program_hash = measure_file(program)
    try:
        with open(program, "rb") as file:
            head = file.read(SHEBANG_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read {program}: {exc.strerror or exc}") from None
    owner = os.geteuid()
    if config.directory is not None:
        try:
            owner = os.stat(config.directory).st_uid
        except OSError as exc:
            raise ConfigError(
                f"cannot read the host directory {config.directory}: {exc.strerror or exc}"
            ) from None
    offered = None
    if config.interpreters is not None:
        offered = {
            name: check_interpreter(name, where, owner=owner) for name, where in config.interpreters
        }
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
