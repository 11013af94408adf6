"""The Linux host: a Tao host that measures, starts and serves child processes.

A :class:`LinuxHost` is either

* **root**: its keys are a soft keyset in its directory (password-protected), its
  name is ``key([hash])`` and the domain's policy key certifies that key, or
* **root on a TPM 2.0** (``root_tao = "tpm2"``): it opens a TPM 2.0 host in this
  process and runs stacked on it (see :mod:`taonet.hosts.linux._tpm2_root`): its
  name is the TPM host's ``tpm2([...]).PCRs(...)``, or
* **stacked**: it runs as a hosted program of a parent Tao (another Linux host).
  Its keyset is sealed by the parent (so only the same host binary
  on the same parent can open it), its name is the name the parent gave it, and the
  parent attests ``key(host key) speaksfor <its name>``: that delegation rides in
  every attestation the host makes, so its children's attestations chain to the root.

Each started program (a file, or a directory of files with an entry that runs: see
:mod:`taonet.hosts.linux._process` and :mod:`taonet.hosts.linux._tree`) is copied to a
private directory while it is hashed, checked against the guard
(``Authorized(name, "Execute")``), and run in its own process group as the requesting
user, with a pipe pair to the host. A script that asks for its interpreter through
``#!/usr/bin/env NAME`` (and a directory's ``.py`` entry) is run by the interpreter
the host offers as ``NAME`` (``[interpreters]`` in ``host.toml``, checked when the
host opens and again at each start; see :mod:`taonet.hosts.linux._interpreters`),
isolated (``-I``), and its path and hash are part of the program's name. A program
directory starts in the root of its private copy (read-only) unless the start names
a working directory; a single file in the working directory the start names, as
before. A root host runs another user's
program with that user's uid, gid and the supplementary groups the caller held when it
connected (``SO_PEERGROUPS``): the same groups its program file and working directory
were checked with. Starts by users other than root and the host's owner count against
per-uid limits (:data:`MAX_PROGRAMS_PER_UID` programs, :data:`MAX_PROGRAM_BYTES_PER_UID`
bytes of copies), and all of them together against a total cap on their programs,
reserved before the start's first await and held until its program exits, so
concurrent starts cannot pass them. Each running program holds
:data:`FDS_PER_PROGRAM` (3) file descriptors in the host (its pidfd and the host's
ends of its two pipes), so the total cap keeps other users from using up the host's
descriptors, after which root could neither start programs nor reach the admin
socket. When it starts running, the host raises its soft ``RLIMIT_NOFILE`` to the
hard limit (as far as the kernel allows); the cap is then ``soft // 2 //
FDS_PER_PROGRAM`` (170 programs at 1024 descriptors): the other half is left to root
and the owner's programs, the admin socket's connections (at most 256) and the
descriptors they pass, and the host's own files. ``max_other_programs`` sets the cap
instead. Its name is
``<host name>.Program([sha256])``, or ``Program(id, [sha256])`` when ``program_ids``
is on (ids increase across restarts); ``Script(...)`` and ``ProgramTree(...)`` for
scripts run by the host's interpreter and program directories (see
:mod:`taonet.hosts.linux._process`). The host answers the program's Tao RPC on that
pipe: seal/unseal, shared secrets and attestations bound to the program's name, and
monotonic counters that survive restarts (for a stacked host the counter table is
itself rollback-protected by the parent's counters: a stacked host does not start
under a parent without counters, nor when its parent will not unseal its keys, and
it writes nothing before its start has succeeded).

A program gets the host's ``PATH`` and only the environment variables the host
allows, never those that change what code runs (``LD_*``, ``PYTHON*``, ...): the
name says what code runs, so no caller may change it. A program's name is capped
(:data:`MAX_NAME_EXTENSIONS`, :data:`MAX_NAME_BYTES`) and its counters are charged to
the name it was launched under. When each counter change costs a parent's seal (a
stacked host, or a TPM root's NV increment) the changes are also budgeted
(:mod:`taonet.hosts._write_budget`): per uid and measurement of the program, per uid,
and for the host, with a reserve that only root's and the owner's programs spend.

A malformed or oversized frame from a program closes that program's channel only; a
program that dies mid-call costs nothing but its own channel; a bug in a backend is
answered as an internal error. Cancelling :meth:`LinuxHost.run` kills the programs.
When :meth:`LinuxHost.run` starts, the copies an earlier run left in ``programs/`` (a
crash, a ``kill -9``) are removed, except any that a live process still executes,
works in or names on its command line.

What one program's requests can make the host hold is bounded (see
:func:`~taonet.hosts.serve_tao_rpc`): a request's header frame is at most 4 KiB and its
body at most its method's limit (1 KiB for GetTaoName, sizes and counters, 16 KiB
for a name extension, 64 KiB for an attestation, a sealed payload's worth for the
sealing methods). A request must arrive within ``request_timeout`` seconds of its
first byte (its body as long again after its header), and its answer be taken as
fast, or that program's channel is closed. A body over 64 KiB is read only once it
fits in its uid's ``request_bytes_per_uid`` (:data:`MAX_REQUEST_BYTES_PER_UID`),
shared by all that uid's programs, so that many programs cannot together hold much
(a request bigger than that waits for all of it). What a channel received is freed
when it closes.

:meth:`LinuxHost.run` serves the admin socket (``admin.sock`` in the host directory,
see :mod:`taonet.hosts.linux._admin`) until :meth:`shutdown`. It implements
:class:`~taonet.hosts.linux._hosted.AdminBackend`.
"""

