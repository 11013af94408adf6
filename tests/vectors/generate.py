"""Make the golden vectors of taonet's host-side formats (run from the repository root):

    .venv/bin/python -m tests.vectors.generate                  # every file below
    .venv/bin/python -m tests.vectors.generate tao_rpc admin    # only those

Files (in this directory):

* ``attestation.json``: three attestations made with fixed P-256 keys (a program's
  statement, a host's delegation to a stacked host's key, and a statement by that
  stacked host carrying the delegation), each with what it validates to.
* ``tao_rpc.json``: the exact frames of Tao RPC exchanges (request and response, as
  on the wire: 4-byte lengths, RPCHeader, body) between the real :class:`RPCTao` and
  the real :func:`serve_tao_rpc`, in front of :class:`FixedTao`, a Tao whose answers
  are fixed; plus requests only a raw client sends (an unknown method).
* ``admin.json``: the exact frames of admin socket exchanges between the real
  :class:`AdminClient` and the real :func:`serve_admin`, in front of
  :class:`FixedBackend`; the error answers carry their kind.
* ``sealed_blob.json``: a soft host keyset with fixed keys (raw, and sealed as the
  ``keys`` file under the tests' password), blobs it sealed under each policy, a
  rollback-protected blob, and shared secrets.

The keys are derived from fixed seeds, so everything deterministic comes out the same
on every run: statements, delegations, frames, blob headers, the data inside a
rollback-protected blob, shared secrets. ECDSA signatures, AES-GCM nonces and the
keyset's scrypt salt are fresh on every run: the tests check that the stored ones are
still accepted, and that the code still makes the deterministic bytes exactly.

Regenerate a file only for a deliberate change of its format, and say so in the
commit: a vector that changed is a wire change that programs built against the old
bytes will see. The tests (tests/attestation/test_attestation_vectors.py,
tests/hosts/test_tao_rpc_vectors.py, tests/hosts/test_admin_vectors.py,
tests/hosts/test_sealed_blob_vectors.py) import the recipes below.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import AuthorizationError, HostError, TaoError, auth
from taonet.attestation import UNROOTED, Attestation, Proven, attest, validate
from taonet.crypto import Crypter, KdfParams, Keyset, Signer, seal_keyset
from taonet.hosts import RPCTao, SoftHost, Tao, serve_tao_rpc
from taonet.hosts.linux import AdminClient, Caller, ProgramInfo, StartRequest, serve_admin
from taonet.wire import encode_frame, message_class, serialize
from tests.conftest import PASSWORD

HERE: Final = Path(__file__).parent
#: 2023-11-14T22:13:20Z in ns: the time of every vector statement.
T0: Final = 1_700_000_000 * 10**9
_HOUR: Final = 3600 * 10**9
_DAY: Final = 24 * _HOUR
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# -- fixed keys and names ------------------------------------------------------------


def fixed_signer(seed: str) -> Signer:
    """A P-256 key whose scalar comes from ``seed`` (the same key on every run)."""
    digest = hashlib.sha256(b"taonet golden vector key: " + seed.encode()).digest()
    scalar = int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1
    return Signer.from_private_key(ec.derive_private_key(scalar, ec.SECP256R1()))


def fixed_bytes(seed: str) -> bytes:
    return hashlib.sha256(b"taonet golden vector bytes: " + seed.encode()).digest()


def fixed_keyset(seed: str) -> Keyset:
    return Keyset(
        signer=fixed_signer(seed),
        crypter=Crypter(fixed_bytes(seed + " crypter")),
        deriving_key=fixed_bytes(seed + " deriving"),
    )


def program_ext(seed: str, program_id: int = 0) -> auth.PrinExt:
    """``Program([hash])`` (or ``Program(id, [hash])``) of a program named by ``seed``."""
    digest = auth.Bytes(fixed_bytes("program " + seed))
    args: tuple[auth.Term, ...] = (digest,) if program_id == 0 else (auth.Int(program_id), digest)
    return auth.PrinExt("Program", args)


def key_prin(signer: Signer) -> auth.Prin:
    return auth.key_principal(signer.public_key_der())


def write_json(name: str, content: dict[str, Any]) -> Path:
    path = HERE / name
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def read_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / name).read_text())
    return data


# -- values in JSON -------------------------------------------------------------------------


def to_json(value: object) -> Any:
    """A call's argument or result as JSON (tagged by type, bytes as hex)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, auth.Prin):
        return {"prin": str(value)}
    if isinstance(value, auth.SubPrin):
        return {"subprin": str(value)}
    if isinstance(value, auth.Form):
        return {"form": str(value)}
    if isinstance(value, Attestation):
        return {"attestation": value.to_bytes().hex()}
    if isinstance(value, ProgramInfo):
        return {
            "program": {
                field.name: to_json(getattr(value, field.name))
                for field in attrs.fields(ProgramInfo)
            }
        }
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: to_json(v) for k, v in value.items()}}
    raise TypeError(f"no JSON form for {type(value).__name__}")


