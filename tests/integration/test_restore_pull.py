"""``xsbackup restore push --method pull``: the devices (accounts behind a second loopback
sshd, as in test_restore_push) pull with rsync and a one-time restore key, from the
tests' OpenSSH sshd or from the embedded server; and what a restore key refuses."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server, Sshd
from tests.integration import test_restore_push as push_tests
from tests.integration.test_restore import fingerprint
from tests.integration.test_restore_push import SERIALS, Devices, Tree
from tests.integration.test_sshserver import running_embedded
from xsbackup.clients.keys import KeyIndex
from xsbackup.clients.registry import Registry
from xsbackup.restore import pullkey

pytestmark = pytest.mark.integration
devices = push_tests.devices  # the same fixtures: three device accounts, three backups
backed_up = push_tests.backed_up


def restore_lines(server: Server) -> list[str]:
    return [line for line in (server.root / "ssh" / "authorized_keys").read_text()
            .splitlines() if "--restore-key" in line]


def no_keys_left(server: Server) -> bool:
    with Registry(server.store).locked() as txn:
        return not txn.restore_keys() and not restore_lines(server)


def test_classroom_pull_from_openssh(server: Server, sshd: Sshd, host_key: Path,
                                     devices: Devices, backed_up: dict[str, dict[str, Tree]],
                                     tmp_path: Path) -> None:
    hosts = tmp_path / "classroom.txt"
    hosts.write_text("".join(f"{sn} {devices.target(i)}\n" for i, sn in enumerate(SERIALS)))
    r = server.xsbackup("restore", "push", "--hosts-from", str(hosts), "--method", "pull",
                        "--server", f"{sshd.user}@127.0.0.1:{sshd.port}",
                        "--server-host-key", str(host_key.with_suffix(".pub")),
                        "-i", str(devices.key), "--host-keys", "ignore", "--json",
                        check=False)
    assert r.returncode == 65, r.stdout + r.stderr
    out = {o["serial"]: o for o in json.loads(r.stdout)}
    for i in (0, 1):
        assert out[SERIALS[i]]["ok"], out[SERIALS[i]]
        assert {v["method"] for v in out[SERIALS[i]]["volumes"]} == {"pull"}
        home = devices.homes[i]
        assert fingerprint(home / ".sugar" / "default" / "datastore") == \
            backed_up[SERIALS[i]]["datastore"]
        assert fingerprint(home / "Documents") == backed_up[SERIALS[i]]["documents"]
    assert not out[SERIALS[2]]["ok"]
    assert "not enough space" in out[SERIALS[2]]["error"]
    assert no_keys_left(server)
    log = (server.root / "log" / "xsbackup.log").read_text()
    assert log.count("restore key") >= 4  # each volume's pull used its own key


def test_pull_from_the_embedded_server(server: Server, devices: Devices,
                                       backed_up: dict[str, dict[str, Tree]]) -> None:
    with running_embedded(server) as ssh:
        r = server.xsbackup("restore", "push", SERIALS[0], "--to", devices.target(0),
                            "--volume", "documents", "--dest", "docs",
                            "--server", f"127.0.0.1:{ssh.port}", "-i", str(devices.key),
                            "--host-keys", "ignore", "--json", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (out,) = json.loads(r.stdout)
    assert out["volumes"][0]["method"] == "pull"
    assert fingerprint(devices.homes[0] / "docs") == backed_up[SERIALS[0]]["documents"]
    assert no_keys_left(server)


def test_unreachable_server_falls_back_or_fails(server: Server, devices: Devices,
                                               host_key: Path, backed_up: object) -> None:
    common = ("--volume", "documents", "--server", "127.0.0.1:1", "--server-host-key",
              str(host_key.with_suffix(".pub")), "-i", str(devices.key), "--host-keys",
              "ignore", "--json")
    r = server.xsbackup("restore", "push", SERIALS[1], "--to", devices.target(1),
                        "--method", "pull", *common, check=False)
    assert r.returncode == 66, r.stdout + r.stderr
    assert "cannot pull from this server" in r.stderr
    assert no_keys_left(server)
    r = server.xsbackup("restore", "push", SERIALS[1], "--to", devices.target(1), *common,
                        check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (out,) = json.loads(r.stdout)
    assert out["volumes"][0]["method"] == "tar"
    assert any("could not pull" in n for n in out["notes"])
    assert no_keys_left(server)


def _key_file(tmp_path: Path, issued: pullkey.Issued) -> Path:
    path = tmp_path / f"rk-{issued.key.id}"
    path.write_bytes(issued.private)
    path.chmod(0o600)
    return path


def test_a_restore_key_allows_its_one_download_only(server: Server, sshd: Sshd,
                                                    backed_up: object,
                                                    tmp_path: Path) -> None:
    sn, other = SERIALS[0], SERIALS[1]
    (sid,) = server.store.snapshot_ids(sn, "documents")
    registry = Registry(server.store)
    src = tmp_path / "up"
    src.mkdir()
    (src / "evil.txt").write_text("x")
    attempts = {  # what the key is used for: each refused, each using the key up
        "upload": (f"{src}/", "127.0.0.1:documents/"),
        "another client's volume": (f"127.0.0.1:clients/{other}/documents/latest/",
                                    str(tmp_path / "o")),
        "a path below the snapshot": (f"127.0.0.1:documents/{sid}/essay.txt",
                                      str(tmp_path / "p")),
        "latest, not its snapshot": ("127.0.0.1:documents/latest/", str(tmp_path / "l")),
    }
    for what, (a, b) in attempts.items():
        with pullkey.issued(registry, sn, "documents", sid) as key:
            assert len(restore_lines(server)) == 1
            assert 'expiry-time="' in restore_lines(server)[0]
            path = _key_file(tmp_path, key)
            r = sshd.rsync(path, "-rlpt", a, b)
            assert r.returncode != 0, what
            assert "restore key" in r.stderr, (what, r.stderr)
            again = sshd.rsync(path, "-rlpt", f"127.0.0.1:documents/{sid}/",
                               str(tmp_path / "again"))
            assert again.returncode != 0, what  # used up by the refused attempt
        assert not restore_lines(server)
    assert not (server.store.client_dir(sn) / "incoming").exists() or \
        not any((server.store.client_dir(sn) / "incoming").iterdir())
    with pullkey.issued(registry, sn, "documents", sid) as key:
        path = _key_file(tmp_path, key)
        r = sshd.rsync(path, "-rlpt", f"127.0.0.1:documents/{sid}/", str(tmp_path / "ok"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "ok" / "essay.txt").read_text() == f"essay of {sn}\n"
        assert not restore_lines(server)  # used: gone at once
        r = sshd.rsync(path, "-rlpt", f"127.0.0.1:documents/{sid}/", str(tmp_path / "ok2"))
        assert r.returncode != 0
        assert not (tmp_path / "ok2").exists()


def test_an_expired_restore_key_is_refused(server: Server, sshd: Sshd, backed_up: object,
                                           tmp_path: Path) -> None:
    sn = SERIALS[0]
    (sid,) = server.store.snapshot_ids(sn, "documents")
    registry = Registry(server.store)
    with pullkey.issued(registry, sn, "documents", sid, lifetime=2) as key:
        path = _key_file(tmp_path, key)
        (line,) = restore_lines(server)
        time.sleep(max(0.0, key.key.expires - time.time()) + 1.1)
        assert restore_lines(server) == [line]  # still in the file: its expiry counts
        r = sshd.rsync(path, "-rlpt", f"127.0.0.1:documents/{sid}/", str(tmp_path / "o"))
        assert r.returncode != 0
        assert not (tmp_path / "o").exists()
        assert "Refused by key options" in sshd.log.read_text()  # expiry-time did
        index = KeyIndex(server.root / "ssh" / "authorized_keys")
        assert index.restore_key(key.key.type, key.key.blob) is None
        with running_embedded(server) as ssh:
            r = subprocess.run(["rsync", "-rlpt", "-e", ssh.rsh(path, sn),
                                f"127.0.0.1:documents/{sid}/", str(tmp_path / "e")],
                               capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert not (tmp_path / "e").exists()
        # and the forced command itself, were a login to get through
        env = {**os.environ, "SSH_ORIGINAL_COMMAND":
               f"rsync --server --sender -lr . documents/{sid}/"}
        r = subprocess.run([XSBACKUP, "--root", str(server.root), "ssh-command", "--client", sn,
                            "--restore-key", key.key.id], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode != 0
        assert "restore key is used up, expired or unknown" in r.stderr
    assert no_keys_left(server)
