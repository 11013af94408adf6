"""``taonet host init|start|stop|show|certify|recertify``, ``taonet run|list|stop|kill``.

The host directory is ``--host DIR``, else ``$TAO_HOST``, else ``linux_tao_host`` in
the domain (``--domain DIR`` or ``$TAO_DOMAIN``). A root host is started with its
password (prompt or ``--password-file``); a stacked host is started as a hosted
program of its parent (``taonet run $(command -v taonet) host start --foreground
--host DIR``), which it finds from the CLOUDPROXY_TAO_HOST_* variables.

``taonet host start`` refuses if a host already answers on the admin socket, and a
started host holds ``host.lock`` in its directory, so two starts never both serve it.
Without ``--foreground`` it starts the host in the background (an isolated
interpreter in ``/``; output in ``host.log`` in the host directory) and returns once
that very process reports that it serves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from taonet import ConfigError, HostError
from taonet.cli._domain_cmd import add_domain_option
from taonet.cli._failures import NotFoundError, UsageError, is_missing
from taonet.cli._host_start import (
    START_TIMEOUT,
    ready_fd,
    refuse_if_running,
    start_background,
    start_foreground,
)
from taonet.cli._output import add_output_option, emit
from taonet.cli._password import add_password_option, get_password
from taonet.cli._programs_cmd import SHORT_ID, admin_call, list_programs, signal_programs
from taonet.hosts.linux import (
    ADMIN_SOCKET,
    LOCK_FILE,
    LinuxHostConfig,
    default_host_dir,
)


def add_host_option(parser: Any) -> None:
    add_domain_option(parser)
    parser.add_argument(
        "--host",
        metavar="DIR",
        type=Path,
        default=Path(os.environ["TAO_HOST"]) if os.environ.get("TAO_HOST") else None,
        help="Linux host directory (default: $TAO_HOST, else linux_tao_host in the domain)",
    )


def host_dir(args: argparse.Namespace) -> Path:
    if args.host is not None:
        path: Path = args.host
        return path
    if args.domain is not None:
        return default_host_dir(Path(args.domain))
    raise UsageError("no host: give --host DIR or --domain DIR (or set TAO_HOST or TAO_DOMAIN)")


def existing_host_dir(args: argparse.Namespace) -> Path:
    """The host directory, which must exist (NotFoundError: exit 3)."""
    directory = host_dir(args)
    if is_missing(directory):
        raise NotFoundError(f"no Linux host directory at {directory}")
    return directory


def register(sub: Any) -> None:
    p = sub.add_parser("host", help="create, start, stop and show a Linux Tao host")
    cmds = p.add_subparsers(dest="host_command", metavar="ACTION", required=True)

    init = cmds.add_parser("init", help="create a Linux host directory")
    kind = init.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--root",
        dest="kind",
        action="store_const",
        const="root",
        help="a root host with soft keys, certified by the domain's policy key",
    )
    kind.add_argument(
        "--stacked",
        dest="kind",
        action="store_const",
        const="stacked",
        help="a host run by a parent Tao, its keys sealed by the parent",
    )
    add_host_option(init)
    _add_tpm2_options(init)
    init.add_argument(
        "--liberal",
        action="store_true",
        help="let any program execute (no domain guard; tests and demos)",
    )
    init.add_argument(
        "--program-ids",
        action="store_true",
        help="name programs Program(id, [hash]) with increasing ids",
    )
    init.add_argument(
        "--sandbox",
        choices=["none", "bwrap"],
        default="none",
        help="run programs under bubblewrap (default: none)",
    )
    init.add_argument(
        "--sandbox-path",
        metavar="PATH",
        action="append",
        default=[],
        help="with bwrap, a path programs still see read-only (repeatable; e.g. a "
        "virtual environment under /tmp)",
    )
    init.add_argument(
        "--grace-period",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="time programs get after SIGTERM at shutdown (default 5)",
    )
    add_password_option(init)
    init.add_argument(
        "--policy-password-file",
        metavar="FILE",
        type=Path,
        help="the policy key's password, to certify a root host (default: prompt)",
    )
    init.add_argument(
        "--no-certify", action="store_true", help="do not have the domain certify a root host now"
    )
    add_output_option(init)
    init.set_defaults(func=_init)

    start = cmds.add_parser("start", help="start the host (in the background by default)")
    add_host_option(start)
    start.add_argument("--foreground", action="store_true", help="run in this process")
    add_password_option(start)
    # How a background start learns that the host it started (not another) serves.
    start.add_argument("--ready-fd", type=ready_fd, default=None, help=argparse.SUPPRESS)
    start.set_defaults(func=_start)

    stop = cmds.add_parser("stop", help="stop the host and its programs")
    add_host_option(stop)
    stop.set_defaults(func=_stop)

    certify = cmds.add_parser(
        "certify",
        help="have the domain's quote service certify a root host's TPM quote key "
        "(a host made with --tpm2 and no --quote-service, or whose certificate is due)",
    )
    add_host_option(certify)
    certify.add_argument("--quote-service", metavar="HOST:PORT", required=True)
    add_output_option(certify)
    certify.set_defaults(func=_certify)

    show = cmds.add_parser("show", help="show the host's configuration and state")
    add_host_option(show)
    add_output_option(show)
    show.set_defaults(func=_show)

    recertify = cmds.add_parser(
        "recertify",
        help="have the policy key sign a new certificate for a stopped root host's key "
        "(for a certificate of taonet's first profile, or one about to expire)",
    )
    add_domain_option(recertify)
    recertify.add_argument(
        "--host",
        "--host-dir",
        dest="host",
        metavar="DIR",
        type=Path,
        default=Path(os.environ["TAO_HOST"]) if os.environ.get("TAO_HOST") else None,
        help="Linux host directory (default: $TAO_HOST, else linux_tao_host in the domain)",
    )
    add_password_option(recertify)
    recertify.add_argument(
        "--policy-password-file",
        metavar="FILE",
        type=Path,
        help="the policy key's password (default: prompt)",
    )
    recertify.set_defaults(func=_recertify)

    run = sub.add_parser(
        "run",
        help="start a program on a Linux host",
        description="Start a program (a file, or a directory of files) on a Linux host. "
        "A directory is measured whole and runs its entry (default __main__.py) in the "
        "root of its private copy; Python entries and '#!/usr/bin/env NAME' scripts run "
        "with the host's own interpreter ([interpreters] in host.toml). "
        "Example: taonet run --wait examples/hosted_service",
    )
    add_host_option(run)
    run.add_argument(
        "--wait", action="store_true", help="wait for the program and exit with its status"
    )
    run.add_argument(
        "--entry",
        metavar="RELPATH",
        help="for a program directory: the file in it to run (default: __main__.py)",
    )
    run.add_argument(
        "--cwd",
        metavar="DIR",
        help="the program's working directory (default: this directory for a file, "
        "the root of its measured copy for a program directory)",
    )
    run.add_argument("program", metavar="PROGRAM")
    run.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)

    lst = sub.add_parser(
        "list",
        help="list the programs running on a Linux host (id, pid, user, start, file)",
        description="List the programs running on a Linux host: root sees every "
        "program, anyone else only the programs that run as their own uid.",
    )
    add_host_option(lst)
    add_output_option(lst)
    lst.set_defaults(func=_list)

    for verb, helptext in (("stop", "SIGTERM"), ("kill", "SIGKILL")):
        cmd = sub.add_parser(
            verb,
            help=f"{helptext} a hosted program (by id, file name, pid or principal)",
            description=f"{helptext} the program SELECTOR names: a pid, a file name or "
            "path, or an id (as taonet list shows it); if nothing matches exactly, a "
            "unique prefix of an id (4 or more hex digits); id:HEX, pid:N or file:NAME "
            "for one kind only; or a full principal (every instance of that program). "
            "A selector that names several programs is refused, with the candidates "
            "listed.",
        )
        add_host_option(cmd)
        cmd.add_argument("selector", metavar="SELECTOR")
        add_output_option(cmd)
        cmd.set_defaults(func=_signal, kill=verb == "kill")


# -- host -----------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from taonet.domain import Domain
    from taonet.hosts.linux import LinuxHost

    if args.tpm2:
        return _init_tpm2(args)
    if args.tcti is not None or args.pcrs is not None or args.quote_service is not None:
        raise UsageError("--tcti, --pcrs and --quote-service are for a root host on a TPM (--tpm2)")

    directory = host_dir(args)
    config = config_from_args(args, kind=args.kind)
    domain = config.domain
    password = signer = None
    if args.kind == "root":
        password = get_password(args.password_file, prompt="New host password", confirm=True)
        if domain is not None and not args.no_certify:
            policy = get_password(args.policy_password_file, prompt="Policy key password")
            signer = Domain.load(domain).unlock(policy)
    name = LinuxHost.init(directory, config, password=password, policy_signer=signer)

    def text() -> None:
        print(f"created a {args.kind} Linux host in {directory}")
        if name is not None:
            print(f"name:   {name}" + ("  (certified by the policy key)" if signer else ""))
        else:
            print("its keys and name come from its parent when it first starts")
        print(f"guard:  {'Liberal (anything may execute)' if args.liberal else 'the domain guard'}")
        for interpreter, path in config.interpreters or ():
            print(f"interpreter: {interpreter} = {path}  ([interpreters] in host.toml)")
        if not config.interpreters:
            print("interpreter: none found ([interpreters] in host.toml names them)")

    emit(
        args,
        {
            "host": str(directory),
            "kind": args.kind,
            "name": None if name is None else str(name),
            "certified": signer is not None,
            "guard": config.guard,
            "interpreters": [{"name": n, "path": p} for n, p in config.interpreters or ()],
        },
        text,
    )
    return 0


def _start(args: argparse.Namespace) -> int:
    directory = existing_host_dir(args)
    config = LinuxHostConfig.load(directory)
    if args.foreground:
        return start_foreground(args, directory, config)
    if config.kind == "stacked":
        raise ConfigError(
            "a stacked host runs as a hosted program: use --foreground under taonet run"
        )
    # The child starts in / (not the caller's directory), so it needs absolute paths.
    directory = directory.resolve()
    refuse_if_running(directory)
    if config.root_tao == "tpm2":
        return start_background(directory, b"")  # its keys are sealed by the TPM
    password = get_password(args.password_file, prompt="Host password")
    return start_background(directory, password)


def _admin(args: argparse.Namespace, action: Any) -> Any:
    return admin_call(existing_host_dir(args), action)


def _stop(args: argparse.Namespace) -> int:
    """Ask the host to shut down; return once it has let go of its directory.

    The host answers once its programs are stopped, and lets go of ``host.lock`` as
    it exits: waiting for that lock (a blocking ``flock`` in a thread, not polling)
    means a ``taonet host start`` right after this finds the directory free. If the
    host closes before its answer is out, the released lock still tells that it
    stopped.
    """
    import trio

    from taonet.hosts.linux import AdminClient

    directory = existing_host_dir(args)
    refused: HostError | None = None

    async def shutdown() -> bool | None:
        nonlocal refused
        async with AdminClient.connect(directory / ADMIN_SOCKET) as admin:
            try:
                await admin.shutdown()
            except HostError as exc:
                refused = exc
        with trio.move_on_after(START_TIMEOUT):
            return await _released(directory / LOCK_FILE)
        return False

    released = trio.run(shutdown)
    if refused is not None and not released:
        raise refused
    if released is False:
        raise HostError(
            f"the host said it stopped, but still holds {directory / LOCK_FILE} "
            f"after {START_TIMEOUT:g} s"
        )
    print("Linux host stopped")
    return 0


async def _released(lock: Path) -> bool | None:
    """Wait until no process holds ``lock`` (True); None if it cannot be checked.

    A host holds an exclusive ``flock`` on its ``host.lock`` while it runs; a shared
    lock is granted once that is gone, and is given up at once.
    """
    import fcntl

    import trio

    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True  # no host ever served this directory
    except OSError:
        return None  # not ours to read (another user's host): trust its answer
    try:
        # On cancellation the thread is abandoned still waiting; the lock it may
        # get later dies with the open file, which its pending call alone keeps.
        await trio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_SH, abandon_on_cancel=True)
    finally:
        os.close(fd)
    return True


def _show(args: argparse.Namespace) -> int:
    directory = existing_host_dir(args)
    config = LinuxHostConfig.load(directory)
    lines = [
        f"host directory: {directory}",
        f"kind:           {config.kind}",
        f"domain:         {config.domain or '-'}",
        f"guard:          {config.guard}",
        f"program ids:    {'on' if config.program_ids else 'off'}",
        f"sandbox:        {config.sandbox}",
    ]
    document: dict[str, Any] = {
        "host": str(directory),
        "kind": config.kind,
        "domain": config.domain,
        "guard": config.guard,
        "program_ids": config.program_ids,
        "sandbox": config.sandbox,
        "running": False,
        "name": None,
        "programs": None,
    }

    import trio

    from taonet.hosts.linux import AdminClient

    async def state() -> tuple[Any, Any] | None:
        async with contextlib.AsyncExitStack() as stack:
            try:
                admin = await stack.enter_async_context(
                    AdminClient.connect(directory / ADMIN_SOCKET)
                )
            except HostError:
                return None  # nothing answers: not running
            return await admin.host_name(), await admin.list()

    found = trio.run(state)
    if found is None:
        lines.append("state:          not running")
    else:
        name, programs = found
        lines.append(f"state:          running as {name}")
        lines.append(f"programs:       {len(programs)}")
        document.update(running=True, name=str(name), programs=len(programs))
    if config.root_tao == "tpm2":
        from taonet.cli._host_tpm2 import show_tpm2

        show_tpm2(directory, None if found is None else found[0], lines, document)
    emit(args, document, lambda: print("\n".join(lines)))
    return 0


def _add_tpm2_options(init: Any) -> None:
    init.add_argument(
        "--tpm2",
        action="store_true",
        help="with --root: the host's root is a TPM 2.0 (its keys sealed by the TPM, its "
        "name tpm2([quote key]).PCRs(...)); needs the tpm2 extra",
    )
    init.add_argument(
        "--tcti",
        metavar="STRING",
        help="with --tpm2: the TPM to use, swtpm:host=H,port=N (H loopback: localhost or "
        "127.x.x.x, since TPM commands travel in clear) or device:/dev/tpmrm0 "
        "(default: $TAO_TCTI, else device:/dev/tpmrm0)",
    )
    init.add_argument(
        "--pcrs",
        metavar="LIST",
        help="with --tpm2: the PCRs of the SHA-256 bank the host is named by and seals to, "
        "comma-separated (default 0,1,2,3,4,7)",
    )
    init.add_argument(
        "--quote-service",
        metavar="HOST:PORT",
        help="with --tpm2: have the domain's quote service certify the quote key now "
        "(else later: taonet host certify)",
    )


def config_from_args(
    args: argparse.Namespace, *, kind: str, root_tao: str = "soft"
) -> LinuxHostConfig:
    """The LinuxHostConfig ``host init`` writes: ``--domain`` and ``--sandbox-path``
    made absolute, the guard from ``--liberal``, the default interpreters."""
    from taonet.hosts.linux import default_interpreters

    return LinuxHostConfig(
        kind=kind,
        root_tao=root_tao,
        domain=str(Path(args.domain).resolve()) if args.domain is not None else None,
        guard="Liberal" if args.liberal else "domain",
        program_ids=args.program_ids,
        sandbox=args.sandbox,
        sandbox_paths=tuple(str(Path(p).resolve()) for p in args.sandbox_path),
        grace_period=args.grace_period,
        interpreters=default_interpreters(),
    )


def _init_tpm2(args: argparse.Namespace) -> int:
    """``host init --root --tpm2``: see :mod:`taonet.cli._host_tpm2`."""
    from taonet.cli._host_tpm2 import init_tpm2

    if args.kind != "root":
        raise UsageError("--tpm2 makes a root host: give --root")
    if args.policy_password_file is not None or args.password_file is not None:
        raise UsageError(
            "a root host on a TPM has no password and is certified by the quote service "
            "(--quote-service), not with the policy key's password"
        )
    return init_tpm2(args, host_dir(args))


def _certify(args: argparse.Namespace) -> int:
    """``host certify``: see :mod:`taonet.cli._host_tpm2`."""
    from taonet.cli._host_tpm2 import certify_tpm2

    return certify_tpm2(args, existing_host_dir(args))


def _recertify(args: argparse.Namespace) -> int:
    """``host recertify``: see :mod:`taonet.cli._host_recertify`."""
    from taonet.cli._host_recertify import recertify_host

    directory = host_dir(args)
    if (directory / "host.toml").exists() and LinuxHostConfig.load(directory).root_tao == "tpm2":
        raise UsageError(
            "a root host on a TPM is certified by the quote service: "
            "taonet host certify --quote-service HOST:PORT"
        )
    name, cert = recertify_host(
        directory,
        args.domain,
        host_password=lambda: get_password(args.password_file, prompt="Host password"),
        policy_password=lambda: get_password(
            args.policy_password_file, prompt="Policy key password"
        ),
        refuse_if_running=refuse_if_running,
    )
    print(f"recertified the Linux host in {directory}")
    print(f"name:   {name}  (unchanged: same key, same sealed state)")
    print(f"serial: {cert.serial_number:x}")
    print(f"valid:  until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    return 0


# -- programs -----------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    program = args.program
    if os.sep not in program and not os.path.isdir(program):
        found = shutil.which(program)
        if found is None:
            raise NotFoundError(f"{program}: not found on PATH")
        program = found
    program = str(Path(program).resolve())
    if is_missing(program):
        raise NotFoundError(f"{program}: no such file or directory")
    tree = os.path.isdir(program)
    if args.entry is not None and not tree:
        raise UsageError(f"--entry is for a program directory; {program} is not one")
    # A program directory starts in its copy (the host decides) unless told otherwise.
    cwd = str(Path(args.cwd).resolve()) if args.cwd is not None else None
    if cwd is None and not tree:
        cwd = os.getcwd()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPROXY_TAO_HOST_")}

    async def start(admin: Any) -> Any:
        info = await admin.start(
            program, args.args, cwd=cwd, env=env, stdin=0, stdout=1, stderr=2, entry=args.entry
        )
        short = f", id {info.instance_id[:SHORT_ID]}" if info.instance_id else ""
        print(f"taonet: started {info.name} (pid {info.pid}){short}", file=sys.stderr, flush=True)
        if args.wait:
            return await admin.wait(f"pid:{info.pid}")
        return info

    info = _admin(args, start)
    if args.wait:
        status = info.exit_status if info.exit_status is not None else 1
        return status if status >= 0 else 128 - status
    return 0


def _list(args: argparse.Namespace) -> int:
    """``taonet list``: see :mod:`taonet.cli._programs_cmd`."""
    return list_programs(args, existing_host_dir(args))


def _signal(args: argparse.Namespace) -> int:
    """``taonet stop|kill``: see :mod:`taonet.cli._programs_cmd`."""
    return signal_programs(args, existing_host_dir(args))