def from_json(value: Any) -> Any:
    """Undo :func:`to_json` (lists come back as lists)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list):
        return [from_json(v) for v in value]
    (kind, inner), *rest = value.items()
    assert not rest, value
    if kind == "hex":
        return bytes.fromhex(inner)
    if kind == "prin":
        return auth.parse_prin(inner)
    if kind == "subprin":
        return auth.parse_subprin(inner)
    if kind == "form":
        return auth.parse_form(inner)
    if kind == "attestation":
        return Attestation.from_bytes(bytes.fromhex(inner))
    if kind == "program":
        return ProgramInfo(**{k: from_json(v) for k, v in inner.items()})
    if kind == "dict":
        return {k: from_json(v) for k, v in inner.items()}
    raise ValueError(f"unknown JSON value kind {kind!r}")


def kwargs_json(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as a JSON object of :func:`to_json` values."""
    return {key: to_json(value) for key, value in kwargs.items()}


def kwargs_from_json(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: from_json(value) for key, value in kwargs.items()}


def error_json(exc: TaoError) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)}


# -- attestations ------------------------------------------------------------------------

ATTESTATION_KEYS: Final = ("host", "stacked")
#: The name a host gave the stacked host whose key signs "stacked program".
_GIVEN: Final = key_prin(fixed_signer("host")).extend(program_ext("stacked host"))


def attestation_recipes(keys: dict[str, Signer]) -> list[dict[str, Any]]:
    host = key_prin(keys["host"])
    stacked = key_prin(keys["stacked"])
    return [
        {
            "name": "program",
            "signer": "host",
            "speaker": host.extend(program_ext("golden program")),
            "message": auth.Pred("Golden", (auth.Str("vector"), auth.Int(1))),
            "time": T0,
            "expiration": T0 + 365 * _DAY,
            "delegation": None,
        },
        {
            "name": "delegation",
            "signer": "host",
            "speaker": _GIVEN,
            "message": auth.Speaksfor(delegate=stacked, delegator=_GIVEN),
            "time": T0,
            "expiration": T0 + 365 * _DAY,
            "delegation": None,
        },
        {
            "name": "stacked program",
            "signer": "stacked",
            "speaker": _GIVEN.extend(program_ext("golden program", program_id=3)),
            "message": auth.Pred("Ready", ()),
            "time": T0 + 10 * 10**9,
            "expiration": T0 + 30 * _DAY,
            "delegation": "delegation",
        },
    ]


def make_attestation(
    recipe: dict[str, Any], keys: dict[str, Signer], made: dict[str, Attestation]
) -> Attestation:
    delegation = recipe["delegation"]
    return attest(
        keys[recipe["signer"]],
        recipe["message"],
        speaker=recipe["speaker"],
        time=recipe["time"],
        expiration=recipe["expiration"],
        now_ns=T0,
        delegation=made[delegation] if delegation is not None else None,
    )


