"""The salted, encrypted policy session (``_session``) against a real swtpm, and the
attacks it stops: a forwarding proxy at the TPM's address (a local user squatting the
swtpm port, or an edited tcti) that reads Unseal answers, alters or replays them, or
answers CreatePrimary with a key of its own to learn the session's salt."""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from taonet import HostError, auth
from taonet.crypto import hkdf_sha256
from tests.hosts.tpm2.tpm2_host_helpers import TEST_PCRS

if TYPE_CHECKING:
    from taonet.hosts.tpm2 import Swtpm

CC_CREATE_PRIMARY = 0x131
CC_UNSEAL = 0x15E
CC_START_AUTH_SESSION = 0x176

#: (command, response) -> response the proxy sends on instead.
Rewrite = Callable[[bytes, bytes], bytes]


class Proxy:
    """A real TCP proxy in front of a swtpm: records every exchange, may rewrite answers."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.exchanges: list[tuple[bytes, bytes]] = []
        self.rewrite: Rewrite | None = None
        #: Flip the last bit of each Unseal command (its session HMAC) on the way.
        self.rewrite_command = False

    async def _pump(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as tpm:
            while (command := await _message(client)) is not None:
                if self.rewrite_command and _cc(command) == CC_UNSEAL:
                    command = command[:-1] + bytes([command[-1] ^ 1])
                await tpm.send_all(command)
                response = await _message(tpm)
                if response is None:
                    return
                self.exchanges.append((command, response))
                if self.rewrite is not None:
                    response = self.rewrite(command, response)
                await client.send_all(response)

    def answers(self, cc: int) -> list[bytes]:
        return [r for c, r in self.exchanges if _cc(c) == cc and _rc(r) == 0]

    def sent(self, cc: int) -> list[bytes]:
        return [c for c, _ in self.exchanges if _cc(c) == cc]

    def policy_sessions(self) -> list[bytes]:
        """The StartAuthSession commands of policy sessions (the Unseal session; the
        host also starts an HMAC session for its NV counters)."""
        return [c for c in self.sent(CC_START_AUTH_SESSION) if _session_type(c) == 0x01]


def _session_type(start: bytes) -> int:
    # header, tpmKey, bind, nonceCaller (TPM2B), encryptedSalt (TPM2B), sessionType
    at = 18 + 2 + int(struct.unpack_from(">H", start, 18)[0])
    return start[at + 2 + int(struct.unpack_from(">H", start, at)[0])]


async def _message(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while len(data) < 10 or len(data) < struct.unpack_from(">I", data, 2)[0]:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _cc(command: bytes) -> int:
    return int(struct.unpack_from(">I", command, 6)[0])


def _rc(response: bytes) -> int:
    return int(struct.unpack_from(">I", response, 6)[0])


@asynccontextmanager
async def proxy_to(tpm: Swtpm) -> AsyncIterator[Proxy]:
    port = int(tpm.tcti.rsplit("port=", 1)[1])
    proxy = Proxy(port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, proxy._pump, 0, host="127.0.0.1")
        )
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()


async def _create(directory: Path, tcti: str) -> None:
    from taonet.hosts.tpm2 import Tpm2Host

    await trio.to_thread.run_sync(lambda: Tpm2Host.create(directory, tcti=tcti, pcrs=TEST_PCRS))


def _unseal_data(response: bytes) -> bytes:
    # header, parameterSize, TPM2B outData
    n = struct.unpack_from(">H", response, 14)[0]
    return response[16 : 16 + n]


async def test_a_proxy_sees_only_ciphertext(tmp_path: Path, fresh_swtpm: Swtpm) -> None:
    """r10: a forwarding proxy recorded the deriving key and every blob's AES key."""
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(120):
        await _create(tmp_path / "host", fresh_swtpm.tcti)
        async with proxy_to(fresh_swtpm) as proxy:
            host = await Tpm2Host.open(tmp_path / "host", tcti=f"swtpm:port={proxy.port}")
            try:
                tao = host.tao()
                secret = await tao.get_shared_secret(32)
                blob = await tao.seal(b"top secret")
                assert await tao.unseal(blob) == (b"top secret", "self")
                assert await tao.unseal(blob) == (b"top secret", "self")  # nonces roll
                deriving = host._core._deriving_key
            finally:
                await host.aclose()
        answers = proxy.answers(CC_UNSEAL)
        assert len(answers) == 3
        seen = [_unseal_data(r) for r in answers]
        assert deriving not in seen
        assert len(seen[0]) == len(deriving)
        # The attacker's derivation from what it saw is not the host's secret ...
        info = b"self\x00" + hashlib.sha256(auth.encode(host.name)).digest()
        for candidate in seen:
            salt = b"taonet tpm2 tao shared secret v1"
            assert hkdf_sha256(candidate, salt=salt, info=info, length=32) != secret
        # ... and the same key unsealed twice crosses the wire as two ciphertexts.
        assert seen[1] != seen[2]
        # The session was salted to the primary (tpmKey is not TPM_RH_NULL).
        (start,) = proxy.policy_sessions()
        assert struct.unpack_from(">I", start, 10)[0] != 0x40000007


