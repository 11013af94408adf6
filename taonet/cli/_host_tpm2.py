"""``taonet host init --root --tpm2``, ``host certify`` and what ``host show`` adds for a
root host on a TPM 2.0.

A root host on a TPM has no password: its keys are sealed by the TPM (see
:mod:`taonet.hosts.linux._tpm2_root`). Its quote key is certified by the domain's
quote service, which holds the policy key: ``--quote-service HOST:PORT`` at init
does it at once, as ``host init --root`` certifies a soft root host at once with the
policy key's password; ``taonet host certify --quote-service HOST:PORT`` does it
later (the quote service was not up yet, or the certificate is due), as ``host
recertify`` does for a soft root host; like it, on a stopped host (a running host
attached the certificate it had when it started to its delegation). The quote
service, not the operator's password, is the certifier, because only it can check
the TPM's endorsement key certificate and wrap the certificate so that only that TPM
recovers it.

``host show`` prints the name such a host reports, ``tpm2([...]).PCRs("nums",
"hexvals")``, which ``taonet domain policy --add-host`` takes to trust that state on
that TPM, its PCR values one per line, and the PCRs part (``--add-host`` of it alone
trusts the state on every certified TPM). A running host is asked over its admin
socket; a stopped one is opened (the TPM is read) for the moment of the command.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Final

from taonet import HostError, auth
from taonet.cli._failures import UsageError
from taonet.cli._host_start import refuse_if_running
from taonet.cli._output import emit

__all__ = ["certify_tpm2", "init_tpm2", "parse_pcr_list", "show_tpm2"]

#: The TPM used when neither --tcti nor $TAO_TCTI names one.
DEFAULT_TCTI: Final = "device:/dev/tpmrm0"
_PCR_LIST: Final = re.compile(r"^[0-9]{1,2}(,[0-9]{1,2})*$")
_MAX_PCR: Final = 23


def parse_pcr_list(text: str) -> tuple[int, ...]:
    """``--pcrs 0,1,2``: PCR numbers 0-23, each once, returned ascending."""
    if not _PCR_LIST.match(text):
        raise UsageError(f"--pcrs {text!r}: give PCR numbers separated by commas, e.g. 0,1,2,7")
    numbers = [int(n) for n in text.split(",")]
    if any(n > _MAX_PCR for n in numbers) or len(set(numbers)) != len(numbers):
        raise UsageError(f"--pcrs {text!r}: each PCR once, from 0 to {_MAX_PCR}")
    return tuple(sorted(numbers))


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--quote-service {address!r}: give HOST:PORT")
    return address


def init_tpm2(args: argparse.Namespace, directory: Path) -> int:
    import trio

    from taonet.cli._host_cmd import config_from_args
    from taonet.hosts.linux import LinuxHost

    tcti = args.tcti or os.environ.get("TAO_TCTI") or DEFAULT_TCTI
    pcrs = parse_pcr_list(args.pcrs) if args.pcrs is not None else None
    address = _check_address(args.quote_service) if args.quote_service else None
    config = config_from_args(args, kind="root", root_tao="tpm2")

    async def create() -> auth.Prin:
        name = await LinuxHost.init_tpm2(directory, config, tcti=tcti, pcrs=pcrs)
        if address is not None:
            await LinuxHost.certify_tpm2(directory, address)
        return name

    name = trio.run(create)
    state = name.ext.exts[0] if name.ext.exts else None

    def text() -> None:
        print(f"created a root Linux host on the TPM at {tcti} in {directory}")
        print(f"name:   {name}  (taonet domain policy --add-host takes this: this TPM only)")
        if state is not None:
            print(f"state:  {state}  (--add-host of this alone trusts it on every TPM)")
        if address is not None:
            print(f"quote key certified by the quote service at {address}")
        else:
            print("quote key not certified yet: taonet host certify --quote-service HOST:PORT")
        print(f"guard:  {'Liberal (anything may execute)' if args.liberal else 'the domain guard'}")

    emit(
        args,
        {
            "host": str(directory),
            "kind": "root",
            "root_tao": "tpm2",
            "tcti": tcti,
            "name": str(name),
            "host_state": None if state is None else str(state),
            "certified": address is not None,
            "guard": config.guard,
        },
        text,
    )
    return 0


def certify_tpm2(args: argparse.Namespace, directory: Path) -> int:
    import trio

    from taonet.hosts.linux import LinuxHost, LinuxHostConfig

    config = LinuxHostConfig.load(directory)
    if config.root_tao != "tpm2":
        raise UsageError(
            f"{directory} is not a root host on a TPM: a soft root host is certified with "
            "the policy key (taonet host recertify)"
        )
    address = _check_address(args.quote_service)
    # The running host made its delegation with the certificate it had: stop it first.
    refuse_if_running(directory)
    name = trio.run(LinuxHost.certify_tpm2, directory, address)

    def text() -> None:
        print(f"the quote service at {address} certified the quote key of {directory}")
        print(f"name:   {name}")

    emit(args, {"host": str(directory), "name": str(name), "certified": True}, text)
    return 0


def show_tpm2(
    directory: Path, running_name: auth.Prin | None, lines: list[str], document: dict[str, Any]
) -> None:
    """Add the TPM host's name and PCRs to ``host show``'s lines and document."""
    import trio

    from taonet.attestation.tpm2 import host_pcrs
    from taonet.hosts.linux import LinuxHost

    lines.append("root tao:       tpm2 (its keys sealed by the TPM)")
    document["root_tao"] = "tpm2"
    name = running_name
    if name is None:
        try:
            name = trio.run(LinuxHost.tpm2_name, directory)
        except HostError as exc:
            lines.append(f"tpm2:           cannot read the TPM: {str(exc)[:300]}")
            document["tpm2"] = {"error": str(exc)[:300]}
            return
    pcrs = host_pcrs(name) or {}
    state = name.ext.exts[0] if name.ext.exts else None
    lines.append(f"tpm2 name:      {name}  (for taonet domain policy --add-host: this TPM)")
    lines.append(f"host state:     {state}  (--add-host of this alone: every TPM)")
    lines.extend(f"  PCR {n:>2}:       {value.hex()}" for n, value in sorted(pcrs.items()))
    document["tpm2"] = {
        "name": str(name),
        "host_state": None if state is None else str(state),
        "pcrs": {str(n): value.hex() for n, value in sorted(pcrs.items())},
    }
