"""The PostgreSQL a load test may use: a ``postgresql://`` URL to this machine only.

Pure: no I/O, no psycopg (names are not looked up). :func:`check_postgres_url`
accepts a libpq URL whose every host (in the authority and in a ``host=``
parameter, each of a comma-separated list) is a literal loopback address
(127.0.0.0/8, ::1) or an absolute Unix socket directory, and refuses the rest
with a one-line :class:`~taonet.ConfigError`:

* no host at all (libpq would then take ``PGHOST`` from the environment), a name
  such as ``localhost`` (looked up by libpq, so not known to be loopback here: write
  127.0.0.1), any other address;
* a ``hostaddr=`` that is not a loopback address, or, without one, a ``PGHOSTADDR``
  in the environment that is not (libpq connects to hostaddr whatever host says);
* ``service=`` or ``PGSERVICE`` (a service file may name another address), and
  ``options=`` (the tool sets the schema through it, :func:`with_schema`);
* any text that is not a ``postgresql://`` (or ``postgres://``) URL.

:func:`with_schema` adds the load test's schema (``-c search_path=...``), an
``application_name`` and (unless the URL has one) a ``connect_timeout`` to a checked
URL; :func:`redact` drops its password.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from taonet import ConfigError

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_URL",
    "SCHEMA_PREFIX",
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


def check_postgres_url(url: str, environ: Mapping[str, str]) -> str:
    """``url`` if it only reaches a PostgreSQL on this machine (see the module's text);
    ConfigError if not. ``environ``: the environment libpq will see."""
    if len(url) > MAX_URL:
        raise ConfigError(f"--postgres: the URL is longer than {MAX_URL} characters")
    shown = redact(url)
    if not re.match(r"(?i)postgres(ql)?://", url):
        raise ConfigError(f"--postgres {shown}: not a postgresql:// URL")
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
    return url


def with_schema(url: str, schema: str, application_name: str) -> str:
    """``url`` (checked) with its tables in ``schema`` and ``application_name`` set."""
    if not _SCHEMA.fullmatch(schema):
        raise ValueError(f"not a load-test schema name: {schema!r}")
    parts = urlsplit(url)
    search_path = quote(f"-c search_path={schema}")
    added = f"options={search_path}&application_name={quote(application_name)}"
    if "connect_timeout" not in dict(parse_qsl(parts.query)):
        added += f"&connect_timeout={CONNECT_TIMEOUT}"  # every connection of the run bounded
    query = f"{parts.query}&{added}" if parts.query else added
    return parts._replace(query=query).geturl()


def redact(url: str) -> str:
    """``url`` without its password (for messages and the report), at most 300 characters."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url[:300]
    if password is not None:
        userinfo, _, hostports = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{hostports}")
    query = re.sub(r"(?i)(^|&)password=[^&]*", r"\1password=***", parts.query)
    return parts._replace(query=query).geturl()[:300]
