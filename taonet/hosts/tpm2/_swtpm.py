"""A throwaway software TPM (swtpm) for tests and ``taonet demo --tpm2``.

:meth:`Swtpm.create` makes a TPM in a directory of its own:

* a private manufacturer CA: ``swtpm_localca`` configured by files in ``conf/``, its
  state in ``ca/`` (the system's ``/var/lib/swtpm-localca`` is never touched), which
  makes a root CA and an intermediate that signs the EK certificates;
* ``swtpm_setup`` with EK certificates (RSA-2048 at NV 0x01c00002, ECC P-384 at
  0x01c00016), a platform certificate and only the SHA-256 PCR bank, state in
  ``state/``;
* then, with swtpm running, the TCG L-2 ECC P-256 EK and its certificate from the same
  CA at NV 0x01c0000a (swtpm 0.7.1 makes none), defined under the platform hierarchy
  and write-locked, as a manufacturer would.

swtpm listens on 127.0.0.1, on a free port N (commands) and N+1 (control, where
tpm2-tss' swtpm TCTI expects it), recorded in the directory and kept by every later
start (a taken recorded port is an error, never a move); :attr:`Swtpm.tcti` is
``swtpm:host=127.0.0.1,port=N``.
:meth:`~Swtpm.stop` ends that swtpm by its pid and waits for it; :meth:`~Swtpm.restart`
starts it again on the same state and ports: a TPM Reset (PCRs reset, saved contexts
refused; NV kept). The blocking methods have async twins (``acreate``, ``astart``,
``astop``, ``arestart``, ``async with``) that run them in a worker thread.

Missing binaries raise :class:`~taonet.ConfigError` naming them and saying to install
``swtpm swtpm-tools``; a tool that fails raises :class:`~taonet.HostError` with the
end of its log (bounded).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from taonet._errors import ConfigError, HostError
from taonet._files import atomic_write, read_file
from taonet._log import get_logger

__all__ = ["EK_P256_CERT_INDEX", "SWTPM_INSTALL_HINT", "Swtpm"]

_log = get_logger(__name__)

#: What to install when swtpm or its tools are missing.
SWTPM_INSTALL_HINT: Final = "install swtpm swtpm-tools (apt-get install swtpm swtpm-tools)"
#: The TCG NV index of the ECC P-256 (L-2) EK certificate.
EK_P256_CERT_INDEX: Final = 0x01C0000A

_TOOL_TIMEOUT: Final = 120.0  # seconds a setup tool may take (swtpm_setup takes ~1 s)
_STOP_TIMEOUT: Final = 10.0  # seconds swtpm may take to exit after SIGTERM
_LOG_TAIL: Final = 2000  # bytes of a log quoted in an error
_START_ATTEMPTS: Final = 8  # tries to find a free port pair
_MAX_PEM: Final = 64 * 1024


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"{name} not found on PATH: {SWTPM_INSTALL_HINT}")
    return path


def _tail(path: Path, limit: int = _LOG_TAIL) -> str:
    """The last ``limit`` bytes of the file at ``path`` as text ("" if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").strip()
    return ("..." if size > limit else "") + text


def _run(args: list[str], log: Path, what: str) -> None:
    """Run a setup tool with its output appended to ``log``; HostError if it fails."""
    with log.open("ab") as out:
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=_TOOL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{what} did not finish in {_TOOL_TIMEOUT:.0f} s") from exc
        except OSError as exc:
            raise HostError(f"cannot run {what}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        raise HostError(f"{what} failed (exit {done.returncode}): {_tail(log)}")


def _free_port_pair() -> int:
    """A port N with N and N+1 free on 127.0.0.1 just now (swtpm may still lose a race)."""
    for _ in range(64):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise HostError("no free pair of adjacent TCP ports on 127.0.0.1")


def _is_our_swtpm(pid: int, state: Path) -> bool:
    """Whether ``pid`` is a swtpm serving ``state`` (not a reused pid)."""
    try:
        cmdline = read_file(f"/proc/{pid}/cmdline", limit=64 * 1024)
    except ConfigError:
        return False
    args = cmdline.split(b"\0")
    return bool(args) and os.path.basename(args[0]) == b"swtpm" and f"dir={state}".encode() in args


class Swtpm:
    """One swtpm instance with its state, CA and configuration in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """An existing swtpm directory (made by :meth:`create`), not started: :meth:`start`
        runs it on the TPM state it has (a TPM made earlier, EK certificates and all)."""
        self.directory: Final = Path(directory).resolve()
        self._port: int | None = None
        self._pid: int | None = None

    # ---- paths --------------------------------------------------------------------

    @property
    def _conf(self) -> Path:
        return self.directory / "conf"

    @property
    def _ca(self) -> Path:
        return self.directory / "ca"

    @property
    def _state(self) -> Path:
        return self.directory / "state"

    @property
    def _pidfile(self) -> Path:
        return self.directory / "swtpm.pid"

    @property
    def _portfile(self) -> Path:
        return self.directory / "swtpm.port"

    @property
    def log_path(self) -> Path:
        """swtpm's own log (level 1: errors)."""
        return self.directory / "swtpm.log"

    # ---- creation -----------------------------------------------------------------

    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, start: bool = True) -> Self:
        """Make a new TPM (CA, EK certificates, state) in ``directory`` and start it.

        ``directory`` must be missing or empty. With ``start=False`` swtpm is stopped
        again once the P-256 EK certificate is in place, and its port forgotten (the
        first :meth:`start` picks a free pair).
        """
        for name in ("swtpm", "swtpm_setup", "swtpm_localca"):
            _tool(name)
        self = cls(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if any(self.directory.iterdir()):
            raise ConfigError(f"{self.directory} is not empty: a new swtpm needs its own directory")
        for sub in ("conf", "ca", "state", "ekcerts"):
            (self.directory / sub).mkdir(mode=0o700)
        self._write_config()
        _run(
            [
                _tool("swtpm_setup"),
                *("--tpm2", "--tpmstate", str(self._state)),
                *("--config", str(self._conf / "swtpm_setup.conf")),
                *("--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--overwrite"),
                *("--pcr-banks", "sha256", "--display"),
                *("--write-ek-cert-files", str(self.directory / "ekcerts")),
            ],
            self.directory / "setup.log",
            "swtpm_setup",
        )
        self.start()
        try:
            self._add_p256_ek()
        except BaseException:
            self.stop()
            raise
        if not start:
            self.stop()
            # Nothing has saved this TCTI yet: the first real start picks a free pair
            # (rather than insist on a port another process may have taken since).
            self._port = None
            with contextlib.suppress(FileNotFoundError):
                self._portfile.unlink()
        _log.info("swtpm_created", directory=str(self.directory), tcti=self.tcti if start else None)
        return self

    def _write_config(self) -> None:
        atomic_write(
            self._conf / "swtpm-localca.conf",
            (
                f"statedir = {self._ca}\n"
                f"signingkey = {self._ca / 'signkey.pem'}\n"
                f"issuercert = {self._ca / 'issuercert.pem'}\n"
                f"certserial = {self._ca / 'certserial'}\n"
            ).encode(),
        )
        atomic_write(
            self._conf / "swtpm-localca.options",
            b"--platform-manufacturer taonet-test\n"
            b"--platform-version 2.1\n"
            b"--platform-model swtpm\n",
        )
        atomic_write(
            self._conf / "swtpm_setup.conf",
            (
                f"create_certs_tool = {_tool('swtpm_localca')}\n"
                f"create_certs_tool_config = {self._conf / 'swtpm-localca.conf'}\n"
                f"create_certs_tool_options = {self._conf / 'swtpm-localca.options'}\n"
                "active_pcr_banks = sha256\n"
            ).encode(),
        )

    def _add_p256_ek(self) -> None:
        """Give the TPM the L-2 ECC P-256 EK's certificate at NV 0x01c0000a."""
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
        from tpm2_pytss.TSS2_Exception import TSS2_Exception
        from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMS_NV_PUBLIC

        from taonet.hosts.tpm2._setup import _ek_template, _esapi, _tss_errors

        with _esapi(self.tcti) as ectx:
            with contextlib.suppress(TSS2_Exception):
                ectx.tr_from_tpmpublic(EK_P256_CERT_INDEX)
                return  # already there
            with _tss_errors("CreatePrimary (EK-ECC256)"):
                ek, ek_public, _, _, _ = ectx.create_primary(
                    TPM2B_SENSITIVE_CREATE(), _ek_template("EK-ECC256"), ESYS_TR.ENDORSEMENT
                )
                ectx.flush_context(ek)
            key = load_pem_public_key(ek_public.to_pem())
            if not isinstance(key, ec.EllipticCurvePublicKey):  # pragma: no cover
                raise HostError("the EK-ECC256 template did not give an ECC key")
            numbers = key.public_numbers()
            der = self._issue_ek_cert(f"x={numbers.x:064x},y={numbers.y:064x},id=secp256r1")
            attributes = (
                TPMA_NV.PPWRITE
                | TPMA_NV.WRITEDEFINE
                | TPMA_NV.PPREAD
                | TPMA_NV.OWNERREAD
                | TPMA_NV.AUTHREAD
                | TPMA_NV.NO_DA
                | TPMA_NV.PLATFORMCREATE
            )
            nv_public = TPM2B_NV_PUBLIC(
                nvPublic=TPMS_NV_PUBLIC(
                    nvIndex=EK_P256_CERT_INDEX,
                    nameAlg=TPM2_ALG.SHA256,
                    attributes=attributes,
                    dataSize=len(der),
                )
            )
            # swtpm keeps the platform hierarchy enabled with an empty auth, even after
            # swtpm_setup --lock-nvram: the manufacturer's way in.
            with _tss_errors("NV_DefineSpace/NV_Write (EK-ECC256 certificate)"):
                handle = ectx.nv_define_space(b"", nv_public, ESYS_TR.PLATFORM)
                for offset in range(0, len(der), 1024):
                    ectx.nv_write(
                        handle, der[offset : offset + 1024], offset, auth_handle=ESYS_TR.PLATFORM
                    )
                ectx.nv_write_lock(handle, auth_handle=ESYS_TR.PLATFORM)

    def _issue_ek_cert(self, ek: str) -> bytes:
        with tempfile.TemporaryDirectory(dir=self.directory) as out:
            _run(
                [
                    _tool("swtpm_localca"),
                    *("--type", "ek", "--ek", ek, "--dir", out, "--tpm2"),
                    *("--tpm-spec-family", "2.0", "--tpm-spec-level", "0"),
                    *("--tpm-spec-revision", "164", "--tpm-manufacturer", "id:00001014"),
                    *("--tpm-model", "swtpm", "--tpm-version", "id:20191023"),
                    *("--configfile", str(self._conf / "swtpm-localca.conf")),
                    *("--optsfile", str(self._conf / "swtpm-localca.options")),
                ],
                self.directory / "setup.log",
                "swtpm_localca (P-256 EK certificate)",
            )
            return read_file(Path(out) / "ek.cert", limit=4096)

    # ---- what tests and the demo read ----------------------------------------------

    @property
    def port(self) -> int:
        """The command port (the control port is the next one); ConfigError before start."""
        if self._port is None:
            raise ConfigError(f"swtpm in {self.directory} has not been started")
        return self._port

    @property
    def tcti(self) -> str:
        """``swtpm:host=127.0.0.1,port=N`` (taonet's TCTI string for this TPM)."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def pid(self) -> int | None:
        """swtpm's process id while it runs."""
        return self._pid

    def manufacturer_ca_pems(self) -> tuple[bytes, bytes]:
        """``(root, intermediate)`` PEM certificates of the throwaway manufacturer CA (the
        intermediate signs the EK certificates; a domain trusting this TPM lists both)."""
        return (
            read_file(self._ca / "swtpm-localca-rootca-cert.pem", limit=_MAX_PEM),
            read_file(self._ca / "issuercert.pem", limit=_MAX_PEM),
        )

    # ---- running ------------------------------------------------------------------

    def _recorded_port(self) -> int | None:
        try:
            text = read_file(self._portfile, limit=16).strip()
        except ConfigError:
            return None
        if text.isascii() and text.isdigit() and 1 <= int(text) <= 65534:
            return int(text)
        return None

    def start(self, *, port: int | None = None) -> None:
        """Start swtpm on its state, on ports N (commands) and N+1 (control).

        N is ``port`` if given; else the port this object ran on before (so a restart
        keeps the TCTI); else the port recorded by the directory's last start (so a TPM
        host's saved TCTI stays right across runs of a demo); else, on a first start,
        a free pair. HostError if a port that must be used is taken: never a silent
        move to another, since a host's saved TCTI names the old port and whoever
        holds it could sit between that host and the TPM.
        """
        if self._pid is not None:
            raise HostError(f"swtpm in {self.directory} is already running (pid {self._pid})")
        if port is not None and not 1 <= port <= 65534:
            raise ConfigError(f"swtpm port {port}: expected 1..65534 (N+1 is the control port)")
        swtpm = _tool("swtpm")
        if not (self._state / "tpm2-00.permall").is_file():
            raise ConfigError(f"no swtpm state in {self.directory}: make one with Swtpm.create")
        fixed = port if port is not None else self._port
        if fixed is None:
            fixed = self._recorded_port()
        for _ in range(_START_ATTEMPTS):
            candidate = fixed if fixed is not None else _free_port_pair()
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._pidfile.unlink()
            args = [
                *(swtpm, "socket", "--tpm2", "--daemon"),
                *("--server", f"type=tcp,port={candidate},bindaddr=127.0.0.1"),
                *("--ctrl", f"type=tcp,port={candidate + 1},bindaddr=127.0.0.1"),
                *("--flags", "not-need-init,startup-clear"),
                *("--tpmstate", f"dir={self._state}", "--pid", f"file={self._pidfile}"),
                *("--log", f"file={self.log_path},level=1"),
            ]
            try:
                # --daemon: swtpm returns once its sockets listen (or failed to).
                done = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=_TOOL_TIMEOUT,
                    check=False,
                )
            except (subprocess.TimeoutExpired, OSError) as exc:
                raise HostError(f"cannot start swtpm: {exc}") from exc
            if done.returncode == 0:
                self._pid = self._read_pid()
                self._port = candidate
                atomic_write(self._portfile, f"{candidate}\n".encode())
                _log.info("swtpm_started", pid=self._pid, port=candidate)
                return
            why = _tail(self.log_path)
            if "Address already in use" in why:
                if fixed is None:
                    continue
                raise HostError(
                    f"swtpm's port {candidate} or {candidate + 1} on 127.0.0.1 is taken by "
                    "another process: not moving to another port (a TPM host's saved TCTI "
                    "names this one, and whoever holds it could sit between that host and "
                    "the TPM); stop that process"
                )
            raise HostError(
                f"swtpm did not start (exit {done.returncode}) on ports {candidate} and"
                f" {candidate + 1}: {why}"
            )
        raise HostError(f"swtpm did not start: no free port pair in {_START_ATTEMPTS} tries")

    def _read_pid(self) -> int:
        text = read_file(self._pidfile, limit=32).strip()
        if not text.isdigit():
            raise HostError(f"swtpm wrote no pid to {self._pidfile}")
        return int(text)

    def stop(self) -> None:
        """Stop swtpm (SIGTERM by its pid, SIGKILL if it lingers) and wait until it exited."""
        pid, self._pid = self._pid, None
        if pid is None or not _is_our_swtpm(pid, self._state):
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return
                # A pidfd turns readable when the process has exited (even as an
                # unreaped zombie of another parent).
                ready, _, _ = select.select([pidfd], [], [], _STOP_TIMEOUT)
                if ready:
                    _log.info("swtpm_stopped", pid=pid)
                    return
            raise HostError(f"swtpm (pid {pid}) did not exit after SIGKILL")
        finally:
            os.close(pidfd)
            with contextlib.suppress(FileNotFoundError):
                self._pidfile.unlink()

    def restart(self) -> None:
        """Stop and start again on the same state and ports (a TPM Reset: PCRs and
        loaded or saved contexts are gone, NV stays). HostError if another process
        took one of the ports meanwhile."""
        port = self._port
        self.stop()
        self.start(port=port)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- async twins (worker thread; cancellation waits for the step to finish) -----

    @classmethod
    async def acreate(cls, directory: str | os.PathLike[str], *, start: bool = True) -> Self:
        """:meth:`create` in a worker thread."""
        import trio

        return await trio.to_thread.run_sync(lambda: cls.create(directory, start=start))

    async def astart(self) -> None:
        """:meth:`start` in a worker thread."""
        import trio

        await trio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        """:meth:`stop` in a worker thread."""
        import trio

        await trio.to_thread.run_sync(self.stop)

    async def arestart(self) -> None:
        """:meth:`restart` in a worker thread."""
        import trio

        await trio.to_thread.run_sync(self.restart)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import trio

        with trio.CancelScope(shield=True):
            await self.astop()
