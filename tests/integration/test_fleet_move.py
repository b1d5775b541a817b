"""``xsbackup fleet move-client``: a ten-snapshot history moved between two servers, each
behind its own sshd, killed (SIGKILL at crash points) three times and resumed."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Sshd, local_push
from tests.fleet_kit import FleetKit, fleet_of
from xsbackup.snapshots import manifest
from xsbackup.store import Store, get_xattrs, init_root

pytestmark = pytest.mark.integration

SN = "SHM00000001"
State = dict[str, tuple[int, int, int, bytes, dict[str, bytes]]]


def snapshot_state(directory: Path) -> State:
    """Every path with its mode, size, mtime, content (or link) and every xattr."""
    out: State = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in ["", *dirnames, *filenames]:
            p = Path(dirpath) / name if name else Path(dirpath)
            if not name and p != directory:
                continue
            st = p.lstat()
            body = (os.readlink(p).encode() if p.is_symlink()
                    else p.read_bytes() if p.is_file() else b"")
            xattrs = {k: os.getxattr(p, k, follow_symlinks=False)
                      for k in os.listxattr(p, follow_symlinks=False)}
            out[str(p.relative_to(directory))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                  body, xattrs)
    return out


def history(store: Store) -> dict[str, State]:
    snaps = store.snapshots_dir(SN, "documents")
    return {sid: snapshot_state(snaps / sid) for sid in store.snapshot_ids(SN, "documents")}


def registered_on(kit: FleetKit) -> list[str]:
    return [n for n, m in kit.members.items()
            if (m.server.store.client_dir(SN) / "client.json").exists()]


def du_total(kit: FleetKit, name: str) -> int:
    out = kit.members[name].server.xsbackup("du", SN, "--json").stdout
    return int(orjson.loads(out)[0]["total"])


def move(kit: FleetKit, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XSBACKUP_CRASH_AT"}
    if crash_at:
        env["XSBACKUP_CRASH_AT"] = crash_at
    return subprocess.run([XSBACKUP, "fleet", "--inventory", str(kit.inventory), "--timeout",
                           "30", "move-client", SN, "--to", "b", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_move_client_killed_three_times_resumes_to_an_exact_copy(
        tmp_path: Path, host_key: Path) -> None:
    init_root(Path(os.environ["XSBACKUP_ROOT"]))  # the journal's state root
    with fleet_of(tmp_path / "fleet", host_key, ("a", "b")) as kit:
        a, b = kit.members["a"].server, kit.members["b"].server
        key = a.add_client(SN)
        src = tmp_path / "src"
        src.mkdir()
        (src / "big").write_bytes(os.urandom(300_000))  # shared by every snapshot
        (src / "private").write_bytes(b"secret")
        (src / "private").chmod(0o640)
        os.link(src / "big", src / "big-again")
        (src / "link").symlink_to("big")
        for n in range(10):
            (src / f"day{n}").write_text(f"day {n}\n" * 50)
            (src / "changing").write_text(f"version {n}\n")
            r = local_push(a, SN, src)
            assert r.returncode == 0, r.stderr
        a.xsbackup("postprocess")  # ten waiting transfers, each linked to the one before
        before = history(a.store)
        assert len(before) == 10
        # deltas chained (the ninth snapshot: base, d1 .. d7 beside it)
        manifests = {sid: manifest.read_bytes(a.ctx().storage, SN, "documents", sid)
                     for sid in before}
        parts = os.listdir(a.store.volume_dir(SN, "documents") / "manifests")
        assert f"{sorted(before)[8]}.d7" in parts
        source_du = du_total(kit, "a")
        facts = get_xattrs(a.store.client_dir(SN))
        assert facts["last_success"]
        assert registered_on(kit) == ["a"]

        for point in ("fleet-move-copied-3", "fleet-move-staged", "fleet-move-registered"):
            r = move(kit, point)
            assert r.returncode == -signal.SIGKILL, (point, r.stderr)
            assert len(registered_on(kit)) == 1, point
        assert registered_on(kit) == ["b"]
        r = move(kit, None)
        assert r.returncode == 0, r.stderr
        assert orjson.loads(r.stdout) == {"serial": SN, "source": "a", "target": "b",
                                          "snapshots": {"documents": 10}}
        assert registered_on(kit) == ["b"]
        assert not a.store.client_dir(SN).exists()
        assert any(n.startswith(f"client-{SN}-moved-") for n in os.listdir(a.store.trash_dir))

        # The same ids, bytes, modes, mtimes and xattrs (facts, fake-super records).
        assert history(b.store) == before
        assert {sid: manifest.read_bytes(b.ctx().storage, SN, "documents", sid)
                for sid in before} == manifests  # every chain part came along
        assert b.store.latest_id(SN, "documents") == max(before)
        assert get_xattrs(b.store.client_dir(SN)) == facts
        # Sharing kept: not ten copies of the 300 kB file.
        target_du = du_total(kit, "b")
        assert abs(target_du - source_du) <= 0.05 * source_du
        assert target_du < 3 * 300_000  # big and big-again (no -H from the client), once

        # The client's next backup over OpenSSH lands on the target, not the source.
        user = pwd.getpwuid(os.getuid()).pw_name
        (src / "day10").write_text("after the move\n")
        on_b = Sshd(kit.members["b"].port, tmp_path / "b.log", user)
        r2 = on_b.rsync(key, "-a", "--delete", f"{src}/", "127.0.0.1:documents/")
        assert r2.returncode == 0, r2.stderr
        b.xsbackup("postprocess")
        assert len(b.store.snapshot_ids(SN, "documents")) == 11
        on_a = Sshd(kit.members["a"].port, tmp_path / "a.log", user)
        assert on_a.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/").returncode != 0
        assert b.xsbackup("status", "--json").stdout.count(SN) >= 1


def test_move_refuses_what_it_cannot_do(tmp_path: Path, host_key: Path) -> None:
    init_root(Path(os.environ["XSBACKUP_ROOT"]))
    with fleet_of(tmp_path / "fleet", host_key, ("a", "b")) as kit:
        code, _ = kit.fleet("move-client", SN, "--to", "b")
        assert code == 6  # registered nowhere
        kit.members["a"].server.add_client(SN)
        code, _ = kit.fleet("move-client", SN, "--to", "a")
        assert code == 72  # already there
        (kit.members["b"].server.store.client_dir(SN)).mkdir()
        r = move(kit, None)
        assert r.returncode == 72
        assert "already holds data" in r.stderr
        assert registered_on(kit) == ["a"]
