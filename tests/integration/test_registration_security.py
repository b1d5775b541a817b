"""Registration attacks, end to end: ``xsbackup serve`` (real XML-RPC over HTTP, the
embedded SSH server, the post-processor) with a real OpenSSH sshd beside it on the same
generated ``authorized_keys``, and real rsync backups and restores through both.

Key squatting (another serial registering a victim's public key), claiming a removed
client's history, impostors racing a device's pending registration, and registration
floods (rate limits and the pending cap)."""

from __future__ import annotations

import http.client
import os
import pwd
import subprocess
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import XSBACKUP, running_sshd
from tests.integration.test_serve import Served, start, stop
from xsbackup.clients.registry import Registry
from xsbackup.store import Store

pytestmark = pytest.mark.integration
VICTIM = "SHF00112233"
ATTACKER = "AAATTACKER1"  # sorts first: its authorized_keys lines come before the victim's
# The tests own their load and disk limits: a busy machine must not refuse a transfer.
BASE_CONFIG = "[admission]\nmax_load = 1000.0\nmax_blocks_pct = 100.0\nmax_inodes_pct = 100.0\n"


class _From(xmlrpc.client.Transport):
    """An XML-RPC transport whose connections leave from a chosen loopback address."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        chost, self._extra_headers, _ = self.get_host_info(host)
        conn = http.client.HTTPConnection(chost, timeout=30, source_address=(self.source, 0))
        self._connection = host, conn
        return conn


@dataclass
class Site:
    served: Served
    openssh_port: int
    tmp: Path

    @property
    def root(self) -> Path:
        return self.served.root

    @property
    def registry(self) -> Registry:
        return Registry(Store(self.root))

    def xs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([XSBACKUP, "--root", str(self.root), *args], capture_output=True,
                           text=True)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def register(self, serial: str, blob: str, nickname: str = "", uuid: str = "",
                 source: str = "127.0.0.1") -> dict[str, str]:
        with xmlrpc.client.ServerProxy(self.served.url("/"), transport=_From(source)) as proxy:
            reply = proxy.register(serial, nickname, uuid, blob)
        assert isinstance(reply, dict)
        return reply

    def keygen(self, name: str) -> tuple[Path, str]:
        key = self.tmp / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f",
                        str(key)], check=True)
        return key, Path(f"{key}.pub").read_text().split()[1]

    def openssh(self, key: Path) -> str:
        """ssh to OpenSSH sshd, which picks the client by the first authorized_keys line
        matching the key (the login is the service account, as documented)."""
        user = pwd.getpwuid(os.getuid()).pw_name
        return (f"ssh -F /dev/null -o PasswordAuthentication=no -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes "
                f"-i {key} -l {user} -p {self.openssh_port}")

    def embedded(self, key: Path, user: str) -> str:
        return self.served.ssh_cmd(key, user) + " -o BatchMode=yes"

    def backup(self, rsh: str, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
        src = self.tmp / f"src-{time.monotonic_ns()}"
        src.mkdir()
        for name, text in files.items():
            (src / name).write_text(text)
        return subprocess.run(["rsync", "-rlt", "-e", rsh, f"{src}/", "127.0.0.1:documents/"],
                              capture_output=True, text=True, timeout=60)

    def restore(self, rsh: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
        out = self.tmp / f"out-{time.monotonic_ns()}"
        r = subprocess.run(["rsync", "-rlt", "-e", rsh, "127.0.0.1:documents/latest/",
                            f"{out}/"], capture_output=True, text=True, timeout=60)
        got = {p.name: p.read_text() for p in out.iterdir()} if out.is_dir() else {}
        return r, got

    def wait_snapshots(self, serial: str, count: int) -> None:
        store = Store(self.root)
        deadline = time.monotonic() + 20
        while len(store.snapshot_ids(serial, "documents")) < count:
            assert time.monotonic() < deadline, f"{serial} has no snapshot {count}"
            time.sleep(0.05)

    def pending(self) -> list[dict[str, Any]]:
        rows = orjson.loads(self.xs("clients", "pending", "--json").stdout)
        assert isinstance(rows, list)
        return rows


@pytest.fixture
def site_factory(tmp_path: Path, host_key: Path) -> Iterator[Any]:
    started: list[tuple[Served, Any]] = []

    def make(config: str = "") -> Site:
        root = tmp_path / f"root{len(started)}"
        root.mkdir()
        (root / "xsbackup.toml").write_text(BASE_CONFIG + config)
        served = start(root)
        sshd = running_sshd(tmp_path / f"sshd{len(started)}", host_key,
                            root / "ssh" / "authorized_keys",
                            ("PermitRootLogin forced-commands-only",))
        port, _ = sshd.__enter__()
        started.append((served, sshd))
        return Site(served, port, tmp_path)

    try:
        yield make
    finally:
        for served, sshd in started:
            sshd.__exit__(None, None, None)
            assert stop(served) == 0


def denied(r: subprocess.CompletedProcess[str]) -> bool:
    """ssh (or rsync over it) was refused at authentication: the key is not authorised."""
    return r.returncode in (255, 12) and "Permission denied" in r.stderr


# ---- 1. key squatting -------------------------------------------------------------------


def test_a_registered_key_cannot_be_claimed_by_another_serial(site_factory: Any) -> None:
    site = site_factory()
    key, blob = site.keygen("victim")
    assert site.register(VICTIM, blob, "Ana")["success"] == "OK"
    assert site.backup(site.openssh(key), {"a.txt": "victim 1\n"}).returncode == 0
    site.wait_snapshots(VICTIM, 1)

    # Unauthenticated XML-RPC: another serial with the victim's public key.
    reply = site.register(ATTACKER, blob, "evil")
    assert reply == {"success": "DENIED",
                     "error": "this key is already registered to another device"}
    # The admin's CLI refuses it too, in one line, and so does a bare blob with a type.
    r = site.xs("clients", "add", "AAATTACKER2", "--pubkey-blob", blob, check=False)
    assert r.returncode == 10
    assert r.stderr == f"xsbackup: error: this key already belongs to client {VICTIM}\n"
    assert not site.registry.exists(ATTACKER)
    assert not site.registry.exists("AAATTACKER2")
    assert site.xs("keys").returncode == 0  # a full rebuild agrees
    assert (site.root / "ssh" / "authorized_keys").read_text().count(blob) == 1

    # The victim's next backups and its restores still reach its own history.
    files = {"a.txt": "victim 1\n", "b.txt": "victim 2\n"}
    assert site.backup(site.openssh(key), files).returncode == 0
    site.wait_snapshots(VICTIM, 2)
    r, got = site.restore(site.openssh(key))
    assert r.returncode == 0, r.stderr
    assert got == files
    for n, user in enumerate((VICTIM, "xsbackup"), start=3):
        files = {**files, f"{user}.txt": "embedded\n"}
        r = site.backup(site.embedded(key, user), files)
        assert r.returncode == 0, r.stderr
        site.wait_snapshots(VICTIM, n)
        r, got = site.restore(site.embedded(key, user))
        assert r.returncode == 0, r.stderr
        assert got == files
    assert not (site.root / "clients" / ATTACKER).exists()


def test_a_new_key_of_a_known_serial_cannot_be_another_clients_key(site_factory: Any) -> None:
    site = site_factory('[registration]\nnew_key = "open"\n')
    _, victim_blob = site.keygen("victim")
    _, own_blob = site.keygen("own")
    assert site.register(VICTIM, victim_blob)["success"] == "OK"
    assert site.register(ATTACKER, own_blob)["success"] == "OK"
    # Re-key: the attacker's known serial asks for the victim's key as its new key.
    assert site.register(ATTACKER, victim_blob)["success"] == "DENIED"
    assert [k.blob for k in site.registry.get(ATTACKER).keys] == [own_blob]


# ---- 2. claiming a history ----------------------------------------------------------------


def test_a_removed_clients_history_is_not_given_to_a_new_key(site_factory: Any) -> None:
    site = site_factory()  # default policy: new serials are open
    key, blob = site.keygen("device")
    assert site.register(VICTIM, blob, "Ana")["success"] == "OK"
    assert site.backup(site.openssh(key), {"diary.txt": "secret\n"}).returncode == 0
    site.wait_snapshots(VICTIM, 1)
    site.xs("clients", "remove", VICTIM)  # the data is kept

    thief, thief_blob = site.keygen("thief")
    assert site.register(VICTIM, thief_blob, "thief") == {
        "success": "PENDING", "error": "key awaiting administrator approval"}
    assert not site.registry.exists(VICTIM)  # nothing changed before approval
    for rsh in (site.openssh(thief), site.embedded(thief, VICTIM),
                site.embedded(thief, "xsbackup")):
        r, got = site.restore(rsh)
        assert denied(r), r.stderr
        assert got == {}
    (row,) = site.pending()
    assert (row["serial"], row["nickname"], row["history"]) == (VICTIM, "thief", True)
    # A serial without data (never seen, or purged) is still open.
    _, other_blob = site.keygen("other")
    assert site.register("SHF00000002", other_blob)["success"] == "OK"


@pytest.mark.parametrize("case", ["new-serial-under-approve", "reflashed-with-history"])
def test_the_admin_approves_the_device_not_the_impostor(site_factory: Any, case: str) -> None:
    if case == "new-serial-under-approve":
        site = site_factory('[registration]\nnew_serial = "approve"\n')
        nickname_before = None
    else:
        site = site_factory()
        old, old_blob = site.keygen("old")
        assert site.register(VICTIM, old_blob, "Ana", "uuid-1")["success"] == "OK"
        assert site.backup(site.openssh(old), {"essay.txt": "my essay\n"}).returncode == 0
        site.wait_snapshots(VICTIM, 1)
        nickname_before = "Ana"
    device, device_blob = site.keygen("device")
    impostor, impostor_blob = site.keygen("impostor")
    assert site.register(VICTIM, device_blob, "Ana (reflashed)", "uuid-2")["success"] == \
        "PENDING"
    assert site.register(VICTIM, impostor_blob, "Mallory", "uuid-evil",
                         source="127.0.0.9")["success"] == "PENDING"
    # Asking again changes nothing: still two requests, the nickname untouched.
    assert site.register(VICTIM, impostor_blob, "Mallory 2", source="127.0.0.9")["success"] \
        == "PENDING"
    if nickname_before is None:
        assert not site.registry.exists(VICTIM)
    else:
        client = site.registry.get(VICTIM)
        assert (client.nickname, client.uuid) == (nickname_before, "uuid-1")

    rows = site.pending()
    assert [(r["serial"], r["nickname"], r["uuid"], r["remote"]) for r in rows] == [
        (VICTIM, "Ana (reflashed)", "uuid-2", "127.0.0.1"),
        (VICTIM, "Mallory", "uuid-evil", "127.0.0.9")]
    fp_device, fp_impostor = (r["fingerprint"] for r in rows)
    listed = site.xs("clients", "pending").stdout
    assert fp_device in listed
    assert fp_impostor in listed
    # Two are waiting: approving "the" request of the serial is ambiguous.
    r = site.xs("clients", "approve", VICTIM, check=False)
    assert r.returncode == 20
    assert r.stderr == (f"xsbackup: error: 2 registrations of {VICTIM} are waiting; choose "
                        f"one by fingerprint: {fp_device}, {fp_impostor}\n")
    out = site.xs("clients", "approve", VICTIM, "--fingerprint", fp_device).stdout
    assert out.startswith(f"approved: {VICTIM} now has 1 active key(s) (ssh-ed25519)")
    client = site.registry.get(VICTIM)
    assert (client.nickname, client.uuid) == ("Ana (reflashed)", "uuid-2")
    assert [k.blob for k in client.keys] == [device_blob]
    assert [r["fingerprint"] for r in site.pending()] == [fp_impostor]

    # The impostor reads nothing and writes nothing, through either server.
    for rsh in (site.openssh(impostor), site.embedded(impostor, VICTIM),
                site.embedded(impostor, "xsbackup")):
        r, got = site.restore(rsh)
        assert denied(r), r.stderr
        assert got == {}
        assert denied(site.backup(rsh, {"x.txt": "evil\n"}))
    # The device restores its history, then backs up, through both servers.
    history = {} if nickname_before is None else {"essay.txt": "my essay\n"}
    for rsh in (site.openssh(device), site.embedded(device, VICTIM)):
        if history:
            r, got = site.restore(rsh)
            assert r.returncode == 0, r.stderr
            assert got == history
    files = {**history, "new.txt": "after\n"}
    assert site.backup(site.openssh(device), files).returncode == 0
    site.wait_snapshots(VICTIM, len(history) + 1)
    r, got = site.restore(site.embedded(device, VICTIM))
    assert r.returncode == 0, r.stderr
    assert got == files
    out = site.xs("clients", "reject", VICTIM).stdout
    assert out == f"rejected 1 pending key(s) of {VICTIM}\n"
    assert site.pending() == []


# ---- 3. registration floods -------------------------------------------------------------


def test_new_serials_are_rate_limited_per_address_and_overall(site_factory: Any) -> None:
    site = site_factory("[registration]\nmax_new_per_address_per_hour = 2\n"
                        "max_new_per_hour = 3\n")
    blobs = [site.keygen(f"k{i}")[1] for i in range(5)]
    assert site.register("SHF00000001", blobs[0])["success"] == "OK"
    assert site.register("SHF00000002", blobs[1])["success"] == "OK"
    reply = site.register("SHF00000003", blobs[2])
    assert reply == {"success": "TRY_LATER", "error": "too many new devices registered from "
                     "this address in the last hour; try again later"}
    assert not site.registry.exists("SHF00000003")
    # A known serial is not a new one: re-registering is never limited.
    assert site.register("SHF00000001", blobs[0])["success"] == "OK"
    assert site.register("SHF00000003", blobs[2], source="127.0.0.2")["success"] == "OK"
    reply = site.register("SHF00000004", blobs[3], source="127.0.0.3")
    assert reply == {"success": "TRY_LATER", "error": "too many new devices registered in "
                     "the last hour; try again later"}
    assert [c.serial for c in site.registry.all()] == [
        "SHF00000001", "SHF00000002", "SHF00000003"]
    # The admin is not limited.
    site.xs("clients", "add", "SHF00000004", "--pubkey-blob", blobs[3])


def test_pending_requests_per_serial_are_capped(site_factory: Any) -> None:
    site = site_factory("[registration]\nmax_pending_per_serial = 2\n")
    _, own = site.keygen("own")
    assert site.register(VICTIM, own, "Ana")["success"] == "OK"
    blobs = [site.keygen(f"k{i}")[1] for i in range(3)]
    assert site.register(VICTIM, blobs[0])["success"] == "PENDING"
    assert site.register(VICTIM, blobs[1])["success"] == "PENDING"
    reply = site.register(VICTIM, blobs[2])
    assert reply == {"success": "TRY_LATER", "error": f"too many registrations of {VICTIM} "
                     "are waiting for approval; ask the administrator"}
    rows = site.pending()
    assert len(rows) == 2
    out = site.xs("clients", "reject", VICTIM, "--fingerprint", rows[0]["fingerprint"]).stdout
    assert out == f"rejected 1 pending key(s) of {VICTIM}\n"
    assert [r["fingerprint"] for r in site.pending()] == [rows[1]["fingerprint"]]
    assert site.register(VICTIM, blobs[2])["success"] == "PENDING"
    # approve without --fingerprint: fine while exactly one is waiting ... two now.
    site.xs("clients", "reject", VICTIM)
    assert site.register(VICTIM, blobs[2])["success"] == "PENDING"
    site.xs("clients", "approve", VICTIM, "--keep-old")
    assert sorted(k.blob for k in site.registry.get(VICTIM).keys) == sorted([own, blobs[2]])
    r = site.xs("clients", "reject", VICTIM, check=False)
    assert r.returncode == 16
