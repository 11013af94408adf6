"""``taonet secret create|read|write|list|rotate|delete|grant``: an operator's requests.

The operator acts with the domain's policy key: the command unlocks it (asks its
password, or reads ``--password-file``), connects to the secret server over a Tao
channel as an anonymous client (it checks the server's certificate against the
domain's policy certificate and presents none), asks it which store it serves (an
Info request: the store id), and signs each request for the server it reached
(:func:`taonet.secrets.sign_operator_request`: every field, the server's principal
and store id, a fresh nonce, a 60 s window). The server accepts it once, as the
policy key's request; another instance of the same program over another database
refuses it.

Exit statuses as every command's: not found (3) for an object that is not there,
refused (4) for a wrong password or a refusal by the server, unavailable (5) for a
server that cannot be reached. ``-o json`` prints one document; values as hex.
"""

from __future__ import annotations

import argparse
import binascii
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Final

from taonet.cli._domain_cmd import add_domain_option, load_domain
from taonet.cli._failures import (
    NotFoundError,
    RefusedError,
    UnavailableError,
    UsageError,
)
from taonet.cli._output import add_output_option, emit
from taonet.cli._password import add_password_option, get_password

__all__ = ["register"]

#: Where the server listens unless told (``taonet secret-server``'s default).
DEFAULT_SERVER: Final = "127.0.0.1:8125"
_SERVER_VARIABLE: Final = "TAO_SECRET_SERVER"
_MAX_VALUE_FILE: Final = 1024 * 1024

_EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "": ("taonet secret read /app/db/password --domain ./domain --server 127.0.0.1:8125",),
    "create": (
        "taonet secret create /app/key --domain ./domain            # a random AES-256 key",
        "taonet secret create /app/db/password --value-file pw.txt --protector /app/key",
    ),
    "read": (
        "taonet secret read /app/db/password --domain ./domain -o json | jq -r .value_hex",
        "taonet secret read /app/key --epoch 2 --raw --password-file pw > key.bin",
    ),
    "write": ("taonet secret write /app/db/password --value 'new secret' --domain ./domain",),
    "list": ("taonet secret list /app --domain ./domain -o json | jq -r '.names[]'",),
    "rotate": ("taonet secret rotate /app/key --domain ./domain",),
    "delete": ("taonet secret delete /app/db/password --epoch 1 --domain ./domain",),
    "grant": (
        "taonet secret grant 'ext.Program([0a0b])' --ops Read --name /app/db --domain ./domain",
        "taonet secret grant 'ext.Program([0a0b])' --ops Read,Write --name /app --revoke",
    ),
}


def _epilog(action: str) -> str:
    lines = _EXAMPLES[action]
    return "Example:\n" + "\n".join(f"  {line}" for line in lines)


