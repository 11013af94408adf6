"""Examples for every ``taonet`` command, shown at the end of its ``--help``.

They live in one table, keyed by the command's words, so that each command's help
shows how it is used and a test can walk the parser tree and find any command
without one.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator
from typing import Final

__all__ = ["EXAMPLES", "add_examples", "walk"]

#: The width descriptions are wrapped to.
_WIDTH: Final = 79

#: Example lines per command (its words after ``taonet``); each is a shell line.
EXAMPLES: Final[dict[tuple[str, ...], tuple[str, ...]]] = {
    (): (
        "taonet domain init ./domain            # a domain, its policy key and guard",
        "taonet domain-service --domain ./domain",
        "taonet list -o json | jq -r '.programs[].id'",
    ),
    ("auth",): ("taonet auth parse 'key([0a0b]) speaksfor key([0c0d])'",),
    ("auth", "parse"): ("taonet auth parse 'key([0a0b])  speaksfor key([0c0d])'",),
    ("auth", "encode"): ("taonet auth encode 'key([0a0b]) speaksfor key([0c0d])'",),
    ("auth", "decode"): ("taonet auth decode DQEDa2V5BAh0ZXN0IGtleREA -o json",),
    ("audit",): ("taonet audit verify --domain ./domain",),
    ("audit", "verify"): (
        "taonet audit verify --domain ./domain",
        "taonet audit verify --db postgresql://secrets@db/secrets --key server.pub -o json",
        "taonet audit verify --domain ./domain --against-rows --cert state/secret-server.crt",
    ),
    ("domain",): ("taonet domain init ./domain --name example --guard ACL",),
    ("domain", "init"): (
        "taonet domain init ./domain --name example --guard ACL",
        "taonet domain init ./domain --template domain.toml --password-file pw -o json",
    ),
    ("domain", "policy"): (
        "taonet domain policy --domain ./domain --add-program ./server.py",
        "taonet domain policy --domain ./domain --remove-program ./old_server.py",
        "taonet domain policy --domain ./domain --allow 'Authorized(key([0a0b]), \"Read\")'",
        "taonet domain policy --domain ./domain --show -o json",
    ),
    ("domain", "show"): (
        "taonet domain show --domain ./domain",
        "taonet domain show --domain ./domain -o json | jq -r .policy_principal",
    ),
    ("domain", "principal"): (
        "taonet domain principal --domain ./domain --program ./server.py",
        "taonet domain principal --domain ./domain --program ./server.py -o json",
    ),
    ("domain", "audit"): (
        "taonet domain audit --domain ./domain --limit 20",
        "taonet domain audit --domain ./domain -o json | jq '.events[] | .kind'",
    ),
    ("domain", "revoke"): (
        "taonet domain revoke 0x1f --reason 'key compromised' --domain ./domain",
    ),
    ("domain", "crl"): ("taonet domain crl --domain ./domain --crl-days 7",),
    ("domain", "directive"): (
        "taonet domain directive --domain ./domain --op Read --program ./client_v2.py"
        " --object /app/content-key:1 --until 30d -o v2-reads-key.directive",
        "taonet domain directive --domain ./domain --op Read --to 'key([0a0b]).Program([0c0d])'"
        " --object /app/content-key:1 -o d.bin -o json",
        "taonet domain directive --domain ./domain --show v2-reads-key.directive",
    ),
    ("domain-service",): (
        "taonet domain-service --domain ./domain --listen 127.0.0.1:8124",
        "taonet domain-service --domain ./domain --listen '[::1]:8124' --password-file pw",
    ),
    ("quote-service",): (
        "taonet domain policy --domain ./domain --add-manufacturer-ca tpm-vendor-cas.pem",
        "taonet quote-service --domain ./domain --listen 127.0.0.1:8125 --password-file pw",
    ),
    ("host",): ("taonet host init --root --domain ./domain",),
    ("host", "init"): (
        "taonet host init --root --domain ./domain",
        "taonet host init --stacked --host ./stacked-host",
    ),
    ("host", "start"): (
        "taonet host start --domain ./domain",
        "taonet host start --foreground --host ./domain/linux_tao_host",
    ),
    ("host", "stop"): ("taonet host stop --domain ./domain",),
    ("host", "show"): (
        "taonet host show --domain ./domain",
        "taonet host show --domain ./domain -o json | jq .state",
    ),
    ("host", "recertify"): ("taonet host recertify --domain ./domain",),
    ("host", "certify"): ("taonet host certify --domain ./domain --quote-service 127.0.0.1:8125",),
    ("run",): (
        "taonet run --domain ./domain ./server.py --port 8123",
        "taonet run --wait ./client.py",
    ),
    ("list",): (
        "taonet list --domain ./domain",
        "taonet list -o json | jq -r '.programs[] | select(.file == \"server.py\") | .id'",
    ),
    ("stop",): (
        "taonet stop server.py        # by file name, if only one program has it",
        "taonet stop 3f2a             # by a unique prefix of its id (taonet list)",
        "taonet stop pid:4242         # by pid (or just 4242)",
    ),
    ("kill",): (
        "taonet kill id:3f2a9c01",
        "taonet kill server.py",
    ),
    ("demo",): (
        "taonet demo",
        "taonet demo --hosted --dir /tmp/taonet-demo",
        "taonet demo --upgrade",
    ),
    ("loadtest",): (
        "taonet loadtest --quick --out ./lt          # every target briefly, with plots",
        "taonet loadtest --quick --target echo       # the generator's own ceiling",
        "taonet loadtest --target domain --rate 200 --out ./lt   # program certificates",
        "taonet loadtest --rate 5000 --workers 2 --duration 30 --warmup 5 --out ./lt",
        "taonet loadtest --model closed --clients 32 --fresh -o json",
        "taonet loadtest --target secret --rate 500 --mix read=8,write=1,list=1 --out ./lt",
    ),
    ("loadtest", "compare"): ("taonet loadtest compare before/report.json after/report.json",),
    ("loadtest", "plot"): ("taonet loadtest plot lt/report.json --out ./plots",),
    ("completion",): (
        "taonet completion bash > ~/.local/share/bash-completion/completions/taonet",
        'taonet completion zsh > "${fpath[1]}/_taonet"    # zsh: from the next shell on',
        'eval "$(taonet completion bash)"                 # bash: this shell only',
    ),
}


def walk(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command parser under ``parser``, with its words after ``taonet``."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:  # aliases share a parser
                    seen.add(id(child))
                    yield from walk(child, (*words, name))


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Put each command's examples at the end of its help (kept verbatim)."""
    for words, command in walk(parser):
        lines = EXAMPLES.get(words)
        if not lines:
            continue
        block = "Example:\n" + "\n".join(f"  {line}" for line in lines)
        command.epilog = f"{block}\n\n{command.epilog}" if command.epilog else block
        # Raw keeps the examples' lines as written; wrap the description here instead.
        if command.description:
            paragraphs = command.description.split("\n\n")
            command.description = "\n\n".join(textwrap.fill(p, _WIDTH) for p in paragraphs)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