from __future__ import annotations

import collections
import functools
import os
import secrets
import signal
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from taonet import auth
from taonet._errors import (
    AuthenticationError,
    AuthorizationError,
    CodecError,
    ConfigError,
    HostError,
)
from taonet._files import atomic_write, read_file
from taonet._log import get_logger
from taonet.certs import load_certificate
from taonet.certs._profile import refuse_retired_profile
from taonet.crypto import KdfParams, Signer
from taonet.domain import Guard, LiberalGuard
from taonet.hosts._core import BoundTao, KeyCore
from taonet.hosts._counters import ChargedCounters, CounterStore, HostCounters
from taonet.hosts._rpc import REQUEST_TIMEOUT, ByteBudget, serve_tao_rpc
from taonet.hosts._soft import CERT_FILE, SoftHost
from taonet.hosts._tao import Tao
from taonet.hosts._write_budget import WriteAccount
from taonet.hosts.linux._config import (
    ADMIN_SOCKET,
    CONFIG_FILE,
    LOCK_FILE,
    PROGRAM_ID_FILE,
    PROGRAMS_DIR,
    LinuxHostConfig,
)
from taonet.hosts.linux._environment import (
    DEFAULT_PASS_ENVIRONMENT,
    DENIED_ENVIRONMENT,
    home_of,
    program_environment,
)
from taonet.hosts.linux._hosted import Caller, ProgramInfo, StartRequest
from taonet.hosts.linux._interpreters import Interpreter, check_interpreter
from taonet.hosts.linux._process import (
    DEFAULT_MAX_SIZE,
    INTERPRETERS_DIR,
    HostChannel,
    PreparedProgram,
    Sandbox,
    prepare_program,
    remove_stale_copies,
    remove_stale_interpreter_copies,
    signal_group,
    spawn_program,
)
from taonet.hosts.linux._select import ID_DIGITS, SHORT_ID, program_file, select_programs
from taonet.hosts.linux._stacked import open_stacked
from taonet.hosts.linux._tpm2_root import (
    TPM2_DELEGATION_VALIDITY_NS,
    certify_tpm2_root,
    create_tpm2_root,
    keep_tpm2_delegation_fresh,
    open_tpm2_root,
    open_tpm2_state,
    refresh_tpm2_delegation,
)

__all__ = [
    "DEFAULT_PASS_ENVIRONMENT",
    "DENIED_ENVIRONMENT",
    "MAX_NAME_BYTES",
    "MAX_NAME_EXTENSIONS",
    "MAX_REQUEST_BYTES_PER_UID",
    "LinuxHost",
    "program_environment",
]

log = get_logger(__name__)

#: Bounds on a hosted program's name (ExtendTaoName): names are listed, logged and
#: stored with every counter, so one program must not make them huge.
MAX_NAME_EXTENSIONS: Final = 32
MAX_NAME_BYTES: Final = 1024
#: Limits on what one user (not root, not the host's owner) may hold on the host.
MAX_PROGRAMS_PER_UID: Final = 64
MAX_PROGRAM_BYTES_PER_UID: Final = 1 << 30
#: File descriptors the host holds for each running program: its pidfd and the host's
#: ends of its two pipes.
FDS_PER_PROGRAM: Final = 3
#: Largest program another user may start (each start reserves this much of the budget).
MAX_PROGRAM_SIZE_PER_START: Final = 256 << 20
#: Longest program path a start request may name (PATH_MAX).
MAX_PATH_BYTES: Final = 4096
#: Bytes that the large requests (over 64 KiB) of one uid's programs may hold at once:
#: room for four maximal sealing requests. Programs of the same uid wait for each other.
MAX_REQUEST_BYTES_PER_UID: Final = 64 << 20
#: Exited programs remembered for ``wait`` after they are gone.
_REMEMBER_EXITED: Final = 256
#: How long shutdown waits for SIGKILLed programs to be reaped.
_REAP_TIMEOUT: Final = 10.0