def _parser(cmds: Any, action: str, help_text: str, description: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = cmds.add_parser(
        action,
        help=help_text,
        description=textwrap.fill(description, 79),
        epilog=_epilog(action),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_domain_option(p)
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=os.environ.get(_SERVER_VARIABLE) or DEFAULT_SERVER,
        help=f"the secret server (default ${_SERVER_VARIABLE}, else {DEFAULT_SERVER})",
    )
    add_password_option(p)
    add_output_option(p)
    return p


def _value_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--value", metavar="TEXT", help="the value, as UTF-8 text")
    group.add_argument("--value-hex", metavar="HEX", help="the value, in hex")
    group.add_argument(
        "--value-file", metavar="FILE", type=Path, help="the value: the bytes of FILE (- stdin)"
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "secret",
        help="act on the secret server's objects with the policy key (operator)",
        description=textwrap.fill(
            "Operator requests to the secret server, signed by the domain's policy key"
            " (its password is asked, or read with --password-file) over an anonymous"
            " Tao channel.",
            79,
        ),
        epilog=_epilog(""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = p.add_subparsers(dest="secret_command", metavar="ACTION", required=True)

    create = _parser(
        cmds,
        "create",
        "create an object (epoch 1 for a new name): a value, or a random key",
        "Create NAME at epoch 1 (a deleted name goes on after its last epoch): with a"
        " value (type 'bytes' unless --type), or without one a random aes256-gcm key."
        " --protector names the key that protects it (default: the server's master key).",
    )
    create.add_argument("name", metavar="NAME")
    _value_options(create, required=False)
    create.add_argument("--type", metavar="TYPE", help="the object's type")
    create.add_argument("--protector", metavar="NAME", help="the key that protects it")
    create.set_defaults(func=_run, build=_create)

    read = _parser(
        cmds, "read", "read an object", "Read NAME at --epoch, or at its latest active epoch."
    )
    read.add_argument("name", metavar="NAME")
    read.add_argument("--epoch", metavar="N", type=int)
    read.add_argument(
        "--raw", action="store_true", help="print the value's bytes alone (for a pipe)"
    )
    read.set_defaults(func=_run, build=_read)

    write = _parser(
        cmds,
        "write",
        "replace an object's value",
        "Replace the value of NAME at --epoch (default: its latest active epoch), in place.",
    )
    write.add_argument("name", metavar="NAME")
    write.add_argument("--epoch", metavar="N", type=int)
    _value_options(write, required=True)
    write.set_defaults(func=_run, build=_write)

    listing = _parser(
        cmds, "list", "list names under a prefix", "Every name under PREFIX (default /)."
    )
    listing.add_argument("prefix", metavar="PREFIX", nargs="?", default="/")
    listing.set_defaults(func=_run, build=_list)

    rotate = _parser(
        cmds,
        "rotate",
        "make a new epoch of an object",
        "A new epoch of NAME (a random key for a key, else --value...): what the old"
        " epoch protected is rewrapped under it; the old epoch is retired.",
    )
    rotate.add_argument("name", metavar="NAME")
    _value_options(rotate, required=False)
    rotate.set_defaults(func=_run, build=_rotate)

    delete = _parser(
        cmds, "delete", "delete an object", "Delete NAME at --epoch, or every epoch of it."
    )
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--epoch", metavar="N", type=int)
    delete.set_defaults(func=_run, build=_delete)

    grant = _parser(
        cmds,
        "grant",
        "give (or --revoke) a principal rights on a name prefix",
        "Record that PRINCIPAL (a principal, or a tail such as ext.Program([hash]) for"
        " that program on any host) may do --ops on --name and the names under it, in"
        " addition to what the domain's guard gives; signed by the policy key, so the"
        " server honours no grant it did not sign. --revoke takes the ops back.",
    )
    grant.add_argument("principal", metavar="PRINCIPAL")
    grant.add_argument(
        "--ops", metavar="OPS", required=True, help="comma-separated: Read,Write,Create,Delete,Own"
    )
    grant.add_argument("--name", metavar="PREFIX", required=True, help="the name prefix")
    grant.add_argument("--revoke", action="store_true", help="take the ops back")
    grant.set_defaults(func=_run, build=_grant)


# -- requests ---------------------------------------------------------------------------


def _value(args: argparse.Namespace) -> bytes | None:
    if args.value is not None:
        return str(args.value).encode()
    if args.value_hex is not None:
        try:
            return binascii.unhexlify(args.value_hex.strip())
        except (binascii.Error, ValueError):
            raise UsageError("--value-hex is not hex") from None
    if args.value_file is not None:
        if str(args.value_file) == "-":
            return sys.stdin.buffer.read(_MAX_VALUE_FILE + 1)[: _MAX_VALUE_FILE + 1]
        from taonet.files import read_file

        if not args.value_file.exists():
            raise NotFoundError(f"no file {args.value_file}")
        return read_file(args.value_file, limit=_MAX_VALUE_FILE)
    return None


def _create(args: argparse.Namespace) -> Any:
    from taonet.protected import KEY_TYPE
    from taonet.secrets import CreateRequest

    value = _value(args)
    kind = args.type or ("bytes" if value is not None else KEY_TYPE)
    return CreateRequest(args.name, value, kind, args.protector)


def _read(args: argparse.Namespace) -> Any:
    from taonet.secrets import ReadRequest

    return ReadRequest(args.name, args.epoch)


def _write(args: argparse.Namespace) -> Any:
    from taonet.secrets import WriteRequest

    value = _value(args)
    assert value is not None
    return WriteRequest(args.name, value, args.epoch)


def _list(args: argparse.Namespace) -> Any:
    from taonet.secrets import MAX_PAGE, ListRequest

    return ListRequest(args.prefix, None, MAX_PAGE)


def _rotate(args: argparse.Namespace) -> Any:
    from taonet.secrets import RotateRequest

    return RotateRequest(args.name, _value(args))


def _delete(args: argparse.Namespace) -> Any:
    from taonet.secrets import DeleteRequest

    return DeleteRequest(args.name, args.epoch)


def _grant(args: argparse.Namespace) -> Any:
    from taonet.secrets import GrantRequest

    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    return GrantRequest(args.principal, ops, args.name, revoke=args.revoke)


# -- running ----------------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--server must be HOST:PORT, not {text[:100]!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _run(args: argparse.Namespace) -> int:
    import trio

    try:
        request = args.build(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    address = _address(args.server)
    domain = load_domain(args)
    signer = domain.unlock(get_password(args.password_file, prompt="Policy key password"))
    result = trio.run(_call, domain.policy_cert, signer, address, request)
    _print(args, request, result)
    return 0


async def _call(policy_cert: bytes, signer: Any, address: tuple[str, int], request: Any) -> Any:
    """Send ``request`` (every page of a List) signed for the server at ``address``."""
    import attrs
    import trio

    from taonet import ProtocolError
    from taonet.channel import ChannelIdentity, open_channel
    from taonet.secrets import (
        InfoRequest,
        Listing,
        ListRequest,
        ServerInfo,
        connect,
        sign_operator_request,
    )

    identity = ChannelIdentity.anonymous(policy_cert)
    host, port = address
    with trio.fail_after(60):
        try:
            probe = await open_channel(host, port, identity)
        except (OSError, ProtocolError) as exc:
            raise UnavailableError(
                f"cannot reach the secret server at {host}:{port}: {exc}"
            ) from exc
        server = probe.peer.principal
        await probe.aclose()
        if server is None:
            raise RefusedError(f"the server at {host}:{port} has no principal")
        async with connect(address, identity, server=server) as store:
            # The store this server serves: the credential is good for it alone (not for
            # another instance of the same program over another database).
            try:
                info = await store.call(InfoRequest())
            except ProtocolError as exc:
                raise UnavailableError(
                    f"the secret server at {host}:{port} does not say which store it serves"
                    f" (a version older than this taonet?): {exc}"
                ) from exc
            if not isinstance(info, ServerInfo):
                raise UnavailableError(
                    f"the secret server at {host}:{port} answered Info with {type(info).__name__}"
                )

            async def signed(req: Any) -> Any:
                return await store.call(
                    sign_operator_request(
                        req, signer, server=server, store=info.store_id, now_ns=time.time_ns()
                    )
                )

            try:
                if not isinstance(request, ListRequest):
                    return await signed(request)
                names: list[str] = []
                page: Any = request
                while True:
                    answer = await signed(page)
                    assert isinstance(answer, Listing)
                    names.extend(answer.names)
                    if answer.next_after is None:
                        return names
                    page = attrs.evolve(page, after=answer.next_after)
            except Exception as exc:
                mapped = _cli_error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc


def _cli_error(exc: Exception) -> Exception:
    from taonet.secrets import ErrorCode, SecretServiceError

    if not isinstance(exc, SecretServiceError):
        return exc
    kinds: dict[Any, type[Exception]] = {
        ErrorCode.NOT_FOUND: NotFoundError,
        ErrorCode.UNAUTHORIZED: RefusedError,
        ErrorCode.UNAVAILABLE: UnavailableError,
    }
    kind = kinds.get(exc.code)
    return exc if kind is None else kind(str(exc))


def _print(args: argparse.Namespace, request: Any, result: Any) -> None:
    from taonet.protected import SecretObject
    from taonet.secrets import Changed, Deleted, Granted

    if isinstance(result, SecretObject):
        if getattr(args, "raw", False):
            sys.stdout.buffer.write(result.value)
            return
        doc = {
            "name": result.id.name,
            "epoch": result.id.epoch,
            "type": result.type,
            "status": result.status.value,
            "not_before": _iso(result.not_before),
            "not_after": _iso(result.not_after),
            "value_hex": result.value.hex(),
        }
        emit(
            args,
            doc,
            lambda: print(
                f"{result.id.name} epoch {result.id.epoch} ({result.type},"
                f" {result.status.value}): {result.value.hex()}"
            ),
        )
    elif isinstance(result, Changed):
        doc = {"name": result.id.name, "epoch": result.id.epoch}
        verb = {"create": "created", "write": "wrote", "rotate": "rotated to"}[args.secret_command]
        emit(args, doc, lambda: print(f"{verb} {result.id.name} epoch {result.id.epoch}"))
    elif isinstance(result, Deleted):
        emit(
            args,
            {"name": result.name, "epochs": list(result.epochs)},
            lambda: print(f"deleted {result.name} epoch(s) {', '.join(map(str, result.epochs))}"),
        )
    elif isinstance(result, Granted):
        doc = {
            "principal": request.principal,
            "ops": list(request.ops),
            "name": request.name,
            "revoked": request.revoke,
        }
        what = "revoked" if request.revoke else "granted"
        emit(
            args,
            doc,
            lambda: print(
                f"{what} {','.join(request.ops)} on {request.name} to {request.principal}"
            ),
        )
    else:
        names = list(result)
        emit(args, {"prefix": request.prefix, "names": names}, lambda: _lines(names))


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _lines(lines: list[str]) -> None:
    for line in lines:
        print(line)
