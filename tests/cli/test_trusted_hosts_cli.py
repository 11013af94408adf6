"""``taonet domain policy --add-host|--remove-host``: the TPM host states a domain trusts.

The states are rules of the signed ACL guard, so they are signed with the policy key
like every rule: a state added by hand (an ``acls`` file signed by another key) is
refused at the next load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from taonet import ConfigError
from taonet.attestation.tpm2 import host_name, pcrs_ext
from taonet.crypto import Signer
from taonet.domain import ACLGuard, Domain, host_state_rule, trusted_host_states
from tests.cli.cli_helpers import init_domain, policy

PCRS = {n: hashlib.sha256(b"boot %d" % n).digest() for n in (0, 1, 2, 3, 4, 7)}


@pytest.fixture
def domain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[str, str]:
    return init_domain(capsys, tmp_path / "dom")


def test_add_and_remove_a_host_state(
    capsys: pytest.CaptureFixture[str], domain: tuple[str, str]
) -> None:
    d, pw = domain
    name = str(host_name(b"a quote key", PCRS))
    code, out, err = policy(capsys, d, pw, "--add-host", name, "-o", "json")
    assert code == 0, err
    rule = str(host_state_rule(name))
    assert rule == f'Authorized({name}, "Host")'  # pinned to the TPM host show named
    assert json.loads(out)["added"] == [rule]
    loaded = Domain.load(d)
    (state,) = trusted_host_states(loaded.guard)
    assert state.pcrs == PCRS
    assert state.tpm == host_name(b"a quote key", PCRS).root()
    # Again: refused as a duplicate, nothing written.
    before = (Path(d) / "domain.sig").read_bytes()
    code, _, err = policy(capsys, d, pw, "--add-host", name)
    assert code != 0
    assert "already trusts this state" in err
    assert len(err.strip().splitlines()) == 1
    assert (Path(d) / "domain.sig").read_bytes() == before
    code, out, err = policy(capsys, d, pw, "--show")
    assert code == 0
    assert rule in out
    # The bare PCRs part names the rule for every TPM, which the domain does not hold.
    code, _, err = policy(capsys, d, pw, "--remove-host", str(pcrs_ext(PCRS)))
    assert code != 0
    assert "does not trust this state" in err
    # The name host show prints removes the pinned rule.
    code, out, err = policy(capsys, d, pw, "--remove-host", name, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["removed"] == [rule]
    assert trusted_host_states(Domain.load(d).guard) == []
    code, _, err = policy(capsys, d, pw, "--remove-host", name)
    assert code != 0
    assert "does not trust this state" in err


def test_the_bare_pcrs_trust_every_tpm_and_are_removed_only_so(
    capsys: pytest.CaptureFixture[str], domain: tuple[str, str]
) -> None:
    d, pw = domain
    bare = str(pcrs_ext(PCRS))
    name = str(host_name(b"a quote key", PCRS))
    code, out, err = policy(capsys, d, pw, "--add-host", bare, "-o", "json")
    assert code == 0, err
    rule = f'Authorized(ext.{bare}, "Host")'
    assert json.loads(out)["added"] == [rule]
    (state,) = trusted_host_states(Domain.load(d).guard)
    assert state.tpm is None
    # A host's full name does not silently untrust the state on every TPM.
    before = (Path(d) / "domain.sig").read_bytes()
    code, _, err = policy(capsys, d, pw, "--remove-host", name)
    assert code != 0
    assert "trusts this state on every TPM" in err
    assert "untrusts the state on every TPM" in err
    assert "bare PCRs(...)" in err
    assert len(err.strip().splitlines()) == 1
    assert (Path(d) / "domain.sig").read_bytes() == before
    code, out, err = policy(capsys, d, pw, "--remove-host", "ext." + bare, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["removed"] == [rule]
    assert trusted_host_states(Domain.load(d).guard) == []


def test_a_bad_spec_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], domain: tuple[str, str]
) -> None:
    d, pw = domain
    before = {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}
    code, _, err = policy(capsys, d, pw, "--add-host", 'PCRs("0,1", "00")')
    assert code != 0
    assert "--add-host" in err
    assert "not a TPM host state" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()} == before


def test_a_host_state_added_by_hand_is_refused(
    capsys: pytest.CaptureFixture[str], domain: tuple[str, str]
) -> None:
    d, _ = domain
    acls = Path(d) / "acls"
    forged = ACLGuard([host_state_rule(str(pcrs_ext(PCRS)))]).to_signed(Signer.generate())
    acls.write_bytes(forged)
    with pytest.raises(ConfigError, match="not signed by this domain's policy key"):
        Domain.load(d)


def test_liberal_domains_take_no_host_states(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d, pw = init_domain(capsys, tmp_path / "lib", "--guard", "Liberal")
    code, _, err = policy(capsys, d, pw, "--add-host", str(pcrs_ext(PCRS)))
    assert code != 0
    assert "Liberal guard" in err
