"""Sizes in the command line's own words: IEC units (``units.format_bytes``) wherever a
command prints a size, and units accepted wherever it takes one."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from tests.conftest import Server, local_push
from xsbackup.units import format_bytes

pytestmark = pytest.mark.integration
SN = "SHF00112233"


def test_quota_takes_a_size_and_is_printed_in_iec_units(server: Server) -> None:
    server.add_client(SN)
    r = server.cli("clients", "set-policy", SN, "--quota-bytes", "20GiB")
    assert r.output == f"{SN}: quota_bytes=20.0 GiB\n"
    assert server.ctx().registry.get(SN).policy == {"quota_bytes": 20 << 30}
    r = server.cli("clients", "set-policy", SN, "--quota-bytes", "20 gigs", check=False)
    assert r.exit_code == 2
    assert "invalid size '20 gigs'" in r.output


def test_status_and_the_quota_refusal_print_usage_in_iec_units(server: Server,
                                                              tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(300_000))
    assert local_push(server, SN, src).returncode == 0
    server.cli("postprocess", "--once")
    server.cli("clients", "set-policy", SN, "--quota-bytes", "100KB")
    server.cli("du", SN)
    (row,) = orjson.loads(server.cli("status", "--json").stdout)
    used = format_bytes(row["usage_bytes"])
    assert used.endswith(" KiB")
    (line,) = server.cli("status").output.splitlines()
    assert f" usage={used}/97.7 KiB over-quota " in line

    r = server.xsbackup("ssh-command", "--client", SN, check=False,
                        env={**os.environ, "SSH_ORIGINAL_COMMAND":
                             "rsync --server -logDtpre.iLsfxCIvu . documents/"})
    assert r.returncode == 49
    assert r.stderr == (f"xsbackup: client {SN} is over its quota: {used} of 97.7 KiB used; "
                        "ask the administrator to prune or raise the quota\n")
