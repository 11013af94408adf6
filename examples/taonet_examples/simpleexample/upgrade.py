"""``taonet demo --upgrade``: an upgrade that keeps its data, and rotation across versions.

On a soft Tao host in a local domain directory (as :mod:`.demo`), with the domain
service and the secret server running:

1. **Version 1** (:mod:`.upgrade_v1`) makes a content key, keeps it in the secret
   server (``/upgrade/content``, by the operator's grant of Create, Read and Own on
   ``/upgrade``), seals its own copy with its Tao and writes a record encrypted
   under it (:mod:`.upgrade_record`).
2. **Version 2** (:mod:`.upgrade_v2`: other code, so another name) tries to unseal
   version 1's keys: its Tao refuses. Nor may it read the key from the secret server.
3. **The operator** signs a disclosure directive with the policy key (what ``taonet
   domain directive --op Read --to V2 --object /upgrade/content:1 --until 1h`` does):
   version 2 may Read that key, that epoch. Version 1 serves its keys with the
   disclosure peer protocol; version 2 fetches the key over a Tao channel, seals it
   for itself and reads the record.
4. **The same through the secret server**: version 2 presents the same directive on
   a Read of the secret server.
5. **Rotation across versions**: the upgrade done, the operator takes version 1's
   grant back and grants version 2 Read and Own on ``/upgrade``; version 2 rotates
   the content key, protects the record anew under the new epoch; version 1 can
   read neither the new epoch from the secret server nor the record with its key.

Each program is a task with the Tao the host gives a program named by the SHA-256
of its file, as in :mod:`.demo`. The first run sets the domain and the host up;
a rerun in the same directory reuses them and the programs' sealed identities, and
tells the story again: the operator gives version 1 its grant back, the programs'
data directory starts empty, and version 1 makes the content key as a new epoch of
the name the last run left in the secret server (an id is never made twice, so the
last run's directive covers nothing of this one's).
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from taonet import AuthorizationError, HostError, ProtocolError, TaoError, auth
from taonet.channel import ChannelIdentity
from taonet.crypto import KdfParams, Signer
from taonet.disclosure import DirectiveOp, sign_directive
from taonet.domain import Domain, DomainTemplate, measure_file, program_subprin
from taonet.files import atomic_write
from taonet.hosts import SoftHost, Tao
from taonet.protected import ObjectId
from taonet.provision import RevocationWatcher, load_or_provision
from taonet.secrets import (
    GrantRequest,
    InfoRequest,
    Request,
    Response,
    SecretStore,
    ServerInfo,
    connect,
    sign_operator_request,
)
from taonet_examples.simpleexample import upgrade_v1, upgrade_v2
from taonet_examples.simpleexample.demo import (
    STEP_TIMEOUT,
    DemoServices,
    PolicyKey,
    _check_programs,
    running_services,
)
from taonet_examples.simpleexample.upgrade_record import CONTENT_KEY, PREFIX, open_keys
from taonet_services.secret_server import PROGRAM_FILE

__all__ = [
    "DIRECTIVE_FILE",
    "DIRECTIVE_LIFETIME_NS",
    "UpgradeWorld",
    "Version",
    "as_operator",
    "run_upgrade_demo",
    "upgrade_world",
]

#: How long the operator's directive lasts (the upgrade takes minutes, not days).
DIRECTIVE_LIFETIME_NS: Final = 3600 * 10**9
#: Verifiers whose clocks lag still take a directive made just now.
_CLOCK_SKEW_NS: Final = 5 * 60 * 10**9
#: The operator's directive for version 2, in the data directory.
DIRECTIVE_FILE: Final = "v2-content.directive"
#: The rights version 1 holds on PREFIX before the upgrade, version 2 after it.
V1_OPS: Final = ("Create", "Read", "Own")
V2_OPS: Final = ("Read", "Own")


@attrs.frozen
class Version:
    """One version of the program, provisioned: its Tao, its identity, its name."""

    label: str
    file: Path
    tao: Tao
    identity: ChannelIdentity
    principal: auth.Prin
    crl: RevocationWatcher
    #: Whether it was provisioned in this run (False: its sealed identity was reused).
    fresh: bool

    def say(self, say: Callable[[str], None]) -> Callable[[str], None]:
        """``say`` with this version's label in front."""
        return _prefixed(say, f"[{self.label}] ")


@attrs.frozen
class UpgradeWorld:
    """What the demo's steps share (see :func:`upgrade_world`)."""

    base: Path
    data: Path
    domain: Domain
    services: DemoServices
    policy: PolicyKey
    v1: Version
    v2: Version

    def store(self, version: Version) -> contextlib.AbstractAsyncContextManager[SecretStore]:
        """A connection to the secret server as ``version``."""
        return connect(
            self.services.secret_server,
            version.identity,
            revocations=version.crl,
            server=self.services.secret_server_principal,
        )


