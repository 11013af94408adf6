"""``taonet host init --root --tpm2``: the options, and ``root_tao`` in ``host.toml``.

What needs no TPM: option checks (one line, nothing written), the PCR list, and the
configuration's round trip. The host on a real swtpm is in
tests/hosts/tpm2/test_linux_on_tpm2.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taonet import ConfigError
from taonet.cli._failures import UsageError
from taonet.cli._host_tpm2 import parse_pcr_list
from taonet.hosts.linux import LinuxHostConfig
from tests.cli.cli_helpers import taonet_main


def test_root_tao_round_trips_and_is_for_root_hosts_only() -> None:
    config = LinuxHostConfig(kind="root", root_tao="tpm2", guard="Liberal")
    text = config.to_toml()
    assert b'root_tao = "tpm2"' in text
    assert LinuxHostConfig.from_toml(text) == config
    soft = LinuxHostConfig(kind="root", guard="Liberal")
    assert b"root_tao" not in soft.to_toml()  # earlier host.toml files stay as they were
    assert LinuxHostConfig.from_toml(soft.to_toml()).root_tao == "soft"
    with pytest.raises(ConfigError, match="root host only"):
        LinuxHostConfig(kind="stacked", root_tao="tpm2", guard="Liberal")
    with pytest.raises(ConfigError):
        LinuxHostConfig.from_toml(b'[host]\nkind = "root"\nroot_tao = "tpm1"\nguard = "Liberal"\n')


@pytest.mark.parametrize(
    ("text", "pcrs"), [("0,1,2,3,4,7", (0, 1, 2, 3, 4, 7)), ("23,16", (16, 23)), ("7", (7,))]
)
def test_pcr_lists(text: str, pcrs: tuple[int, ...]) -> None:
    assert parse_pcr_list(text) == pcrs


@pytest.mark.parametrize("text", ["", "0,,1", "1,1", "24", "0x1", "-1", "a", "0, 1", "1" * 300])
def test_bad_pcr_lists(text: str) -> None:
    with pytest.raises(UsageError):
        parse_pcr_list(text)


@pytest.mark.parametrize(
    "args",
    [
        ["--stacked", "--tpm2"],
        ["--root", "--tcti", "swtpm:port=2321"],
        ["--root", "--pcrs", "0,7"],
        ["--root", "--quote-service", "127.0.0.1:1"],
        ["--root", "--tpm2", "--pcrs", "0,99"],
        ["--root", "--tpm2", "--quote-service", "nowhere"],
        ["--root", "--tpm2", "--password-file", "/dev/null"],
    ],
)
def test_option_mistakes_are_one_line_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str]
) -> None:
    host = tmp_path / "host"
    code, _, err = taonet_main(capsys, "host", "init", "--host", str(host), "--liberal", *args)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert not host.exists()


def test_certify_is_for_tpm_hosts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    host = str(tmp_path / "host")
    pw = tmp_path / "pw"
    pw.write_text("host password\n")
    code, _, err = taonet_main(
        capsys, "host", "init", "--root", "--liberal", "--host", host, "--password-file", str(pw)
    )
    assert code == 0, err
    code, _, err = taonet_main(
        capsys, "host", "certify", "--host", host, "--quote-service", "127.0.0.1:1"
    )
    assert code != 0
    assert "not a root host on a TPM" in err
