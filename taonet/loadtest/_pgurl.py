"""The PostgreSQL a load test may use: a ``postgresql://`` URL to this machine only.

:func:`check_postgres_url` accepts a libpq URL whose every host (in the authority
and in a ``host=`` parameter, each of a comma-separated list) is a literal loopback
address (127.0.0.0/8, ::1) or an absolute Unix socket directory, and refuses the
rest with a one-line :class:`~taonet.ConfigError`:

* no host at all (libpq would then take ``PGHOST`` from the environment), an empty
  host in a list (libpq's default), a name such as ``localhost`` (looked up by libpq,
  so not known to be loopback here: write 127.0.0.1), any other address;
* a ``hostaddr=`` that is not a loopback address, or, without one, a ``PGHOSTADDR``
  in the environment that is not (libpq connects to hostaddr whatever host says);
* ``service=`` or ``PGSERVICE`` (a service file may name another address), and
  ``options=`` (the tool sets the schema through it, :func:`with_schema`);
* a ``#`` anywhere (libpq does not cut a URL at a fragment, URL parsers do) and an
  authority with more than one ``@`` (libpq splits at the first, URL parsers at the
  last: write ``%40`` in a user name or password);
* any text that is not a ``postgresql://`` (or ``postgres://``) URL.

The checks are made twice: on the text, and on what libpq itself will use
(``psycopg.conninfo.conninfo_to_dict`` of the URL each process gets, from
:func:`with_schema`, with the environment), so that a URL the two read differently is
refused. That needs psycopg (the ``postgres`` extra); no connection is made.

:func:`with_schema` gives the URL a process connects with: libpq's own reading of a
checked URL (``psycopg.conninfo.make_conninfo``) with the load test's schema
(``options=-c search_path=...``), an ``application_name`` and (unless the URL has
one) a ``connect_timeout``, written back as a ``postgresql://?key=value&...`` URL;
:func:`check_final_url` checks such a URL (each process's, again, before it starts).
:func:`redact` drops a URL's password (in the authority and in a ``password=``
parameter, however it is percent-encoded), for messages and the report: it is
``taonet_services.storage.redact_url``, which the storage layer's messages use too. A URL is
on the command line, which other users of the machine may read (``ps``): give the
password in ``PGPASSWORD`` or a ``PGPASSFILE`` (``~/.pgpass``) rather than in the URL.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from taonet import ConfigError

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_URL",
    "SCHEMA_PREFIX",
    "check_final_url",
    "check_postgres_url",
    "redact",
    "with_schema",
]

#: Seconds a connection attempt may take (added to the URL unless it says).
CONNECT_TIMEOUT: Final = 10
#: The longest URL accepted.
MAX_URL: Final = 2000
#: Every schema the tool makes starts so (``taonet_loadtest_`` and 12 hex digits).
SCHEMA_PREFIX: Final = "taonet_loadtest_"
_SCHEMA: Final = re.compile(r"taonet_loadtest_[0-9a-f]{12}")
#: A schema name of the right form, to check what libpq makes of a URL before the
#: run's schema is chosen.
_PROBE_SCHEMA: Final = SCHEMA_PREFIX + "0" * 12


def _host_ok(host: str, url: str) -> None:
    if host.startswith("/"):
        return  # a Unix socket directory on this machine
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(
            f"--postgres {url}: host {host[:100]!r} is not a loopback IP address or a Unix"
            " socket directory (names are not looked up: write 127.0.0.1 for localhost)"
        ) from None
    if not ip.is_loopback or (ip.version == 6 and ip != ipaddress.IPv6Address("::1")):
        raise ConfigError(
            f"--postgres {url}: host {host[:100]!r} is not a loopback address: a load test"
            " only uses this machine"
        )


def _netloc_hosts(netloc: str) -> list[str]:
    hostports = netloc.rpartition("@")[2]
    hosts = []
    for item in hostports.split(","):
        item = unquote(item)
        if item.startswith("["):
            hosts.append(item[: item.find("]") + 1] if "]" in item else item)
        elif item.startswith("/"):
            hosts.append(item)
        else:
            hosts.append(item.partition(":")[0])
    return [h for h in hosts if h]


def _libpq_params(url: str, shown: str) -> dict[str, str]:
    """What libpq reads in ``url`` (its own parser, through psycopg)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ConfigError("--postgres needs psycopg: pip install 'taonet[postgres]'") from None
    import psycopg

    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        why = " ".join(str(exc).split())[:200]
        raise ConfigError(f"--postgres {shown}: libpq does not accept it ({why})") from None
    return {key: str(value) for key, value in params.items() if value is not None}