def proven_json(proven: Proven) -> dict[str, Any]:
    return {
        "speaker": str(proven.speaker),
        "message": str(proven.message),
        "not_before": proven.not_before,
        "not_after": proven.not_after,
        "signer": str(proven.signer),
        "root_signer": str(proven.root_signer),
        "root_signer_type": proven.root_signer_type,
        "root_signer_key": proven.root_signer_key.hex(),
    }


def generate_attestation() -> dict[str, Any]:
    keys = {name: fixed_signer(name) for name in ATTESTATION_KEYS}
    made: dict[str, Attestation] = {}
    vectors = []
    for recipe in attestation_recipes(keys):
        att = make_attestation(recipe, keys, made)
        made[recipe["name"]] = att
        now = recipe["time"] + _HOUR
        vectors.append(
            {
                "name": recipe["name"],
                "signer": recipe["signer"],
                "statement": str(att.statement()),
                "delegation": recipe["delegation"],
                "serialized_statement": att.serialized_statement.hex(),
                "attestation": att.to_bytes().hex(),
                "now_ns": now,
                "proven": proven_json(validate(att, now_ns=now, policy_cert=UNROOTED)),
            }
        )
    return {
        "description": (
            "Attestations (CloudProxy Attestation protobuf) made by taonet with fixed P-256 "
            "keys; generated by tests/vectors/generate.py. Each: the signer (a key below), "
            "the statement in text and in the auth binary encoding, the serialized "
            "Attestation (its ECDSA signature is randomized: accept it, do not expect to "
            "make it again), a time inside its window, and what validate(..., "
            "policy_cert=UNROOTED) proves at that time. 'stacked program' carries "
            "'delegation' as serialized_delegation."
        ),
        "keys": {
            name: {
                "private_key_pkcs8_der": signer.to_pkcs8_der().hex(),
                "public_key_der": signer.public_key_der().hex(),
                "principal": str(key_prin(signer)),
            }
            for name, signer in keys.items()
        },
        "vectors": vectors,
    }


# -- Tao RPC -------------------------------------------------------------------------------

RPC_NAME: Final = key_prin(fixed_signer("host")).extend(program_ext("golden program"))
_RPC_EXT: Final = auth.SubPrin((auth.PrinExt("Golden", (auth.Int(2),)),))