@pytest.mark.parametrize("attack", ["flip", "replay", "strip_encrypt", "command"])
async def test_an_altered_unseal_answer_is_refused(
    tmp_path: Path, fresh_swtpm: Swtpm, attack: str
) -> None:
    """A proxy changes one field of a real Unseal answer (the response HMAC fails), or
    one bit of the command's HMAC (the TPM refuses it: TPM_RC_BAD_AUTH)."""
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(120):
        await _create(tmp_path / "host", fresh_swtpm.tcti)
        async with proxy_to(fresh_swtpm) as proxy:
            host = await Tpm2Host.open(tmp_path / "host", tcti=f"swtpm:port={proxy.port}")
            try:
                tao = host.tao()
                blob = await tao.seal(b"top secret")
                earlier = proxy.answers(CC_UNSEAL)[-1]

                def rewrite(command: bytes, response: bytes) -> bytes:
                    if _cc(command) != CC_UNSEAL or _rc(response) != 0 or attack == "command":
                        return response
                    if attack == "replay":  # a real, older answer of the TPM
                        return earlier
                    data = bytearray(response)
                    if attack == "flip":  # one bit of the encrypted key
                        data[16] ^= 0x01
                    else:  # the session attributes: claim the answer is not encrypted
                        size = struct.unpack_from(">H", response, 14)[0]
                        data[10 + 4 + 2 + size + 2 + 32] &= ~0x40 & 0xFF
                    return bytes(data)

                proxy.rewrite = rewrite
                proxy.rewrite_command = attack == "command"
                with pytest.raises(HostError, match=r"session HMAC|session attributes"):
                    await tao.unseal(blob)
                proxy.rewrite_command = False
                # Once the proxy stops, the host works again: in a new session after a
                # bad answer (its nonce is unknown), in the same one after a refusal.
                proxy.rewrite = None
                assert await tao.unseal(blob) == (b"top secret", "self")
                sessions = len(proxy.policy_sessions())
                assert sessions == (1 if attack == "command" else 2)
            finally:
                await host.aclose()


async def test_a_substituted_primary_gets_no_session(tmp_path: Path, fresh_swtpm: Swtpm) -> None:
    """A proxy answers CreatePrimary with its own P-256 point (a well-formed public area,
    wrong in one field) to learn the salt: the host refuses before StartAuthSession."""
    from taonet.hosts.tpm2 import Tpm2Host
    from taonet.hosts.tpm2._params import PRIMARY_TEMPLATE
    from taonet.hosts.tpm2._session import ecc_point

    mine = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    x, y = mine.x.to_bytes(32, "big"), mine.y.to_bytes(32, "big")

    def rewrite(command: bytes, response: bytes) -> bytes:
        if _cc(command) != CC_CREATE_PRIMARY or _rc(response) != 0:
            return response
        start = 10 + 4 + 4  # header, handle, parameterSize: outPublic
        size = struct.unpack_from(">H", response, start)[0]
        public = response[start : start + 2 + size]
        old_x, old_y = ecc_point(public, PRIMARY_TEMPLATE)
        return response.replace(old_x, x).replace(old_y, y)

    with trio.fail_after(120):
        await _create(tmp_path / "host", fresh_swtpm.tcti)
        async with proxy_to(fresh_swtpm) as proxy:
            proxy.rewrite = rewrite
            with pytest.raises(HostError, match="storage primary is not the one recorded"):
                await Tpm2Host.open(tmp_path / "host", tcti=f"swtpm:port={proxy.port}")
            assert proxy.sent(CC_CREATE_PRIMARY)
            assert proxy.sent(CC_START_AUTH_SESSION) == []
            assert proxy.sent(CC_UNSEAL) == []


async def test_a_host_without_a_recorded_primary_is_refused(
    tmp_path: Path, fresh_swtpm: Swtpm
) -> None:
    """A directory without (or with an edited) primary.name: ConfigError, no session."""
    from taonet import ConfigError
    from taonet.hosts.tpm2 import Tpm2Host

    with trio.fail_after(120):
        await _create(tmp_path / "host", fresh_swtpm.tcti)
        name = tmp_path / "host" / "primary.name"
        name.write_bytes(name.read_bytes()[:-1])
        with pytest.raises(ConfigError, match=r"primary\.name is not a SHA-256 TPM Name"):
            await Tpm2Host.open(tmp_path / "host")
        name.unlink()
        with pytest.raises(ConfigError, match=r"primary\.name is missing"):
            await Tpm2Host.open(tmp_path / "host")


def test_malformed_session_answers_are_host_errors() -> None:
    from taonet.hosts.tpm2._params import PRIMARY_TEMPLATE
    from taonet.hosts.tpm2._session import SaltedSession, ecc_point, make_salt

    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    x, y = point.x.to_bytes(32, "big"), point.y.to_bytes(32, "big")
    body = PRIMARY_TEMPLATE[:-4] + b"\x00\x20" + x + b"\x00\x20" + y
    assert ecc_point(struct.pack(">H", len(body)) + body, PRIMARY_TEMPLATE) == (x, y)
    for bad in (body[:-1], body + b"\x00", b"\x00\x01" + body[2:]):
        with pytest.raises(HostError):
            ecc_point(struct.pack(">H", len(bad)) + bad, PRIMARY_TEMPLATE)
    with pytest.raises(HostError, match="not on P-256"):
        make_salt(x, bytes(32))
    session = SaltedSession(0x03000000, bytes(32), bytes(32), bytes(32))
    _, nonce = session.command_auth(CC_UNSEAL, [], b"", 0x41)
    good = b"\x00\x20" + bytes(32) + b"\x41" + b"\x00\x20" + bytes(32)
    for auth_area in (b"", good[:-1], good + b"\x00", b"\x00\x10" + good[2:]):
        with pytest.raises(HostError):
            session.open_response(CC_UNSEAL, b"\x00\x00", auth_area, nonce, 0x41)
