"""Sizes in the command line's own words: IEC units (``units.format_bytes``) wherever a
command prints a size, and units accepted wherever it takes one. (Status and the quota
refusal: tests/integration/test_prune.py; restore plan and snapshots list:
test_restore_cli.py.)"""

from __future__ import annotations

import pytest

from tests.conftest import Server

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