class FixedTao(Tao):
    """A Tao with fixed answers, that records every call it serves."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.counters: dict[str, int] = {}

    def _record(self, method: str, **args: Any) -> None:
        self.calls.append((method, args))

    async def get_tao_name(self) -> auth.Prin:
        self._record("get_tao_name")
        return RPC_NAME

    async def extend_tao_name(self, subprin: auth.SubPrin) -> None:
        self._record("extend_tao_name", subprin=subprin)

    async def get_random_bytes(self, n: int) -> bytes:
        self._record("get_random_bytes", n=n)
        if not 0 <= n <= 1024:
            raise HostError(f"random bytes: size must be an integer from 0 to 1024, got {n}")
        return bytes(i % 256 for i in range(n))

    async def get_shared_secret(self, n: int, policy: str = "self") -> bytes:
        self._record("get_shared_secret", n=n, policy=policy)
        return fixed_bytes("secret " + policy)[:n]

    async def attest(
        self,
        message: auth.Form,
        *,
        issuer: auth.Prin | None = None,
        time: int | None = None,
        expiration: int | None = None,
    ) -> Attestation:
        self._record("attest", message=message, issuer=issuer, time=time, expiration=expiration)
        statement = auth.Says(
            speaker=issuer or RPC_NAME, message=message, time=time, expiration=expiration
        )
        return Attestation(
            serialized_statement=auth.encode(statement),
            signer_type="key",
            signer_key=b"golden signer key",
            signature=b"golden signature",
        )

    async def seal(self, data: bytes, policy: str = "self") -> bytes:
        self._record("seal", data=data, policy=policy)
        return b"sealed(" + policy.encode() + b"):" + data

    async def unseal(self, sealed: bytes) -> tuple[bytes, str]:
        self._record("unseal", sealed=sealed)
        return self._open(sealed, b"sealed(")

    @staticmethod
    def _open(sealed: bytes, prefix: bytes) -> tuple[bytes, str]:
        policy, sep, data = sealed.removeprefix(prefix).partition(b"):")
        if not sealed.startswith(prefix) or not sep:
            raise HostError("sealed data failed its integrity check")
        return data, policy.decode()

    async def init_counter(self, label: str, counter: int) -> None:
        self._record("init_counter", label=label, counter=counter)
        self.counters[label] = counter

    async def get_counter(self, label: str) -> int:
        self._record("get_counter", label=label)
        if label not in self.counters:
            raise HostError(f"this program has no counter {label!r}")
        return self.counters[label]

    async def rollback_protected_seal(self, label: str, data: bytes, policy: str = "self") -> bytes:
        self._record("rollback_protected_seal", label=label, data=data, policy=policy)
        return b"rp-sealed(" + policy.encode() + b"):" + data

    async def rollback_protected_unseal(self, sealed: bytes) -> tuple[bytes, str]:
        self._record("rollback_protected_unseal", sealed=sealed)
        return self._open(sealed, b"rp-sealed(")


#: (method, positional args, keyword args) of the calls an RPCTao makes, in order.
RPC_CALLS: Final[list[tuple[str, list[Any], dict[str, Any]]]] = [
    ("get_tao_name", [], {}),
    ("extend_tao_name", [_RPC_EXT], {}),
    ("get_random_bytes", [16], {}),
    ("get_shared_secret", [32, "few"], {}),
    ("seal", [b"golden data", "self"], {}),
    ("unseal", [b"sealed(any):golden data"], {}),
    ("unseal", [b"not a sealed blob"], {}),
    (
        "attest",
        [auth.Pred("Golden", (auth.Str("vector"),))],
        {"issuer": RPC_NAME.extend(_RPC_EXT), "time": T0, "expiration": T0 + _HOUR},
    ),
    ("attest", [auth.Const(True)], {}),
    ("init_counter", ["golden", 3], {}),
    ("get_counter", ["golden"], {}),
    ("get_counter", ["missing"], {}),
    ("rollback_protected_seal", ["golden", b"rp data", "few"], {}),
    ("rollback_protected_unseal", [b"rp-sealed(few):rp data"], {}),
]


def rpc_raw_request(op: str, seq: int, body: bytes) -> bytes:
    header = serialize(message_class("RPCHeader")(op=op, seq=seq))
    return encode_frame(header) + encode_frame(body)


#: Requests no RPCTao sends, on a connection of their own: (what, request bytes).
RPC_RAW_REQUESTS: Final = [
    ("an unknown method", rpc_raw_request("Tao.NoSuchMethod", 1, b"")),
    ("a Seal without data", rpc_raw_request("Tao.Seal", 2, b"")),
    ("a body that does not decode", rpc_raw_request("Tao.GetRandomBytes", 3, b"\x12\xff")),
    # Answered under its op and seq (CodecError), then the connection is closed.
    ("a body over its method's limit", rpc_raw_request("Tao.GetTaoName", 4, b"\x00" * 1025)),
]


class Tap(trio.abc.Stream):
    """A stream that keeps a copy of everything sent through it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = bytearray()

    def take(self) -> bytes:
        data = bytes(self.sent)
        self.sent.clear()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def call_method(
    target: object, method: str, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    """The call's result, or its TaoError."""
    call: Callable[..., Awaitable[Any]] = getattr(target, method)
    try:
        return await call(*args, **kwargs)
    except TaoError as exc:
        return exc


async def receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def generate_tao_rpc() -> dict[str, Any]:
    exchanges = []
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client_tap, server_tap = Tap(client_stream), Tap(server_stream)
    tao = FixedTao()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_tao_rpc, server_tap, tao)
        async with RPCTao.connect(client_tap) as rpc:
            for method, args, kwargs in RPC_CALLS:
                result = await call_method(rpc, method, args, kwargs)
                exchanges.append(
                    {
                        "method": method,
                        "args": to_json(list(args)),
                        "kwargs": kwargs_json(kwargs),
                        "served": kwargs_json(tao.calls[-1][1]),
                        "request": client_tap.take().hex(),
                        "response": server_tap.take().hex(),
                        "result": error_json(result)
                        if isinstance(result, TaoError)
                        else to_json(result),
                    }
                )
    raw = []
    for what, request in RPC_RAW_REQUESTS:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_tao_rpc, server_stream, FixedTao())
            await client_stream.send_all(request)
            await client_stream.send_eof()
            response = b""
            while chunk := await client_stream.receive_some():
                response += chunk
        raw.append({"what": what, "request": request.hex(), "response": response.hex()})
    return {
        "description": (
            "Tao RPC exchanges (protorpc framing: each frame a 4-byte big-endian length, a "
            "request an RPCHeader{op, seq} frame then an RPCRequest frame, a response an "
            "RPCHeader{op, seq, error?} frame then an RPCResponse frame, empty on error), "
            "made by taonet's RPCTao against serve_tao_rpc in front of FixedTao "
            "(tests/vectors/generate.py), one connection, in order. 'served' is what the "
            "server's Tao was asked; 'result' what the client returned or raised. "
            "'raw' requests are each sent alone on a fresh connection, then the end of "
            "the stream; 'response' is all the server sent back before closing."
        ),
        "exchanges": exchanges,
        "raw": raw,
    }


