"""The fleet inventory is validated at load, with one line naming the server and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli
from xsbackup.errors import InventoryError
from xsbackup.fleet.inventory import load, locate

GOOD = """
[[server]]
name = "north"
host = "admin@10.0.0.1"
port = 2200
root = "/srv/xsbackup"
identity = "/etc/xsbackup/fleet_key"
command = "/opt/xsbackup/bin/xsbackup"
weight = 2.5
site = "north school"

[[server]]
name = "south"
host = "10.0.0.2"
root = "/srv/xsbackup"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "fleet.toml"
    p.write_text(text)
    return p


def test_a_good_inventory_with_defaults(tmp_path: Path) -> None:
    inv = load(write(tmp_path, GOOD))
    north, south = inv.servers
    assert (north.user, north.address, north.port, north.weight) == ("admin", "10.0.0.1",
                                                                   2200, 2.5)
    assert north.host == "admin@10.0.0.1"
    assert (south.user, south.port, south.command, south.weight, south.identity,
            south.site) == (None, 22, "xsbackup", 1.0, None, "")
    assert inv.get("south") is south
    assert inv.assign("SHC00000001").name in ("north", "south")


@pytest.mark.parametrize(("change", "message"), [
    (('port = 2200', 'port = 0'), "server #1 (north): port: expected an integer 1-65535"),
    (('port = 2200', 'port = "22"'), "server #1 (north): port: expected an integer"),
    (('weight = 2.5', 'weight = 0'), "server #1 (north): weight: expected a number above "
                                     "zero"),
    (('weight = 2.5', 'weight = -1'), "weight: expected a number above zero"),
    (('root = "/srv/xsbackup"\nidentity', 'root = "srv"\nidentity'),
     "server #1 (north): root: expected an absolute path"),
    (('host = "admin@10.0.0.1"', 'host = "a b@x"'), "host: expected user@address"),
    (('site = "north school"', 'sites = "x"'), "server #1 (north): unknown key sites"),
    (('name = "south"', 'name = "north"'), "server #2: name: 'north' is given twice"),
    (('name = "south"', 'name = "../x"'), "server #2: name: must match"),
    (('name = "south"\n', ''), "server #2: name: missing"),
    (('command = "/opt/xsbackup/bin/xsbackup"', 'command = ""'),
     "command: expected a non-empty one-line string"),
])
def test_bad_values_name_the_server_and_key(tmp_path: Path, change: tuple[str, str],
                                            message: str) -> None:
    assert change[0] in GOOD
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(InventoryError, match=re.escape(message)):
        load(path)


def test_bad_documents(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no \\[\\[server\\]\\] tables"):
        load(write(tmp_path, "# nothing\n"))
    with pytest.raises(InventoryError, match="unknown key servers"):
        load(write(tmp_path, "[[servers]]\nname = 'x'\n"))
    with pytest.raises(InventoryError, match=r"fleet\.toml: "):
        load(write(tmp_path, "[[server]\n"))
    with pytest.raises(InventoryError, match="does not exist"):
        load(tmp_path / "missing.toml")
    with pytest.raises(InventoryError, match="give --inventory FILE or set"):
        locate(None, "", tmp_path)
    assert locate(None, "fleet.toml", tmp_path) == tmp_path / "fleet.toml"


def test_the_cli_reports_one_line_and_exit_70(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("port = 2200", "port = 70000"))
    r = run_cli("fleet", "--inventory", str(path), "status")
    assert r.exit_code == 70
    assert r.output.strip().splitlines() == [
        f"xsbackup: error: {path}: server #1 (north): port: expected an integer 1-65535, "
        "got 70000"]


def test_assign_from_the_configured_inventory(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    write(root, GOOD)
    (root / "xsbackup.toml").write_text('[fleet]\ninventory = "fleet.toml"\n')
    r = run_cli("--root", str(root), "fleet", "assign", "SHC00000001", "--json")
    assert r.exit_code == 0, r.output
    assert r.stdout.count('"server"') == 1
    r2 = run_cli("--root", str(root), "fleet", "assign", "SHC00000001")
    assert r2.stdout.strip() in ("north", "south")
    assert r2.stdout.strip() in r.stdout
    r3 = run_cli("--root", str(root), "fleet", "assign", "bad/serial")
    assert r3.exit_code == 9


def test_help_needs_no_inventory() -> None:
    for sub in ("status", "check", "du", "prune", "collect", "assign", "move-client"):
        r = run_cli("fleet", sub, "--help")
        assert r.exit_code == 0, (sub, r.output)
        assert "Usage: xsbackup fleet" in r.output
