"""What environment a hosted program gets.

Only what was hashed decides a program's name, so nothing a caller sends may change
the code that runs under it. A start request's variables pass only if the host
allows them (:data:`DEFAULT_PASS_ENVIRONMENT` plus ``pass_environment`` in
``host.toml``) and never if they change what code runs (:data:`DENIED_ENVIRONMENT`:
the loader's, the interpreters' and the shells' variables). ``PATH`` is the host's
(``program_path``, else its own), never the caller's; a ``#!/usr/bin/env NAME``
script does not look its interpreter up in it on a host that offers interpreters
(``[interpreters]`` in ``host.toml``): the host runs its own ``NAME``, isolated
(:mod:`taonet.hosts.linux._interpreters`). ``HOME`` is the user's from the password
database, and ``PYTHONNOUSERSITE=1`` keeps a Python program from importing the
user's ``~/.local`` site packages.

``HOME``, like the working directory, is part of the environment the caller controls,
not of the program's name. A program the host's interpreter runs loads no code from
either (Python runs isolated: no user site, no ``PYTHON*`` variables, neither
directory on ``sys.path``). A program the kernel runs through an interpreter of its
own choosing (``#!/usr/bin/node``, ``ruby``, ``perl``) may: node resolves
``require()`` through ``$HOME/.node_modules``, ``$HOME/.node_libraries`` and the
``node_modules`` directories above its working directory, Ruby and Perl their user
library paths; under such a program's name runs whatever code the caller keeps
there. Where the name must cover every line of code that runs, use the host's
interpreters or a self-contained binary.
"""

from __future__ import annotations

import pwd
from collections.abc import Sequence
from typing import Final

__all__ = ["DEFAULT_PASS_ENVIRONMENT", "DENIED_ENVIRONMENT", "home_of", "program_environment"]

#: Environment variables a caller's request may pass to a program by default
#: (``pass_environment`` in host.toml adds names; a trailing * matches a prefix).
DEFAULT_PASS_ENVIRONMENT: Final = (
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TERM",
    "TZ",
    "USER",
    "LOGNAME",
    "COLUMNS",
    "LINES",
    "NO_COLOR",
    "TAONET_LOG",
    "TAO_DOMAIN",
)
#: Never passed, whatever the configuration: they change what code runs (the
#: loader's, the interpreters', the shells'), which would run code that was not
#: measured under the program's name. PATH is the host's, not the caller's, for
#: the same reason (programs run commands found in it).
DENIED_ENVIRONMENT: Final = (
    "LD_*",
    "PYTHON*",
    "PERL5*",
    "PERLLIB",
    "RUBY*",
    "NODE_*",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "BASH_ENV",
    "ENV",
    "BASHOPTS",
    "SHELLOPTS",
    "PS4",
    "IFS",
    "CDPATH",
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_*",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TMPDIR",
    "TZDIR",
    "PATH",
    "HOME",
    "CLOUDPROXY_*",
)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def program_environment(
    requested: Sequence[tuple[str, str]], *, allowed: Sequence[str], path: str, home: str
) -> dict[str, str]:
    """The environment a hosted program gets: the requested variables the host allows
    (``allowed`` names, a trailing * matching a prefix), never a denied one; the
    host's ``PATH``; the user's ``HOME`` from the password database; and
    ``PYTHONNOUSERSITE=1`` (a Python program must not import the user's
    ``~/.local`` site packages: code that was not measured)."""
    env = {
        key: value
        for key, value in requested
        if _matches(key, allowed) and not _matches(key, DENIED_ENVIRONMENT)
    }
    env["PATH"] = path
    env["HOME"] = home
    env["PYTHONNOUSERSITE"] = "1"
    return env


def home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:
        return "/"