# -- admin socket -----------------------------------------------------------------------

ADMIN_HOST: Final = key_prin(fixed_signer("host"))
ADMIN_PROGRAMS: Final = (
    ProgramInfo(
        name=ADMIN_HOST.extend(program_ext("golden program")),
        pid=4242,
        uid=1000,
        gid=1000,
        path="/opt/golden/program",
        program_hash=fixed_bytes("program golden program"),
        program_id=0,
    ),
    ProgramInfo(
        name=ADMIN_HOST.extend(program_ext("golden program", program_id=7)),
        pid=4243,
        uid=1000,
        gid=100,
        path="/opt/golden/other",
        program_hash=fixed_bytes("program golden program"),
        program_id=7,
        # What a host says since taonet list shows them (fields 9 and 10); the first
        # program, without them, is what an earlier host sends, which still decodes.
        started_ns=T0,
        instance_id="0123456789abcdef" * 2,
    ),
)


class FixedBackend:
    """An admin backend with fixed answers, that records every call it serves."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def start_program(self, request: StartRequest, caller: Caller) -> ProgramInfo:
        self.calls.append(
            (
                "start",
                {
                    "path": request.path,
                    "args": list(request.args),
                    "cwd": request.cwd,
                    "env": dict(request.env),
                },
            )
        )
        return ADMIN_PROGRAMS[0]

    async def stop_programs(
        self, selector: str, caller: Caller, *, kill: bool = False
    ) -> Sequence[ProgramInfo]:
        self.calls.append(("kill" if kill else "stop", {"selector": selector}))
        if selector == "4242":
            raise AuthorizationError("this caller may not stop program 4242")
        found = [p for p in ADMIN_PROGRAMS if str(p.pid) == selector]
        if not found:
            raise HostError(f"no running program matches {selector!r}")
        return found

    def list_programs(self) -> Sequence[ProgramInfo]:
        self.calls.append(("list", {}))
        return ADMIN_PROGRAMS

    async def wait_program(self, selector: str, caller: Caller) -> ProgramInfo:
        self.calls.append(("wait", {"selector": selector}))
        return attrs.evolve(ADMIN_PROGRAMS[0], exit_status=0)

    def host_name(self) -> auth.Prin:
        self.calls.append(("host_name", {}))
        return ADMIN_HOST

    async def shutdown(self, caller: Caller) -> None:
        self.calls.append(("shutdown", {}))


#: (method, positional args, keyword args) of the calls an AdminClient makes, in order.
ADMIN_CALLS: Final[list[tuple[str, list[Any], dict[str, Any]]]] = [
    ("host_name", [], {}),
    (
        "start",
        ["/opt/golden/program", ["--golden", "1"]],
        {"cwd": "/opt/golden", "env": {"PATH": "/usr/bin:/bin", "LANG": "C"}},
    ),
    ("list", [], {}),
    ("wait", ["4242"], {}),
    ("stop", ["4243"], {}),
    ("kill", ["nobody"], {}),
    ("stop", ["4242"], {}),
    ("shutdown", [], {}),
]


async def _pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    while chunk := await source.receive_some():
        await sink.send_all(chunk)


@asynccontextmanager
async def tapped_admin(backend: FixedBackend) -> AsyncIterator[tuple[AdminClient, Tap, Tap]]:
    """An AdminClient of a real admin server for ``backend``, through a relay that
    keeps what each side sent: (client, requests tap, responses tap)."""
    with tempfile.TemporaryDirectory() as directory:
        server_path = str(Path(directory) / "server.sock")
        relay_path = str(Path(directory) / "relay.sock")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_admin, backend, server_path)
            listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await listener.bind(relay_path)
            listener.listen()
            taps: list[Tap] = []
            connected = trio.Event()

            async def relay() -> None:
                conn, _ = await listener.accept()
                async with (
                    Tap(trio.SocketStream(conn)) as to_client,
                    Tap(await trio.open_unix_socket(server_path)) as to_server,
                ):
                    taps.extend([to_server, to_client])
                    connected.set()
                    async with trio.open_nursery() as pumps:
                        pumps.start_soon(_pump, to_client, to_server)
                        pumps.start_soon(_pump, to_server, to_client)

            try:
                nursery.start_soon(relay)
                async with AdminClient.connect(relay_path) as admin:
                    await connected.wait()
                    yield admin, taps[0], taps[1]
                nursery.cancel_scope.cancel()
            finally:
                listener.close()


async def generate_admin() -> dict[str, Any]:
    backend = FixedBackend()
    exchanges = []
    async with tapped_admin(backend) as (admin, requests, responses):
        for method, args, kwargs in ADMIN_CALLS:
            result = await call_method(admin, method, args, kwargs)
            exchanges.append(
                {
                    "method": method,
                    "args": to_json(list(args)),
                    "kwargs": kwargs_json(kwargs),
                    "served": kwargs_json(backend.calls[-1][1]),
                    "request": requests.take().hex(),
                    "response": responses.take().hex(),
                    "result": error_json(result)
                    if isinstance(result, TaoError)
                    else to_json(result),
                }
            )
    return {
        "description": (
            "Admin socket exchanges of the Linux host (protorpc framing: a request an "
            "RPCHeader{op, seq} frame then a LinuxAdminRequest frame, a response an "
            "RPCHeader{op, seq, error?} frame then a LinuxAdminResponse frame, empty on "
            "error; an error is '<Kind>: message' with Kind a taonet error class) made by "
            "taonet's AdminClient against serve_admin in front of FixedBackend "
            "(tests/vectors/generate.py), one connection, in order, no file descriptors "
            "passed. 'served' is what the backend was asked; 'result' what the client "
            "returned or raised."
        ),
        "exchanges": exchanges,
    }


# -- sealed blobs --------------------------------------------------------------------------

SEALED_DATA: Final = b"taonet golden sealed data"
SEAL_PROGRAM: Final = program_ext("sealing program")
SEAL_OTHER: Final = program_ext("other program")
ROLLBACK_LABEL: Final = "golden"


def sealing_host() -> SoftHost:
    return SoftHost(fixed_keyset("soft host"))


def seal_header(host: SoftHost, caller: auth.Prin, policy: str) -> bytes:
    """The deterministic start of a blob: magic, policy, and the bound name's digest."""
    bound = host.name if policy == "any" else caller
    pol = policy.encode()
    return b"TSL1" + bytes([len(pol)]) + pol + hashlib.sha256(auth.encode(bound)).digest()