class _Child:
    """One hosted program (mutable: its name grows with ExtendTaoName)."""

    def __init__(
        self,
        *,
        name: auth.Prin,
        process: trio.Process,
        prepared: PreparedProgram,
        uid: int,
        gid: int,
        program_id: int,
        size: int = 0,
    ) -> None:
        self.name = name
        self.size = size
        self.charged = False
        self.launch_name = name
        self.process = process
        self.prepared = prepared
        self.uid = uid
        self.gid = gid
        self.program_id = program_id
        self.exit_status: int | None = None
        self.exited = trio.Event()
        self.started_ns = time.time_ns()
        #: Its own id, for selecting it (two instances of one program have two).
        self.instance_id = secrets.token_hex(ID_DIGITS // 2)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def info(self) -> ProgramInfo:
        return ProgramInfo(
            name=self.name,
            pid=self.pid,
            uid=self.uid,
            gid=self.gid,
            path=self.prepared.source,
            program_hash=self.prepared.program_hash,
            program_id=self.program_id,
            exit_status=self.exit_status,
            started_ns=self.started_ns,
            instance_id=self.instance_id,
        )

    def describe(self) -> str:
        """Itself as an ambiguity lists it: short id, pid and file."""
        return (
            f"id {self.instance_id[:SHORT_ID]} pid {self.pid} "
            f"{program_file(self.prepared.source)!r}"
        )


def _check_child_name(name: auth.Prin) -> None:
    """HostError if a hosted program's name would go past its limits."""
    if len(name.ext.exts) > MAX_NAME_EXTENSIONS or len(auth.encode(name)) > MAX_NAME_BYTES:
        raise HostError(
            f"a hosted program's name may hold at most {MAX_NAME_EXTENSIONS} extensions "
            f"and {MAX_NAME_BYTES} bytes"
        )


class LinuxHost:
    """A root or stacked Linux host (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        config: LinuxHostConfig,
        core: KeyCore,
        counters: CounterStore,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        request_bytes_per_uid: int = MAX_REQUEST_BYTES_PER_UID,
        max_other_programs: int | None = None,
    ) -> None:
        """Prefer :meth:`open`; ``core`` holds the keys, ``counters`` the counter table.

        A stacked host's parent Tao must stay open for as long as the host runs.
        ``request_timeout`` and ``request_bytes_per_uid`` bound what a program's
        requests may hold; ``max_other_programs`` caps the programs of users other
        than root and the host's owner, all together (None: from the host's file
        descriptor limit when it starts running; see the module docstring).
        """
        if max_other_programs is not None and (
            isinstance(max_other_programs, bool)
            or not isinstance(max_other_programs, int)
            or max_other_programs < 0
        ):
            raise ValueError(
                f"max_other_programs must be a non-negative int or None, got {max_other_programs!r}"
            )
        if (
            isinstance(request_timeout, bool)
            or not isinstance(request_timeout, int | float)
            or not request_timeout > 0
        ):
            raise ValueError(f"request_timeout must be a positive number, got {request_timeout!r}")
        if (
            isinstance(request_bytes_per_uid, bool)
            or not isinstance(request_bytes_per_uid, int)
            or request_bytes_per_uid < 1
        ):
            raise ValueError(
                f"request_bytes_per_uid must be a positive int, got {request_bytes_per_uid!r}"
            )
        self.directory = directory
        self.config = config
        self._request_timeout = request_timeout
        self._request_bytes_per_uid = request_bytes_per_uid
        # Per uid: the bytes large requests of its programs may hold at once.
        self._budgets: dict[int, ByteBudget] = {}
        self._core = core
        # Counters are charged to the program as launched, whatever names it extends to.
        self._counters = HostCounters(core, counters, program_of=self._launched)
        self._owner_uid = os.geteuid()
        self._children: dict[int, _Child] = {}
        # Per uid (limited users only): running programs plus starts under way, and
        # the bytes of their copies (or reserved for a copy being made).
        self._usage: collections.defaultdict[int, tuple[int, int]] = collections.defaultdict(
            lambda: (0, 0)
        )
        # All limited users together: their programs (and starts under way), and the cap.
        self._others = 0
        self._max_others = max_other_programs
        self._exited: collections.deque[_Child] = collections.deque(maxlen=_REMEMBER_EXITED)
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._stopped = trio.Event()
        self._finished = trio.Event()
        self._running = False
        self._id_lock = trio.Lock()
        # The interpreters offered, as checked (None: no [interpreters] table).
        self._interpreters: dict[str, Interpreter] | None = None
        self._interpreters_checked = False
        # A root host on a TPM: the TPM 2.0 host it opened, closed with this host, and
        # how its delegation is renewed while the host runs (see _tpm2_root).
        self._tpm: Any = None
        self._tpm_refresh: Callable[[], Awaitable[bool]] | None = None
        self._tpm_validity_ns = TPM2_DELEGATION_VALIDITY_NS

    # -- creation ---------------------------------------------------------------------

    @staticmethod
    def init(
        directory: str | Path,
        config: LinuxHostConfig,
        *,
        password: bytes | None = None,
        kdf: KdfParams | None = None,
        policy_signer: Signer | None = None,
    ) -> auth.Prin | None:
        """Create a host directory; for a root host, its keys (and certificate).

        A root host's keyset is protected by ``password``; with ``policy_signer`` (the
        domain's unlocked policy key) the domain certifies the host's key. Returns the
        root host's name; a stacked host gets its keys and name when it first starts
        under its parent. With a domain, ``host.toml`` pins its policy key.
        """
        path = Path(directory)
        if (path / CONFIG_FILE).exists():
            raise ConfigError(f"{path} already holds a Linux host")
        config, domain = config.pin_domain()
        path.mkdir(parents=True, exist_ok=True, mode=0o711)
        _check_private_directory(path)
        name: auth.Prin | None = None
        if config.root_tao == "tpm2":
            raise ConfigError("a root host on a TPM is made by LinuxHost.init_tpm2")
        if config.kind == "root":
            if password is None:
                raise ConfigError("a root host needs a password to protect its keys")
            host = SoftHost.create(path, password, kdf=kdf or KdfParams.default())
            if domain is not None and policy_signer is not None:
                host.set_root_endorsement(domain.certify_host(policy_signer, host.public_key_der()))
            name = host.name
        elif password is not None or policy_signer is not None:
            raise ConfigError("a stacked host's keys are sealed by its parent: no password")
        if domain is not None:
            config.record_domain_serial(path, domain)  # refuse older configurations from now
        atomic_write(path / CONFIG_FILE, config.to_toml(), mode=0o644)
        return name

    @staticmethod
    async def init_tpm2(
        directory: str | Path,
        config: LinuxHostConfig,
        *,
        tcti: str,
        pcrs: Sequence[int] | None = None,
    ) -> auth.Prin:
        """Create a root host directory on a TPM 2.0 (``config.root_tao`` is "tpm2").

        The TPM host's state is made in ``tpm2/`` (its quote key, by the TPM at
        ``tcti``, over ``pcrs``, default the TPM host's default list); ``host.toml`` is
        written last. Returns the name, ``tpm2([...]).PCRs(...)`` with the PCR values
        now. The quote key is certified separately, by the domain's quote service
        (:func:`taonet.hosts.linux._tpm2_root.certify_tpm2_root`).
        """
        path = Path(directory)
        if config.kind != "root" or config.root_tao != "tpm2":
            raise ConfigError('init_tpm2 makes a root host with root_tao = "tpm2"')
        if await trio.Path(path / CONFIG_FILE).exists():
            raise ConfigError(f"{path} already holds a Linux host")
        config, domain = await trio.to_thread.run_sync(config.pin_domain)
        await trio.Path(path).mkdir(parents=True, exist_ok=True, mode=0o711)
        await trio.to_thread.run_sync(_check_private_directory, path)
        name = await create_tpm2_root(path, tcti=tcti, pcrs=pcrs)

        def finish() -> None:
            if domain is not None:
                config.record_domain_serial(path, domain)
            atomic_write(path / CONFIG_FILE, config.to_toml(), mode=0o644)

        await trio.to_thread.run_sync(finish)
        return name

    @staticmethod
    async def certify_tpm2(directory: str | Path, quote_service: str) -> auth.Prin:
        """Have the quote service at ``quote_service`` (``HOST:PORT``) certify the quote
        key of the root host on a TPM in ``directory`` (stopped); returns its name."""
        return await certify_tpm2_root(Path(directory), quote_service)

    @staticmethod
    async def tpm2_name(directory: str | Path) -> auth.Prin:
        """The name the TPM host of a stopped root host on a TPM reports now,
        ``tpm2([...]).PCRs(...)`` with the PCR values the TPM holds (it is opened for
        the moment of the call)."""
        async with await open_tpm2_state(Path(directory)) as tpm:
            name: auth.Prin = tpm.name
            return name

    @classmethod
    async def open(
        cls,
        directory: str | Path,
        *,
        password: bytes | None = None,
        parent: Tao | None = None,
        clock: Callable[[], int] = time.time_ns,
        request_timeout: float = REQUEST_TIMEOUT,
        request_bytes_per_uid: int = MAX_REQUEST_BYTES_PER_UID,
        max_other_programs: int | None = None,
        tpm2_delegation_validity_ns: int = TPM2_DELEGATION_VALIDITY_NS,
    ) -> LinuxHost:
        """Open a host directory: a root host needs ``password``, a stacked one ``parent``.

        A root host on a TPM has the TPM's delegation valid
        ``tpm2_delegation_validity_ns`` and renews it while it runs (see
        :mod:`taonet.hosts.linux._tpm2_root`).

        A root host whose certificate is of taonet's first X.509 profile is refused
        (ConfigError that names ``taonet host recertify``): no domain accepts what it
        would attest.

        ``request_timeout``, ``request_bytes_per_uid`` and ``max_other_programs``: see
        :class:`LinuxHost`.
        """
        path = Path(directory)
        await trio.to_thread.run_sync(_check_private_directory, path)
        config = await trio.to_thread.run_sync(LinuxHostConfig.load, path)
        if config.guard == "domain":
            # Refuse to start for a domain that is not the pinned one or not as signed.
            await trio.to_thread.run_sync(config.load_domain)
        tpm = None
        if config.root_tao == "tpm2":
            tpm, core, counters = await open_tpm2_root(
                path, clock, delegation_validity_ns=tpm2_delegation_validity_ns
            )
        elif config.kind == "root":
            if password is None:
                raise ConfigError("a root host needs its password")
            core = await trio.to_thread.run_sync(
                functools.partial(SoftHost.load, path, password, clock=clock)
            )
            _refuse_first_profile(path, core.root_endorsement)
            counters = (await core.open_counters()).store
        else:
            if parent is None:
                raise ConfigError(
                    "a stacked host runs under a parent Tao: start it as a hosted program"
                )
            core, counters = await open_stacked(path, parent, clock)
        host = cls(
            path,
            config,
            core,
            counters,
            request_timeout=request_timeout,
            request_bytes_per_uid=request_bytes_per_uid,
            max_other_programs=max_other_programs,
        )
        host._tpm = tpm
        if tpm is not None:
            assert isinstance(core, SoftHost)  # open_tpm2_root's stacked key core
            host._tpm_validity_ns = tpm2_delegation_validity_ns
            host._tpm_refresh = functools.partial(
                refresh_tpm2_delegation, tpm, core, clock, tpm2_delegation_validity_ns
            )
        try:
            await trio.to_thread.run_sync(host._check_interpreters)
        except BaseException:
            await host.aclose()
            raise
        log.info(
            "linux_host_opened",
            kind=config.kind,
            name=str(host.name),
            counters_rollback_protected=counters.rollback_protected,
        )
        return host

    def _check_interpreters(self) -> None:
        """Check and measure the interpreters ``host.toml`` offers (ConfigError if one
        is refused); warn once if it has no ``[interpreters]`` table."""
        self._interpreters_checked = True
        if self.config.interpreters is None:
            self._interpreters = None
            log.warning(
                "host_interpreters_unset",
                note="host.toml has no [interpreters] table: '#!/usr/bin/env' scripts find "
                "their interpreter in the programs' PATH, unmeasured, and program "
                "directories cannot run Python entries",
            )
            return
        self._interpreters = {
            name: check_interpreter(name, path, owner=self._owner_uid)
            for name, path in self.config.interpreters
        }
        for interpreter in self._interpreters.values():
            log.info(
                "host_interpreter",
                name=interpreter.name,
                path=interpreter.path,
                sha256=interpreter.digest.hex(),
            )

    # -- identity ---------------------------------------------------------------------

    @property
    def name(self) -> auth.Prin:
        """The host's Tao name (hosted programs' names extend it)."""
        return self._core.name

    def host_name(self) -> auth.Prin:
        return self.name

    async def refresh_tpm2_delegation(self) -> bool:
        """A root host on a TPM: have the TPM quote the host's delegation again now
        (what the running host does every half of its validity); False, logged, if the
        TPM refuses. HostError for a host not on a TPM."""
        if self._tpm_refresh is None:
            raise HostError("only a root host on a TPM renews its delegation")
        refreshed: bool = await self._tpm_refresh()
        return refreshed

    def _launched(self, name: auth.Prin) -> auth.Prin:
        """The name a program was launched under, from any name it extended to."""
        keep = len(self.name.ext.exts) + 1
        return auth.Prin(name.type, name.key_hash, auth.SubPrin(name.ext.exts[:keep]))

    @property
    def socket_path(self) -> Path:
        return self.directory / ADMIN_SOCKET

    # -- serving ----------------------------------------------------------------------

    async def run(
        self,
        *,
        admin_socket: bool = True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve hosted programs (and the admin socket) until :meth:`shutdown`.

        While it runs the host holds an exclusive lock on ``host.lock`` in its
        directory: a second host for the same directory (in this process or another)
        gets a HostError before it touches the admin socket. Once the programs are
        stopped the admin socket closes gracefully: every answer under way (the one
        to the shutdown request among them) is sent before ``run`` returns.
        """
        from taonet.hosts.linux._admin import serve_admin

        if self._running or self._finished.is_set():
            raise HostError("a LinuxHost runs once")
        self._running = True
        if not self._interpreters_checked:  # made without open()
            await trio.to_thread.run_sync(self._check_interpreters)
        lock = _lock_directory(self.directory)
        # Held by the lock: no other host serves this directory, so what its programs
        # directory holds was left by an earlier run (a crash) unless still in use.
        removed = await trio.to_thread.run_sync(remove_stale_copies, self.directory / PROGRAMS_DIR)
        if removed:
            log.info("stale_copies_removed", count=removed)
        # Copies of interpreters the host no longer offers as measured (and the sh
        # copy for bwrap, made again when a sandbox next needs it).
        keep = [i.digest for i in (self._interpreters or {}).values()]
        removed = await trio.to_thread.run_sync(
            remove_stale_interpreter_copies, self.directory / INTERPRETERS_DIR, keep
        )
        if removed:
            log.info("stale_interpreter_copies_removed", count=removed)
        soft = _raise_fd_limit()
        if self._max_others is None:
            self._max_others = _max_other_programs(soft)
        log.info("linux_host_limits", open_files=soft, max_other_programs=self._max_others)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._tpm_refresh is not None:
                    nursery.start_soon(
                        keep_tpm2_delegation_fresh, self._tpm_refresh, self._tpm_validity_ns
                    )
                async with trio.open_nursery() as admin:
                    if admin_socket:
                        mode = 0o666 if self._owner_uid == 0 else 0o600
                        await admin.start(
                            functools.partial(
                                serve_admin, self, self.socket_path, mode=mode, stop=self._stopped
                            )
                        )
                    log.info(
                        "linux_host_running", name=str(self.name), socket=str(self.socket_path)
                    )
                    task_status.started()
                    await self._stopped.wait()
                # The admin socket has closed: the answers under way were sent.
                nursery.cancel_scope.cancel()
        finally:
            # Each program's _serve_child, cancelled with the nursery, has killed and
            # reaped it: none outlives the host.
            self._nursery = None
            self._stopping = True
            self._finished.set()
            os.close(lock)
            log.info("linux_host_stopped", name=str(self.name))
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Write the counter table if a failed write left it pending, then close the TPM
        host a root host on a TPM opened (nothing for other hosts); :meth:`run` does it
        as it ends."""
        await self._counters.store.aclose()
        tpm, self._tpm = self._tpm, None
        if tpm is not None:
            await tpm.aclose()

    async def start_program(self, request: StartRequest, caller: Caller) -> ProgramInfo:
        """Measure, check and start a program (see the module docstring)."""
        try:
            return await self._start(request, caller)
        finally:
            for fd in request.fds():
                os.close(fd)

    async def _start(self, request: StartRequest, caller: Caller) -> ProgramInfo:
        nursery = self._nursery
        if nursery is None or self._stopping:
            raise HostError("the host is not running (or is shutting down)")
        uid, gid, groups = self._run_as(caller)
        if len(os.fsencode(request.path)) > MAX_PATH_BYTES:
            raise HostError(f"a program path may be at most {MAX_PATH_BYTES} bytes")
        limited = caller.uid not in (0, self._owner_uid)
        # Reserved before the first await and held until the program is charged or
        # the start fails, so that concurrent starts cannot together pass the limits.
        held = self._reserve(uid) if limited else 0
        prepared: PreparedProgram | None = None
        channel: HostChannel | None = None
        try:
            prepared = await prepare_program(
                request.path,
                self.directory / PROGRAMS_DIR,
                uid=uid,
                gid=gid,
                groups=groups,
                max_size=held if limited else DEFAULT_MAX_SIZE,
                entry=request.entry,
                interpreters=self._interpreters,
                tree_limits=self.config.program_tree,
            )
            if prepared.interpreter is not None and self._interpreters is not None:
                # Hashed again if it changed: later starts compare with this one.
                self._interpreters[prepared.interpreter.name] = prepared.interpreter
            if limited:
                size = prepared.charged
                # From what was reserved for the copy to what it takes, in one step.
                count, used = self._usage[uid]
                self._usage[uid] = (count, used - held + size)
                held = size
            if self._stopping:
                raise HostError("the host is shutting down")
            program_id = await self._next_program_id() if self.config.program_ids else 0
            name = self.name.extend(prepared.subprin(program_id=program_id))
            guard = await trio.to_thread.run_sync(self._guard)
            guard.check(name, "Execute")
            channel = HostChannel.open()
            process = await spawn_program(
                prepared,
                args=request.args,
                env=program_environment(
                    request.env,
                    allowed=(*DEFAULT_PASS_ENVIRONMENT, *self.config.pass_environment),
                    path=self.config.program_path or os.environ.get("PATH", os.defpath),
                    home=home_of(uid),
                ),
                cwd=_working_directory(request, prepared),
                uid=uid,
                gid=gid,
                groups=groups,
                channel=channel,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
                sandbox=Sandbox(
                    kind=self.config.sandbox,
                    share_network=self.config.share_network,
                    read_only=self.config.sandbox_paths,
                ),
            )
        except BaseException:
            if limited:
                self._release(uid, held)
            if channel is not None:
                channel.close()
            if prepared is not None:
                prepared.cleanup()
            raise
        # What this start holds becomes the program's, given back when it exits.
        child = _Child(
            name=name,
            process=process,
            prepared=prepared,
            uid=uid,
            gid=gid,
            program_id=program_id,
            size=held,
        )
        child.charged = limited
        self._children[child.pid] = child
        nursery.start_soon(self._serve_child, child, channel.host_stream())
        if self._stopping:  # shutdown began while this one was starting
            await signal_group(process, signal.SIGKILL)
            raise HostError("the host is shutting down")
        log.info("program_started", name=str(name), pid=child.pid, uid=uid, gid=gid)
        return child.info()

    def _reserve(self, uid: int) -> int:
        """Count a start against ``uid``'s limits; return the bytes it may copy.

        Synchronous: the check and the reservation happen with no checkpoint between.
        """
        count, used = self._usage[uid]
        if count >= MAX_PROGRAMS_PER_UID:
            raise HostError(f"uid {uid} already has {MAX_PROGRAMS_PER_UID} programs on this host")
        if self._max_others is not None and self._others >= self._max_others:
            raise HostError(
                f"the host already runs {self._others} programs for users other than root and "
                "its owner, its limit (each holds some of the host's file descriptors)"
            )
        room = MAX_PROGRAM_BYTES_PER_UID - used
        if room <= 0:
            raise HostError(
                f"uid {uid}'s programs already use {MAX_PROGRAM_BYTES_PER_UID} bytes on this host"
            )
        reserved = min(room, MAX_PROGRAM_SIZE_PER_START)
        self._usage[uid] = (count + 1, used + reserved)
        self._others += 1
        return reserved

    def _release(self, uid: int, size: int) -> None:
        """Give back one program and ``size`` bytes of ``uid``'s limits."""
        self._others -= 1
        count, used = self._usage[uid]
        if count <= 1:
            del self._usage[uid]
        else:
            self._usage[uid] = (count - 1, used - size)

    def _run_as(self, caller: Caller) -> tuple[int, int, tuple[int, ...]]:
        """The uid, gid and supplementary groups of a program started for ``caller``.

        The one answer that both the checks (the program file, the working directory)
        and the spawn use. A program that stays the host's user keeps the host's
        groups; one run as another user gets exactly the groups its caller held when
        it connected (``SO_PEERGROUPS``), never more from the user database.
        """
        if self._owner_uid == 0:
            uid, gid = caller.uid, caller.gid
        elif caller.uid in (0, self._owner_uid):
            uid, gid = self._owner_uid, os.getegid()
        else:
            raise AuthorizationError(
                f"this host runs as uid {self._owner_uid} and cannot start programs "
                f"for uid {caller.uid}"
            )
        if (uid, gid) == (os.geteuid(), os.getegid()):
            return uid, gid, tuple(os.getgroups())
        return uid, gid, tuple(caller.groups)

    def _guard(self) -> Guard:
        if self.config.guard == "Liberal":
            return LiberalGuard()
        # Reloaded per start: policy changes apply to the next program without a restart.
        return self.config.load_domain().guard

    async def _next_program_id(self) -> int:
        async with self._id_lock:
            path = self.directory / PROGRAM_ID_FILE

            def bump() -> int:
                last = 0
                if path.exists():
                    text = read_file(path, limit=64).decode("ascii", "replace").strip()
                    if not text.isdigit():
                        raise ConfigError(f"{path} does not hold a program id")
                    last = int(text)
                atomic_write(path, f"{last + 1}\n".encode(), mode=0o600)
                return last + 1

            return await trio.to_thread.run_sync(bump)

    async def _serve_child(self, child: _Child, stream: trio.abc.Stream) -> None:
        try:
            budget = self._budgets.get(child.uid)
            if budget is None:
                budget = self._budgets[child.uid] = ByteBudget(self._request_bytes_per_uid)
            # Its counter changes are charged to its uid and its measurement (its name's
            # extension without the id a restart under program_ids changes), root and
            # the owner keeping a reserve of the host's write budget.
            account = WriteAccount(
                str(child.prepared.subprin()),
                uid=child.uid,
                privileged=child.uid in (0, self._owner_uid),
            )
            counters = self._counters.charged_to(account)

            async def get_counters() -> ChargedCounters:
                return counters

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        serve_tao_rpc,
                        stream,
                        BoundTao(self._core, child, get_counters, check_name=_check_child_name),
                        request_timeout=self._request_timeout,
                        budget=budget,
                    )
                )
                await child.process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if child.process.returncode is None:
                # Cancelled (the host is going away) with the program still running:
                # it must not outlive the host untracked.
                with trio.CancelScope(shield=True):
                    await signal_group(child.process, signal.SIGKILL)
                    with trio.move_on_after(_REAP_TIMEOUT):
                        await child.process.wait()
            child.exit_status = child.process.returncode
            self._children.pop(child.pid, None)
            self._exited.append(child)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(child.prepared.cleanup)
            # Only now that its copy is gone: its share of its uid's limits, and the
            # news to whoever waits for it (who then finds nothing of it left).
            if child.charged:
                self._release(child.uid, child.size)
            child.exited.set()
            log.info(
                "program_exited", name=str(child.name), pid=child.pid, status=child.exit_status
            )

    # -- admin operations -------------------------------------------------------------

    def _select(self, selector: str, *, exited: bool = False) -> list[_Child]:
        """The children ``selector`` names (see :mod:`taonet.hosts.linux._select`)."""
        pool = list(self._children.values()) + (list(self._exited) if exited else [])
        return select_programs(
            selector,
            pool,
            pid=lambda c: c.pid,
            program_id=lambda c: c.instance_id,
            path=lambda c: c.prepared.source,
            names=lambda c: (c.name, c.launch_name),
            describe=_Child.describe,
        )

    def _check_control(self, caller: Caller, child: _Child, what: str) -> None:
        if caller.uid not in (0, self._owner_uid, child.uid):
            raise AuthorizationError(
                f"uid {caller.uid} may not {what} {child.name} (pid {child.pid}, uid "
                f"{child.uid}): only its owner, the host's owner or root may"
            )

    async def stop_programs(
        self, selector: str, caller: Caller, *, kill: bool = False
    ) -> Sequence[ProgramInfo]:
        chosen = self._select(selector)
        what = "kill" if kill else "stop"
        for child in chosen:
            self._check_control(caller, child, what)
        sig = signal.SIGKILL if kill else signal.SIGTERM
        for child in chosen:
            await signal_group(child.process, sig)
            log.info("program_signalled", name=str(child.name), pid=child.pid, signal=sig.name)
        return [child.info() for child in chosen]

    def list_programs(self) -> Sequence[ProgramInfo]:
        return [child.info() for child in self._children.values()]

    async def wait_program(self, selector: str, caller: Caller) -> ProgramInfo:
        chosen = self._select(selector, exited=True)
        if len(chosen) != 1:
            raise HostError(f"{selector} names {len(chosen)} programs: wait for one, by pid")
        child = chosen[0]
        self._check_control(caller, child, "wait for")
        await child.exited.wait()
        return child.info()

    async def shutdown(self, caller: Caller) -> None:
        """Stop every program, killing those that outlive the grace period; then exit."""
        if caller.uid not in (0, self._owner_uid):
            raise AuthorizationError(
                f"uid {caller.uid} may not shut down this host (owner uid {self._owner_uid})"
            )
        # Not stop(): this runs inside run(), which ends once the answer is sent.
        await self._stop_programs(self.config.grace_period)

    async def stop(self, *, grace_period: float | None = None) -> None:
        """Stop programs (SIGTERM, then SIGKILL after the grace period); return once
        :meth:`run` has finished (at once if it never ran)."""
        await self._stop_programs(
            self.config.grace_period if grace_period is None else grace_period
        )
        if self._running:
            await self._finished.wait()

    async def _stop_programs(self, grace: float) -> None:
        self._stopping = True
        children = list(self._children.values())
        for child in children:
            await signal_group(child.process, signal.SIGTERM)
        with trio.move_on_after(grace):
            for child in children:
                await child.exited.wait()
        survivors = [c for c in children if not c.exited.is_set()]
        for child in survivors:
            log.warning("program_killed_at_shutdown", name=str(child.name), pid=child.pid)
            await signal_group(child.process, signal.SIGKILL)
        with trio.move_on_after(_REAP_TIMEOUT):
            for child in survivors:
                await child.exited.wait()
        self._stopped.set()


