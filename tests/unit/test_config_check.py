"""``xsbackup config check``: what the configuration names is checked, every problem is
a row, and any problem is exit 3 with one line naming the first."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from tests.conftest import Server
from tests.unit.test_inventory import GOOD


def rows(server: Server) -> tuple[int, dict[str, tuple[bool, str]], str]:
    r = server.cli("config", "check", "--json", check=False)
    table = {row["check"]: (row["ok"], row["detail"]) for row in orjson.loads(r.stdout)}
    return r.exit_code, table, r.stderr


def test_a_fresh_root_passes(server: Server) -> None:
    code, table, err = rows(server)
    assert code == 0, err
    assert all(ok for ok, _ in table.values())
    assert set(table) == {"keys", "root", "storage", "offsite", "fleet"}
    assert table["storage"][1] == "hardlink backend"
    text = server.cli("config", "check")
    assert "ok    storage    hardlink backend" in text.stdout


def test_an_offsite_password_others_can_read_fails(server: Server) -> None:
    server.configure(f'[offsite]\nrepository = "{server.root.parent / "repo"}"\n')
    (server.root / "offsite").mkdir()
    secret = server.root / "offsite" / "password"
    secret.write_text("hunter2\n")
    os.chmod(secret, 0o644)
    code, table, err = rows(server)
    assert code == 3
    assert table["offsite"] == (False, f"offsite.password_file: {secret} is mode 0644; "
                                       "make it 0600 (it holds a secret)")
    assert err == ("xsbackup: error: config check: 1 problem found; first: offsite: "
                   f"offsite.password_file: {secret} is mode 0644; make it 0600 (it holds "
                   "a secret)\n")
    os.chmod(secret, 0o600)
    code, table, _ = rows(server)
    assert code == 0
    assert table["offsite"][0]


def test_the_fleet_inventory_must_load_and_name_this_server(server: Server) -> None:
    (server.root / "fleet.toml").write_text(GOOD)
    server.configure('[fleet]\ninventory = "fleet.toml"\nplace_as = "east"\n')
    code, table, _ = rows(server)
    assert code == 3
    assert table["fleet"] == (False, "fleet.place_as: 'east' is not a server of the "
                                     "inventory (north, south)")
    server.configure('[fleet]\ninventory = "fleet.toml"\nplace_as = "south"\n')
    assert rows(server)[1]["fleet"] == (True, "2 servers")
    (server.root / "fleet.toml").write_text(GOOD.replace('root = "/srv/xsbackup"\n', "", 1))
    code, table, _ = rows(server)
    assert code == 3
    assert not table["fleet"][0]
    assert "root" in table["fleet"][1]


def test_a_loose_root_and_an_uninitialised_one_fail(server: Server, tmp_path: Path) -> None:
    os.chmod(server.root, 0o755)  # noqa: S103 - the finding under test
    code, table, _ = rows(server)
    assert code == 3
    assert not table["root"][0]
    bare = Server.__new__(Server)
    bare.root = tmp_path / "nothing"
    bare.root.mkdir()
    code, table, _ = rows(bare)
    assert code == 3
    assert table["root"] == (False, f"{bare.root} is not an initialised state root "
                                    "(xsbackup init)")


def test_a_bad_key_is_refused_at_load_naming_it(server: Server) -> None:
    server.configure('[offsite]\nupload_limit = "lots"\n')
    r = server.cli("config", "check", check=False)
    assert r.exit_code == 3
    assert r.stderr.startswith("xsbackup: error: offsite.upload_limit: ")
    assert r.stdout == ""