def _check_libpq(params: Mapping[str, str], environ: Mapping[str, str], shown: str) -> None:
    """Refuse what libpq would use to reach another machine: ``params`` as libpq reads
    them, ``environ`` as it will see it."""
    if params.get("service") or environ.get("PGSERVICE"):
        raise ConfigError(f"--postgres {shown}: service= or PGSERVICE is not accepted"
                          " (a service file may name another host)")  # fmt: skip
    host = params.get("host")
    if not host:
        raise ConfigError(
            f"--postgres {shown}: no host (give 127.0.0.1 or a socket directory, e.g."
            " ?host=/var/run/postgresql)"
        )
    for item in host.split(","):
        if not item:
            raise ConfigError(f"--postgres {shown}: an empty host in {host[:100]!r}"
                              " (libpq would take its default)")  # fmt: skip
        _host_ok(item, shown)
    hostaddr = params.get("hostaddr") or environ.get("PGHOSTADDR") or ""
    for addr in hostaddr.split(","):
        if addr:
            _host_ok(addr.lstrip("/") or "-", shown)  # an address, never a path


def check_postgres_url(url: str, environ: Mapping[str, str]) -> str:
    """``url`` if it only reaches a PostgreSQL on this machine (see the module's text);
    ConfigError if not. ``environ``: the environment libpq will see."""
    if len(url) > MAX_URL:
        raise ConfigError(f"--postgres: the URL is longer than {MAX_URL} characters")
    shown = redact(url)
    if not re.match(r"(?i)postgres(ql)?://", url):
        raise ConfigError(f"--postgres {shown}: not a postgresql:// URL")
    if "#" in url:
        raise ConfigError(
            f"--postgres {shown}: '#' is not accepted (libpq does not end a URL there)"
        )
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    if netloc.count("@") > 1:
        raise ConfigError(
            f"--postgres {shown}: more than one '@' before the host (libpq splits at the"
            " first: write %40 in a user name or password)"
        )
    try:
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"--postgres {shown}: not a URL ({exc})") from None
    keys = [key for key, _ in params]
    for key in ("service", "options"):
        if key in keys:
            why = "the tool sets the schema itself" if key == "options" else "it may name a host"
            raise ConfigError(f"--postgres {shown}: {key}= is not accepted ({why})")
    if environ.get("PGSERVICE"):
        raise ConfigError("--postgres: PGSERVICE is set (a service file may name another host)")
    hosts = _netloc_hosts(parts.netloc)
    for key, value in params:
        if key == "host":
            hosts.extend(h for h in value.split(",") if h)
    if not hosts:
        raise ConfigError(
            f"--postgres {shown}: no host (give 127.0.0.1 or a socket directory, e.g."
            " ?host=/var/run/postgresql)"
        )
    for host in hosts:
        _host_ok(host, shown)
    hostaddrs = [v for k, v in params if k == "hostaddr"]
    if not hostaddrs and environ.get("PGHOSTADDR"):
        hostaddrs = [environ["PGHOSTADDR"]]
    for value in hostaddrs:
        for addr in value.split(","):
            if addr:
                _host_ok(addr.lstrip("/") or "-", shown)  # an address, never a path
    # Then what libpq itself will read, in the URL the processes get.
    if "options" in _libpq_params(url, shown):
        raise ConfigError(f"--postgres {shown}: options= is not accepted"
                          " (the tool sets the schema itself)")  # fmt: skip
    final = with_schema(url, _PROBE_SCHEMA, "taonet-loadtest")
    check_final_url(final, _PROBE_SCHEMA, environ, shown=shown)
    return url


def check_final_url(
    url: str, schema: str, environ: Mapping[str, str], *, shown: str | None = None
) -> str:
    """``url`` (from :func:`with_schema`) if libpq, reading it with ``environ``, only
    reaches this machine and puts the tables in ``schema``; ConfigError if not (naming
    the URL as ``shown``, by default ``url`` without its password)."""
    shown = redact(url) if shown is None else shown
    params = _libpq_params(url, shown)
    _check_libpq(params, environ, shown)
    if params.get("options") != f"-c search_path={schema}":
        raise ConfigError(f"--postgres {shown}: libpq would not use the run's schema {schema}")
    return url


def with_schema(url: str, schema: str, application_name: str) -> str:
    """``url`` (checked) as libpq reads it, with its tables in ``schema`` and
    ``application_name`` set: a ``postgresql://?...`` URL of parameters only."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if not _SCHEMA.fullmatch(schema):
        raise ValueError(f"not a load-test schema name: {schema!r}")
    extra: dict[str, str | int] = {
        "options": f"-c search_path={schema}",
        "application_name": application_name,
    }
    if "connect_timeout" not in conninfo_to_dict(url):
        extra["connect_timeout"] = CONNECT_TIMEOUT  # every connection of the run bounded
    params = conninfo_to_dict(make_conninfo(url, **extra))
    return "postgresql://?" + urlencode(params, quote_via=quote, safe="")


def redact(url: str) -> str:
    """``url`` without its password (for messages and the report), at most 300
    characters: the storage layer's :func:`taonet_services.storage.redact_url`."""
    from taonet_services.storage import redact_url

    return redact_url(url)