def _prefixed(say: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda text: say(prefix + text)


def _banner(say: Callable[[str], None], text: str) -> None:
    say("")
    say(f"== {text}")


@contextlib.asynccontextmanager
async def upgrade_world(
    base: Path,
    *,
    say: Callable[[str], None] = print,
    kdf: KdfParams | None = None,
    fresh_data: bool = True,
) -> AsyncIterator[UpgradeWorld]:
    """Set the domain and the host up in ``base`` (first run) or load them, run the
    domain service and the secret server, provision (or unseal) both versions. The
    programs' data directory is emptied first, unless ``fresh_data`` is False."""
    base = Path(base)
    password_file = base / "demo-password"
    signer: Signer | None = None
    files = {"version 1": Path(upgrade_v1.__file__), "version 2": Path(upgrade_v2.__file__)}
    if not password_file.exists():
        _banner(say, f"Setting up a domain and a soft Tao host in {base}")
        base.mkdir(parents=True, exist_ok=True)
        password = secrets.token_hex(16).encode()
        atomic_write(password_file, password + b"\n", mode=0o600)
        domain = Domain.create(
            base / "domain",
            DomainTemplate(name="upgrade", programs=(PROGRAM_FILE, *files.values())),
            password,
            kdf=kdf or KdfParams.default(),
        )
        say(f"policy key:   {domain.policy_principal}")
        host = SoftHost.create(base / "host", password, kdf=kdf or KdfParams.default())
        signer = domain.unlock(password)
        host.set_root_endorsement(domain.certify_host(signer, host.public_key_der()))
        say(f"soft Tao host {host.name}, certified by the policy key")
    else:
        password = password_file.read_bytes().strip()
        domain = Domain.load(base / "domain")
        host = SoftHost.load(base / "host", password)
        _check_programs(base, domain, host.name, {"the secret server": PROGRAM_FILE, **files})
    data = base / "data"
    if fresh_data:  # each run tells the story from its start
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(mode=0o700, exist_ok=True)
    policy = PolicyKey(domain, password, signer)
    async with (
        running_services(base, domain, host, password, say) as services,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(policy.unlock)
        _banner(say, "Two versions of one program: other code, so other names")
        versions = []
        for label, (what, path) in zip(("v1", "v2"), files.items(), strict=True):
            say(f"[{label}] {what}: {path.name}, sha256 {measure_file(path).hex()[:16]}...")
            tao = host.tao_for(host.name.extend(program_subprin(measure_file(path))))
            crl = RevocationWatcher(domain.policy_cert, services.domain_service)
            await nursery.start(crl.run)
            provisioned = await load_or_provision(
                tao,
                base / "programs" / f"{path.stem}.sealed",
                policy_cert=domain.policy_cert,
                domain_service=services.domain_service,
                on_step=_prefixed(say, f"[{label}] "),
                revocations=crl,
            )
            versions.append(
                Version(
                    label,
                    path,
                    tao,
                    provisioned.identity,
                    provisioned.principal,
                    crl,
                    provisioned.fresh,
                )
            )
        yield UpgradeWorld(base, data, domain, services, policy, *versions)
        nursery.cancel_scope.cancel()


async def as_operator(world: UpgradeWorld, requests: Sequence[Request]) -> list[Response]:
    """What ``taonet secret ...`` does for each request: sign it with the policy key
    for the secret server and the store it serves (an Info request first), send it
    over an anonymous Tao channel; the answers."""
    services = world.services
    signer = await world.policy.signer()
    anonymous = ChannelIdentity.anonymous(world.domain.policy_cert)
    answers: list[Response] = []
    server = services.secret_server_principal
    with trio.fail_after(STEP_TIMEOUT):
        async with connect(services.secret_server, anonymous, server=server) as store:
            info = await store.call(InfoRequest())
            if not isinstance(info, ServerInfo):
                raise ProtocolError(f"the secret server answered Info with {type(info).__name__}")
            for request in requests:
                signed = sign_operator_request(
                    request, signer, server=server, store=info.store_id, now_ns=time.time_ns()
                )
                answers.append(await store.call(signed))
    return answers


async def sign_upgrade_directive(world: UpgradeWorld, key: ObjectId) -> bytes:
    """The policy key's directive: version 2 may Read ``key`` (that epoch), for an hour."""
    now = time.time_ns()
    return sign_directive(
        await world.policy.signer(),
        op=DirectiveOp.READ,
        delegate=world.v2.principal,
        object_id=key,
        not_before=now - _CLOCK_SKEW_NS,
        not_after=now + DIRECTIVE_LIFETIME_NS,
    )


def _refusal(exc: TaoError) -> str:
    return f"{type(exc).__name__}: {exc}"


async def tell_upgrade(world: UpgradeWorld, *, say: Callable[[str], None] = print) -> bytes:
    """The story (module docstring), each step told; returns the record version 2
    read last."""
    v1, v2 = world.v1, world.v2
    s1, s2 = v1.say(say), v2.say(say)
    op = functools.partial(say_operator, say)

    _banner(say, "Version 1 keeps a record under a content key")
    await as_operator(
        world,
        [
            GrantRequest(str(v2.principal), V2_OPS, PREFIX, revoke=True),
            GrantRequest(str(v1.principal), V1_OPS, PREFIX),
        ],
    )
    if not v2.fresh:
        op(f"taonet secret grant V2 --ops {','.join(V2_OPS)} --name {PREFIX} --revoke  (rerun)")
    op(f"taonet secret grant V1 --ops {','.join(V1_OPS)} --name {PREFIX}")
    with trio.fail_after(STEP_TIMEOUT):
        async with world.store(v1) as store:
            key = await upgrade_v1.keep_record(v1.tao, store, world.data, say=s1)

    _banner(say, "Version 2 cannot unseal version 1's state")
    try:
        await open_keys(v2.tao, world.data / upgrade_v1.KEYS_FILE)
    except HostError as exc:
        s2(f"unsealing {upgrade_v1.KEYS_FILE}: refused: {_refusal(exc)}")
    else:  # pragma: no cover - the host would have broken its own sealing
        raise AssertionError("version 2 unsealed version 1's keys")
    with trio.fail_after(STEP_TIMEOUT):
        async with world.store(v2) as store:
            try:
                await store.read(key.id.name, key.id.epoch)
            except AuthorizationError as exc:
                s2(f"reading {key.id} from the secret server: refused: {_refusal(exc)}")
            else:  # pragma: no cover - the operator granted it nothing yet
                raise AssertionError("version 2 read the key without a directive")

    _banner(say, "The operator's directive; version 2 fetches the key from version 1")
    op(
        f"taonet domain directive --op Read --to V2 --object {key.id.name}:{key.id.epoch}"
        f" --until 1h -o {DIRECTIVE_FILE}"
    )
    directive = await sign_upgrade_directive(world, key.id)
    atomic_write(world.data / DIRECTIVE_FILE, directive, mode=0o644)
    op(f"signed: {world.domain.policy_principal} says Read(V2, {key.id}), for an hour")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(STEP_TIMEOUT):
            port = await nursery.start(
                functools.partial(
                    upgrade_v1.serve_keys,
                    v1.tao,
                    v1.identity,
                    world.data,
                    revocations=v1.crl,
                    say=s1,
                )
            )
            text = await upgrade_v2.fetch_from_peer(
                v2.tao,
                v2.identity,
                world.data,
                peer=("127.0.0.1", port),
                peer_principal=v1.principal,
                directive=directive,
                key=key.id,
                revocations=v2.crl,
                say=s2,
            )
        nursery.cancel_scope.cancel()

    _banner(say, "The same directive, through the secret server")
    with trio.fail_after(STEP_TIMEOUT):
        async with world.store(v2) as store:
            text = await upgrade_v2.read_from_store(
                store, world.data, directive=directive, key=key.id, say=s2
            )

    _banner(say, "Rotation across versions: version 2 owns the key now")
    await as_operator(
        world,
        [
            GrantRequest(str(v1.principal), V1_OPS, PREFIX, revoke=True),
            GrantRequest(str(v2.principal), V2_OPS, PREFIX),
        ],
    )
    op(f"taonet secret grant V1 --ops {','.join(V1_OPS)} --name {PREFIX} --revoke")
    op(f"taonet secret grant V2 --ops {','.join(V2_OPS)} --name {PREFIX}")
    with trio.fail_after(STEP_TIMEOUT):
        async with world.store(v2) as store:
            new = await upgrade_v2.rotate(v2.tao, store, world.data, say=s2)
        async with world.store(v1) as store:
            try:
                await store.read(CONTENT_KEY, new.id.epoch)
            except AuthorizationError as exc:
                s1(f"reading {new.id} from the secret server: refused: {_refusal(exc)}")
            else:  # pragma: no cover - its grant was taken back
                raise AssertionError("version 1 read the new epoch")
        await upgrade_v1.read_with_own_key(v1.tao, world.data, say=s1)
    _banner(say, "Done")
    say(f"Run it again: the domain, the host and both identities in {world.base} are reused.")
    return text


def say_operator(say: Callable[[str], None], text: str) -> None:
    """An operator's line."""
    say(f"[operator] {text}")


async def run_upgrade_demo(
    base: Path, *, say: Callable[[str], None] = print, kdf: KdfParams | None = None
) -> bytes:
    """Run the upgrade demo in ``base`` (created if needed); returns the record text
    version 2 read last."""
    async with upgrade_world(base, say=say, kdf=kdf) as world:
        return await tell_upgrade(world, say=say)
