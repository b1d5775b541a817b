"""``xsbackup fleet``: three servers on one machine, each a state root behind its own
loopback OpenSSH sshd, run together through fabric."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import local_push
from tests.fleet_kit import FleetKit, fleet_of

pytestmark = pytest.mark.integration


@pytest.fixture
def kit(tmp_path: Path, host_key: Path) -> Iterator[FleetKit]:
    with fleet_of(tmp_path / "fleet", host_key, ("a", "b", "c")) as kit:
        kit.members["a"].server.add_client("SHF00000001")
        kit.members["a"].server.add_client("SHF00000002")
        kit.members["b"].server.add_client("SHF00000003")
        yield kit


def rows(doc: dict[str, object], key: str = "servers") -> dict[str, dict[str, object]]:
    return {r["server"]: r for r in doc[key]}  # type: ignore[attr-defined,index]


def test_status_lists_every_servers_clients(kit: FleetKit) -> None:
    code, out = kit.fleet("status", "--json")
    assert code == 0, out
    doc = orjson.loads(out)
    assert doc["failed"] == 0
    servers = rows(doc)
    assert sorted(servers) == ["a", "b", "c"]
    assert all(r["ok"] and r["error"] is None for r in servers.values())
    assert [servers[n]["clients"] for n in "abc"] == [2, 1, 0]
    assert servers["a"]["site"] == "school-a"
    assert "df_blocks_pct" in servers["a"]["disk"]
    assert sorted((c["server"], c["serial"]) for c in doc["clients"]) == [
        ("a", "SHF00000001"), ("a", "SHF00000002"), ("b", "SHF00000003")]
    code, out = kit.fleet("status")
    assert code == 0
    assert "SHF00000003" in out
    assert out.count(" ok ") == 3


def test_a_stopped_sshd_is_one_failed_row(kit: FleetKit) -> None:
    kit.members["b"].stop_sshd()
    code, out = kit.fleet("status", "--json")
    assert code == 71
    doc = orjson.loads(out)
    servers = rows(doc)
    assert doc["failed"] == 1
    assert not servers["b"]["ok"]
    assert str(servers["b"]["error"]).startswith("unreachable")
    assert servers["a"]["ok"]
    assert servers["c"]["ok"]
    assert sorted(c["serial"] for c in doc["clients"]) == ["SHF00000001", "SHF00000002"]


def test_slow_and_garbage_servers_fail_alone(kit: FleetKit, tmp_path: Path) -> None:
    slow = tmp_path / "slow-xsbackup"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    # Only the two failing servers: the timeout must elapse for one of them, and a
    # healthy server on a loaded machine need not answer within so short a time (the
    # stopped-sshd test shows the others stay complete).
    kit.write_inventory({"b": {"command": str(slow)}, "c": {"command": "/bin/echo"}},
                        only=("b", "c"))
    code, out = kit.fleet("status", "--json", "--parallel", "2", timeout="6")
    assert code == 71
    servers = rows(orjson.loads(out))
    assert str(servers["b"]["error"]).startswith("timed out")
    assert str(servers["c"]["error"]).startswith("garbage answer")
    code, out = kit.fleet("status", timeout="6")
    assert code == 71
    assert "b                FAILED  timed out" in out


def test_check_finds_a_client_on_two_servers(kit: FleetKit) -> None:
    code, out = kit.fleet("check", "--json")
    assert code == 0, out
    doc = orjson.loads(out)
    assert doc["problems"] == []
    assert {m["serial"] for m in doc["misplaced"]} <= {"SHF00000001", "SHF00000002",
                                                       "SHF00000003"}
    kit.members["c"].server.add_client("SHF00000003")
    code, out = kit.fleet("check", "--json")
    assert code == 1
    assert "client SHF00000003 is registered on 2 servers: b, c" in orjson.loads(out)["problems"]


def test_du_prune_and_collect(kit: FleetKit, tmp_path: Path) -> None:
    a = kit.members["a"].server
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 5000)
    assert local_push(a, "SHF00000001", src).returncode == 0
    a.xsbackup("postprocess")
    code, out = kit.fleet("du", "--json")
    assert code == 0, out
    clients = {(c["server"], c["client"]): c for c in orjson.loads(out)["clients"]}
    assert clients[("a", "SHF00000001")]["snapshots"] == 1
    assert clients[("a", "SHF00000001")]["total"] >= 5000

    code, out = kit.fleet("prune", "--dry-run", "--json")
    assert code == 0, out
    doc = orjson.loads(out)
    assert doc["dry_run"] is True
    assert all(r["ok"] for r in doc["servers"])
    assert any(it["client"] == "SHF00000001" and it["keep"] for it in doc["items"])
    code, out = kit.fleet("prune")
    assert code == 0, out
    assert out.startswith("plan:")
    assert a.store.snapshot_ids("SHF00000001", "documents")

    code, out = kit.fleet("collect", "--json")
    assert code == 0, out
    doc = orjson.loads(out)
    overdue = {(o["server"], o["serial"]) for o in doc["overdue"]}
    # Never backed up: overdue; backed up just now: not.
    assert overdue == {("a", "SHF00000002"), ("b", "SHF00000003")}
    servers = rows(doc)
    assert servers["a"]["overdue"] == 1
    assert servers["a"]["queue_depth"] == 0
    assert servers["a"]["offsite_lag_seconds"] is None
    assert "free_bytes" in servers["c"]["disk"]


def test_the_web_fleet_page_for_admins(kit: FleetKit, tmp_path: Path) -> None:
    from tests.integration.test_webui import TEACHER, TEACHER_PW, start_site
    from tests.integration.test_webui_http import signed_in

    kit.members["b"].stop_sshd()
    site = start_site(tmp_path / "web", f'[fleet]\ninventory = "{kit.inventory}"\n')
    try:
        page = signed_in(site).get("/ui/fleet")
        assert page.status == 200, page.text
        text = page.text
        assert 'href="/ui/fleet"' in text
        for name in ("a", "b", "c"):
            assert f"school-{name}" in text
        assert "1 not answering" in text
        assert "unreachable: connection refused" in text
        assert "SHF00000001" in text  # never backed up: overdue
        assert "SHF00000003" not in text  # its server (b) did not answer
        teacher = signed_in(site, TEACHER, TEACHER_PW)
        assert teacher.get("/ui/fleet").status == 403
        assert 'href="/ui/fleet"' not in teacher.get("/ui/").text
    finally:
        site.close()
    bare = start_site(tmp_path / "web2")
    try:
        page = signed_in(bare).get("/ui/fleet")
        assert page.status == 200
        assert "no fleet inventory" in page.text
    finally:
        bare.close()