def _working_directory(request: StartRequest, prepared: PreparedProgram) -> str | None:
    """Where a program starts: the directory the start names, else a program
    directory's copy root (else None: see :func:`spawn_program`)."""
    if request.cwd is not None or prepared.root is None:
        return request.cwd
    return str(prepared.root)


def _raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit if the kernel allows; return
    the soft limit now (``resource.RLIM_INFINITY`` if unlimited)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:  # an unlimited hard limit over fs.nr_open
            log.info("open_files_limit_kept", soft=soft, hard=hard, error=str(exc))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft


def _max_other_programs(soft: int) -> int | None:
    """The cap on other users' programs for a soft ``RLIMIT_NOFILE`` of ``soft``: half
    the descriptors (see the module docstring); None if descriptors are unlimited."""
    import resource

    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return soft // 2 // FDS_PER_PROGRAM


def _check_private_directory(path: Path) -> None:
    """The host directory must be the host user's and writable by nobody else: whoever
    could write there could swap a program between its hashing and its start."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot use the host directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"the host directory {path} belongs to uid {st.st_uid}, not to this host")
    if st.st_mode & 0o022:
        raise ConfigError(
            f"the host directory {path} is writable by others (mode {st.st_mode & 0o777:o})"
        )


def _refuse_first_profile(directory: Path, cert_der: bytes | None) -> None:
    """ConfigError, naming ``taonet host recertify``, for a certificate of the first profile.

    Domains refuse every attestation such a certificate endorses (and Go cannot parse
    it), so a host that started with it could not get one program provisioned. Any
    other fault in the certificate is left to the verifiers, which say what it is.
    """
    if cert_der is None:
        return
    try:
        refuse_retired_profile(load_certificate(cert_der), what="host certificate")
    except AuthenticationError:
        raise ConfigError(
            f"{directory / CERT_FILE} is of taonet's first certificate profile, which domains "
            f"now refuse: run 'taonet host recertify --host {directory}' (same key and name)"
        ) from None
    except (CodecError, ValueError):
        return


def _lock_directory(directory: Path) -> int:
    """An exclusive flock on the directory's ``host.lock``; HostError if it is held.

    Two hosts can both find nobody on the admin socket (or a socket bound but not yet
    listening, which looks stale) before either serves it; the lock makes sure only
    one goes on to serve the directory.
    """
    import fcntl

    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise HostError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise HostError(
            f"a Linux host is already running for {directory} (it holds {path})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise HostError(f"cannot lock {path}: {exc.strerror or exc}") from None
    return fd