async def generate_sealed_blob() -> dict[str, Any]:
    host = sealing_host()
    keyset = fixed_keyset("soft host")
    assert keyset.crypter is not None
    assert keyset.deriving_key is not None
    program = host.name.extend(SEAL_PROGRAM)
    other = host.name.extend(SEAL_OTHER)
    blobs = []
    for policy in ("self", "few", "any"):
        blob = host.seal_for(program, SEALED_DATA, policy)
        header = seal_header(host, program, policy)
        assert blob.startswith(header)
        blobs.append(
            {
                "policy": policy,
                "data": SEALED_DATA.hex(),
                "header": header.hex(),
                "blob": blob.hex(),
                "opens_for": [str(program)] + ([str(other)] if policy == "any" else []),
                "refused_for": [] if policy == "any" else [str(other)],
            }
        )
    tao = host.tao_for(program)
    rp_blob = await tao.rollback_protected_seal(ROLLBACK_LABEL, SEALED_DATA)
    inner, _ = host.unseal_for(program, rp_blob)
    secrets = [
        {
            "program": str(name),
            "policy": policy,
            "size": size,
            "secret": host.shared_secret_for(name, size, policy).hex(),
        }
        for name in (program, other)
        for policy in ("self", "few", "any")
        for size in (32,)
    ] + [
        {
            "program": str(program),
            "policy": "self",
            "size": 100,
            "secret": host.shared_secret_for(program, 100, "self").hex(),
        }
    ]
    return {
        "description": (
            "A soft host with fixed keys (tests/vectors/generate.py): the keyset raw "
            "and as its sealed 'keys' file (password: the tests' PASSWORD, scrypt "
            "KdfParams.for_tests()). Its name is the key principal of the signing key. "
            "Blobs it sealed for 'program' under each policy: header = b'TSL1' | "
            "len(policy) | policy | sha256(auth encoding of the bound name: the "
            "caller, or the host for 'any'), then the AES-256-GCM blob of the keyset's "
            "crypter (version byte, 12-byte nonce, ciphertext, 16-byte tag) over the "
            "data with the header as associated data; the nonce is random, so only "
            "the header is made again exactly. 'rollback' is a rollback-protected "
            "blob: a 'self' blob of the serialized RollbackSealedData 'sealed_data' "
            "(program, label, counter 1, data); it opens while the counter is 1. "
            "Shared secrets are HKDF-SHA256 and fully deterministic."
        ),
        "keyset": {
            "private_key_pkcs8_der": keyset.signer.to_pkcs8_der().hex(),
            "crypter_key": keyset.crypter.key_bytes.hex(),
            "deriving_key": keyset.deriving_key.hex(),
            "sealed_keys_file": seal_keyset(keyset, PASSWORD, kdf=KdfParams.for_tests()).hex(),
        },
        "host_name": str(host.name),
        "program": str(program),
        "other_program": str(other),
        "blobs": blobs,
        "rollback": {
            "program": str(program),
            "label": ROLLBACK_LABEL,
            "counter": 1,
            "data": SEALED_DATA.hex(),
            "sealed_data": inner.hex(),
            "blob": rp_blob.hex(),
        },
        "shared_secrets": secrets,
    }


# -- main ----------------------------------------------------------------------------------


async def _sync(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return make()


def main(argv: Sequence[str]) -> int:
    generators: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "attestation": lambda: _sync(generate_attestation),
        "tao_rpc": generate_tao_rpc,
        "admin": generate_admin,
        "sealed_blob": generate_sealed_blob,
    }
    names = list(argv) or list(generators)
    unknown = [name for name in names if name not in generators]
    if unknown:
        print(f"unknown vector files: {', '.join(unknown)}; known: {', '.join(generators)}")
        return 2
    for name in names:
        content = trio.run(generators[name])
        print(f"wrote {write_json(name + '.json', content)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
