"""Run simpleexample on a Linux host whose root is a TPM 2.0 (a software TPM).

``taonet demo --tpm2``, each step printed:

1. a throwaway software TPM (swtpm) with endorsement-key certificates from a
   throwaway manufacturer CA made by swtpm's own setup tool
   (:class:`taonet.hosts.tpm2.Swtpm`);
2. a domain that trusts that manufacturer CA (its policy-signed list);
3. the quote service (:class:`taonet_services.quote_service.QuoteService`, what
   ``taonet quote-service`` runs), in this process;
4. a root Linux host on that TPM (``root_tao = "tpm2"``): the TPM makes its quote
   key; the quote service checks the EK certificate against the domain's CAs and
   certifies the quote key, wrapped so only that TPM recovers it; the host is named
   ``tpm2([sha256 of the quote key]).PCRs("0,1,2,3,4,7", ...)``;
5. the domain's policy trusts that host's state (its PCR values on its TPM, pinned to
   its quote key: what ``taonet domain policy --add-host`` writes for its name);
6. simpleexample on top, as in ``taonet demo --hosted``: the domain service, the secret
   server, simpleserver and simpleclient as hosted programs, every name rooted in
   the TPM and every certificate issued because the chain ends in a certified quote
   key of a trusted state.

swtpm is stopped at the end, on an error or Ctrl-C too. Each run starts from
scratch in its directory (a new TPM, so a new quote key and a new domain): what an
earlier run made there is removed first (only in a directory that run marked).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from taonet import ConfigError
from taonet.crypto import KdfParams
from taonet.domain import Domain, host_state_rule
from taonet.files import atomic_write
from taonet.hosts.linux import LinuxHost, LinuxHostConfig
from taonet_examples.simpleexample.demo import PolicyKey
from taonet_examples.simpleexample.hosted import (
    STEP_TIMEOUT,
    _absolute_path,
    create_demo_domain,
    demo_programs,
    run_programs,
)

__all__ = ["run_tpm2_demo"]

#: The file that marks a directory as the TPM demo's (so a rerun may clear it).
MARKER: Final = ".taonet-demo-tpm2"
#: What a run makes in its directory (removed by the next run).
_MADE: Final = ("swtpm", "domain", "host", "programs", "secret-server", "demo-password")


def _fresh(base: Path) -> None:
    """Clear what an earlier run made in ``base``; refuse a directory not ours."""
    base.mkdir(parents=True, exist_ok=True)
    marker = base / MARKER
    if not marker.exists():
        if any(base.iterdir()):
            raise ConfigError(
                f"{base} is not empty and not a TPM demo directory: give another with --dir"
            )
        atomic_write(marker, b"taonet demo --tpm2\n", mode=0o644)
        return
    for name in _MADE:
        path = base / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


async def run_tpm2_demo(
    base: Path, *, say: Callable[[str], None] = print, kdf: KdfParams | None = None
) -> bytes:
    """Run the TPM demo in ``base`` (see the module docstring); returns the secret
    simpleclient got."""
    from taonet.hosts.tpm2 import Swtpm
    from taonet.quoteservice import add_manufacturer_cas
    from taonet_services.quote_service import QuoteService

    await trio.to_thread.run_sync(_fresh, base)
    base, server_path, client_path, taonet_path = demo_programs(base)
    domain_dir, host_dir = base / "domain", base / "host"
    password_file = base / "demo-password"

    say(
        f"== 1. A software TPM (swtpm) in {base / 'swtpm'}, with EK certificates from a "
        "throwaway manufacturer CA made by swtpm's setup tool"
    )
    swtpm = await trio.to_thread.run_sync(
        functools.partial(Swtpm.create, base / "swtpm", start=False)
    )
    try:
        # Started inside the try: whatever interrupts the demo from here stops it.
        await trio.to_thread.run_sync(swtpm.start)
        say(f"tpm:          {swtpm.tcti} (pid {swtpm.pid})")
        say("== 2. A domain that trusts that manufacturer CA")
        password = secrets.token_hex(16).encode()
        atomic_write(password_file, password + b"\n", mode=0o600)
        domain = await trio.to_thread.run_sync(
            lambda: create_demo_domain(
                domain_dir,
                "simpleexample-tpm2",
                (server_path, client_path, taonet_path),
                password,
                kdf=kdf,
            )
        )
        signer = await trio.to_thread.run_sync(domain.unlock, password)
        for pem in swtpm.manufacturer_ca_pems():
            for ca in add_manufacturer_cas(domain, signer, pem):
                say(f"manufacturer CA: {ca.subject.rfc4514_string()}")
        say(f"policy key:   {domain.policy_principal}")
        say("== 3. The quote service (it checks EK certificates against those CAs)")
        quote_service = await trio.to_thread.run_sync(QuoteService.open, domain_dir, password)
        with quote_service:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(quote_service.serve, 0))
                address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
                say(f"quote service: {address} as {quote_service.principal}")
                say(
                    "== 4. A root Linux host on the TPM; the quote service certifies its "
                    "quote key, wrapped with MakeCredential for the TPM's EK"
                )
                config = LinuxHostConfig(
                    kind="root",
                    root_tao="tpm2",
                    domain=str(domain_dir),
                    grace_period=2.0,
                    program_path=f"{Path(sys.executable).parent}{os.pathsep}"
                    f"{_absolute_path(os.environ.get('PATH'))}",
                )
                with trio.fail_after(STEP_TIMEOUT):
                    name = await LinuxHost.init_tpm2(host_dir, config, tcti=swtpm.tcti)
                    await LinuxHost.certify_tpm2(host_dir, address)
                nursery.cancel_scope.cancel()
        say(f"host name:    {name}  (its quote key certified by the quote service)")
        say("== 5. The domain trusts that host's state (taonet domain policy --add-host)")
        rule = host_state_rule(str(name))  # pinned: this state on this TPM's quote key only
        guard = domain.guard.with_rule(rule)  # type: ignore[attr-defined]
        await trio.to_thread.run_sync(domain.save_guard, guard, signer)
        say(f"guard rule:   {rule}")
        say("== 6. simpleexample on the TPM-rooted host")
        host = await LinuxHost.open(host_dir)
        say(f"== Linux host {host.name} (root on the TPM)")
        return await run_programs(
            host,
            base,
            domain_dir=domain_dir,
            password_file=password_file,
            policy_key=PolicyKey(Domain.load(domain_dir), password, signer),
            programs=(server_path, client_path, taonet_path),
            say=say,
        )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(swtpm.stop)
            say("== swtpm stopped")
