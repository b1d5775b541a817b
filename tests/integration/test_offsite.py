"""Off-site copies on the real restic: round trip, kill, credentials, fairness, mirroring,
rebuild (issue 13). One local repository is shared by the module's tests (restic's key
derivation makes each ``init`` slow); every test uses its own client serials."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from tests.conftest import XSBACKUP, Server, Sshd, local_push
from tests.integration.test_restore import fingerprint
from xsbackup import counters
from xsbackup.monitor import metrics
from xsbackup.offsite import registry_copy, state
from xsbackup.server.sshserver import ensure_host_keys
from xsbackup.snapshots import postprocess
from xsbackup.store import init_root
from xsbackup.web import users

pytestmark = pytest.mark.integration

RESTIC = "/usr/bin/restic"


class Repo:
    """A restic repository and its password file."""

    def __init__(self, location: str, password: Path, extra_env: dict[str, str] | None = None,
                 options: tuple[str, ...] = ()) -> None:
        self.location = location
        self.password = password
        self.extra_env = extra_env or {}
        self.options = options
        self.credentials: Path | None = None

    def restic(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               "RESTIC_REPOSITORY": self.location, "RESTIC_PASSWORD_FILE": str(self.password),
               "RESTIC_CACHE_DIR": str(self.password.parent / "cache"), **self.extra_env}
        opts = [a for o in self.options for a in ("-o", o)]
        return subprocess.run([RESTIC, *opts, *args], capture_output=True, text=True,
                              env=env, timeout=300)

    def snapshots(self, host: str) -> list[dict[str, object]]:
        r = self.restic("snapshots", "--json", "--host", host)
        assert r.returncode == 0, r.stderr
        data: list[dict[str, object]] = orjson.loads(r.stdout)
        return data

    def config_text(self, extra: str = "") -> str:
        opts = "".join(f'"{o}", ' for o in self.options)
        return (f'[offsite]\nrepository = "{self.location}"\n'
                f'password_file = "{self.password}"\noptions = [{opts}]\n{extra}')


def make_password(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pw = directory / "password"
    pw.write_text("correct horse battery staple\n")
    pw.chmod(0o600)
    return pw


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    if not os.path.exists(RESTIC):
        pytest.fail("restic is not installed (apt-get install restic)")
    base = tmp_path_factory.mktemp("offsite")
    r = Repo(str(base / "repo"), make_password(base / "secret"))
    init = r.restic("init")
    assert init.returncode == 0, init.stderr
    return r


def offsite_server(server: Server, repo: Repo, extra: str = "") -> None:
    server.configure(repo.config_text(extra))


def source_tree(base: Path, tag: str = "") -> Path:
    """Small, with every fidelity case: setuid, modes, symlinks, an empty dir, mtimes."""
    base.mkdir(parents=True)
    (base / "docs").mkdir()
    (base / "docs" / "a.txt").write_text(f"hello {tag}\n")
    (base / "docs" / "blob.bin").write_bytes(os.urandom(20000))
    (base / "empty").mkdir()
    (base / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(base / "suid", 0o4755)  # noqa: S103 - the fidelity case itself
    (base / "private").write_text("secret\n")
    os.chmod(base / "private", 0o600)
    (base / "link").symlink_to("docs/a.txt")
    (base / "dangling").symlink_to("/nowhere/at/all")
    for p in base.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_600_000_000, 1_600_000_000 + len(p.name)))
    return base


def stored(snapshot: Path) -> dict[str, tuple[object, ...]]:
    """Every stored item: bytes, stored mode, mtime and its user.rsync.%stat record."""
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(snapshot.rglob("*")):
        st = p.lstat()
        try:
            record: bytes | None = os.getxattr(p, "user.rsync.%stat", follow_symlinks=False)
        except OSError:
            record = None
        body = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(p.relative_to(snapshot))] = (body, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                                             record)
    return out


def push(server: Server, serial: str, src: Path, volume: str = "documents") -> str:
    r = local_push(server, serial, src, volume)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    latest = server.store.latest_id(serial, volume)
    assert latest is not None
    return latest


def packs(repo: Repo) -> set[str]:
    return {str(p) for p in Path(repo.location, "data").rglob("*") if p.is_file()}


def test_local_round_trip_over_sshd(server: Server, sshd: Sshd, repo: Repo,
                                    tmp_path: Path) -> None:
    sn = "OFSROUND01"
    key = server.add_client(sn)
    offsite_server(server, repo)
    src = source_tree(tmp_path / "src", "round")
    expected = fingerprint(src)
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    sid = server.store.latest_id(sn, "documents")
    assert sid is not None
    snap = server.store.snapshots_dir(sn, "documents") / sid
    before = stored(snap)
    assert before["suid"][3] is not None  # the client's mode lives in the fake-super record

    out = server.cli("offsite", "run", "--once", "--json")
    report = orjson.loads(out.stdout[out.stdout.index("{"):])
    assert report["replicated"] == [f"{sn} documents/{sid}"]
    [snapshot] = repo.snapshots(sn)
    assert set(snapshot["tags"]) >= {"volume:documents", f"snapshot:{sid}"}  # type: ignore[arg-type]
    assert str(snapshot["time"]).startswith(
        f"{sid[:10]}T{sid[11:13]}:{sid[13:15]}:{sid[15:17]}")
    assert state.load_client(server.store, sn).has("documents", sid)

    # An unchanged second snapshot: restic finds its parent and adds no file data (only
    # directory listings: hardlinking changes each file's ctime and link count).
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    second = server.store.latest_id(sn, "documents")
    assert second != sid
    status = orjson.loads(server.cli("status", "--json").stdout)["offsite"]
    [row] = [r for r in status["clients"] if r["client"] == sn]
    assert row["pending"] == 1
    assert row["replicated"] == 1
    server.cli("offsite", "run", "--once")
    assert f'xsbackup_offsite_lag_seconds{{client="{sn}"}} 0.0' in \
        metrics.render(server.store).decode()
    first, later = (str(s["short_id"]) for s in repo.snapshots(sn))
    diff = repo.restic("diff", first, later)
    assert diff.returncode == 0, diff.stderr
    assert re.search(r"Files:\s+0 new,\s+0 removed,\s+0 changed", diff.stdout), diff.stdout
    assert re.search(r"Data Blobs:\s+0 new", diff.stdout), diff.stdout

    # The first snapshot is lost locally; it comes back from off-site, exact.
    ctx = server.ctx()
    assert ctx.storage.delete(sn, "documents", sid) == ""
    ctx.storage.purge()
    server.cli("offsite", "restore", sn, "--volume", "documents", "--at", sid)
    assert stored(snap) == before
    pulled = tmp_path / "pulled"
    r = sshd.rsync(key, "-a", f"127.0.0.1:documents/{sid}/", f"{pulled}/")
    assert r.returncode == 0, r.stderr
    assert fingerprint(pulled) == expected


def _restic_backup_child(parent: psutil.Process) -> psutil.Process | None:
    for child in parent.children(recursive=True):
        try:
            if child.name() == "restic" and "backup" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_kill_restic_mid_upload(server: Server, repo: Repo, tmp_path: Path) -> None:
    sn = "OFSKILL001"
    server.add_client(sn)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(256 * 1024))
    sid = push(server, sn, src)
    # 4 KiB/s: the upload lasts a minute, so it is surely killed in the middle.
    offsite_server(server, repo, 'upload_limit = "4KiB"\n')
    held = packs(repo)
    run = subprocess.Popen([XSBACKUP, "--root", str(server.root), "offsite", "run", "--once"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(run.pid)
    child = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.poll() is None:
        child = child or _restic_backup_child(proc)
        if child is not None and packs(repo) - held:
            break  # a pack is being written
        time.sleep(0.05)
    assert child is not None, "restic never started"
    assert packs(repo) - held, "restic never started its upload"
    child.send_signal(signal.SIGKILL)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1
    assert "killed by signal 9" in err
    rec = state.load_client(server.store, sn)
    assert not rec.has("documents", sid)
    assert rec.failures == 1
    assert "signal 9" in rec.last_error
    assert repo.snapshots(sn) == []

    offsite_server(server, repo)
    out = server.cli("offsite", "run", "--once", "--json")
    assert f"{sn} documents/{sid}" in orjson.loads(out.stdout[out.stdout.index("{"):])[
        "replicated"]
    assert state.load_client(server.store, sn).has("documents", sid)
    assert len(repo.snapshots(sn)) == 1
    server.cli("offsite", "check")
    r = repo.restic("check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_killed_after_restic_succeeded_adopts_instead_of_a_second_copy(
        server: Server, repo: Repo, tmp_path: Path) -> None:
    sn = "OFSADOPT01"
    server.add_client(sn)
    sid = push(server, sn, source_tree(tmp_path / "src", "adopt"))
    offsite_server(server, repo)
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "offsite", "run", "--once"],
                       capture_output=True, text=True,
                       env={**os.environ, "XSBACKUP_CRASH_AT": "offsite-after-backup"})
    assert r.returncode == -signal.SIGKILL
    assert not state.load_client(server.store, sn).has("documents", sid)
    assert len(repo.snapshots(sn)) == 1
    out = server.cli("offsite", "run", "--once", "--json")
    report = orjson.loads(out.stdout[out.stdout.index("{"):])
    assert report["adopted"] == [f"{sn} documents/{sid}"]
    assert report["replicated"] == []
    assert state.load_client(server.store, sn).has("documents", sid)
    assert len(repo.snapshots(sn)) == 1

    # An admin forgets that restic snapshot by hand: the next one, whose parent it was,
    # still replicates (restic then finds a parent itself).
    [gone] = repo.snapshots(sn)
    assert repo.restic("forget", str(gone["id"])).returncode == 0
    (tmp_path / "src" / "more.txt").write_text("more\n")
    later = push(server, sn, tmp_path / "src")
    out = server.cli("offsite", "run", "--once", "--json")
    assert orjson.loads(out.stdout[out.stdout.index("{"):])["replicated"] == [
        f"{sn} documents/{later}"]


def test_bad_credentials_and_unreachable(server: Server, repo: Repo, tmp_path: Path) -> None:
    sn = "OFSCRED001"
    server.add_client(sn)
    src = source_tree(tmp_path / "src", "cred")
    hook = server.root / "hooks" / "offsite-failed" / "record"
    hook.parent.mkdir(parents=True)
    hook.write_text(f"#!/bin/sh\necho \"$XSBACKUP_FAILURES $XSBACKUP_ERROR\" >> "
                    f"{tmp_path / 'notified'}\n")
    hook.chmod(0o700)
    wrong = make_password(tmp_path / "wrong")
    wrong.write_text("not the password\n")
    server.configure(Repo(repo.location, wrong).config_text())
    push(server, sn, src)
    r = server.xsbackup("offsite", "run", "--once", check=False)
    assert r.returncode == 62, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "refused the password" in r.stderr
    assert "Traceback" not in r.stderr

    server.configure(Repo(str(tmp_path / "no-such-repo"), wrong).config_text())
    r = server.xsbackup("offsite", "run", "--once", check=False)
    assert r.returncode == 60, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "unreachable" in r.stderr

    server.configure(Repo("sftp:nobody@127.0.0.1:/nowhere", wrong,
                          options=("sftp.command=ssh -p 1 -o BatchMode=yes 127.0.0.1 "
                                   "-s sftp",)).config_text())
    r = server.xsbackup("offsite", "run", "--once", check=False)
    assert r.returncode == 60, r.stderr

    failures = counters.read(server.store)
    assert failures['offsite_failures{reason="credentials"}'] == 1
    assert failures['offsite_failures{reason="unreachable"}'] == 2
    assert b"xsbackup_offsite_failures_total" in metrics.render(server.store)
    # The notify hook runs once, when the third failure in a row makes it a streak.
    [notified] = (tmp_path / "notified").read_text().splitlines()
    assert notified.startswith("3 off-site repository sftp:")
    repo_state = state.load_repo(server.store)
    assert repo_state.failures == 3
    assert repo_state.retry_at > time.time()

    # Ingest never waits for the off-site lock: a backup while a run holds it succeeds.
    with state.acquire(server.store):
        (src / "new.txt").write_text("more\n")
        push(server, sn, src)
    assert len(server.store.snapshot_ids(sn, "documents")) == 2


def test_fairness_small_clients_before_big_clients_third(server: Server, repo: Repo,
                                                         tmp_path: Path) -> None:
    big, small = "OFSBIG0001", [f"OFSSMALL{i:02d}" for i in range(5)]
    for sn in [big, *small]:
        server.add_client(sn)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / "n.txt").write_text(f"{i}\n")
        push(server, big, src)
    for sn in small:
        push(server, sn, src)
    offsite_server(server, repo)
    # Six passes' worth: the big client's oldest, then every small one; its second and
    # third snapshots wait.
    out = server.cli("offsite", "run", "--once", "--limit", "6", "--json")
    report = orjson.loads(out.stdout[out.stdout.index("{"):])
    oldest = server.store.snapshot_ids(big, "documents")[0]
    assert report["replicated"] == [f"{big} documents/{oldest}"] + [
        f"{sn} documents/{server.store.snapshot_ids(sn, 'documents')[0]}" for sn in small]
    assert report["pending"] == 2


def test_prune_forgets_off_site_unless_the_off_site_policy_keeps(
        server: Server, repo: Repo, tmp_path: Path) -> None:
    sn = "OFSPRUNE01"
    server.add_client(sn)
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for i in range(3):
        (src / "n.txt").write_text(f"{i}\n" * (i + 1))  # a new size: rsync sees a change
        ids.append(push(server, sn, src))
    offsite_server(server, repo)
    server.cli("offsite", "run", "--once")
    assert len(repo.snapshots(sn)) == 3

    # Local retention keeps the newest only; the off-site policy keeps two.
    policy = '[retention]\nkeep_within = ""\nkeep_first_monthly = 0\nkeep_last = 1\n'
    server.configure(policy + repo.config_text("keep_last = 2\n"))
    server.cli("prune", "--policy-only")
    assert server.store.snapshot_ids(sn, "documents") == [ids[2]]
    out = server.cli("offsite", "run", "--once", "--json")
    assert orjson.loads(out.stdout[out.stdout.index("{"):])["forgotten"] == [
        f"{sn} documents/{ids[0]}"]
    tags = sorted(t for s in repo.snapshots(sn) for t in s["tags"]  # type: ignore[attr-defined]
                  if t.startswith("snapshot:"))
    assert tags == [f"snapshot:{ids[1]}", f"snapshot:{ids[2]}"]

    # The kept one streams as an archive from off-site (and is back in the store).
    r = server.cli("restore", "archive", sn, "--from", "offsite", "--at", ids[1])
    with tarfile.open(fileobj=io.BytesIO(r.stdout_bytes)) as tar:
        member = tar.extractfile("n.txt")
        assert member is not None
        assert member.read() == b"1\n1\n"
    assert server.store.snapshot_ids(sn, "documents") == ids[1:]

    # Without an off-site policy, the off-site copy mirrors the store.
    server.cli("prune", "--policy-only")
    server.configure(policy + repo.config_text())
    server.cli("offsite", "run", "--once")
    [left] = repo.snapshots(sn)
    assert f"snapshot:{ids[2]}" in left["tags"]  # type: ignore[operator]

    # restic prune then reclaims what forgotten snapshots alone held: nothing is left.
    assert state.load_repo(server.store).last_prune == ""
    server.cli("offsite", "prune")
    assert state.load_repo(server.store).last_prune != ""
    r = repo.restic("prune", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert re.search(r"total prune:\s+0 blobs", r.stdout), r.stdout


def test_rebuild_keeps_present_identity_files_and_names_the_difference(
        server: Server, tmp_path: Path) -> None:
    ensure_host_keys(server.store.ssh_dir)
    files = registry_copy.identity(server.store)
    other = tmp_path / "other"
    store = init_root(other)
    ensure_host_keys(store.ssh_dir)  # a new server started before the rebuild
    before = {p: p.read_bytes() for p in store.identity_files() if p.exists()}
    # A name outside the identity files is ignored, never written.
    files["../../escape"] = files["ssh/ssh_host_ed25519_key"]
    written, differing = registry_copy.restore_identity(store, files)
    assert written == []
    assert sorted(differing) == ["ssh/ssh_host_ed25519_key", "ssh/ssh_host_rsa_key"]
    assert {p: p.read_bytes() for p in before} == before
    assert not (other / "../../escape").resolve().exists()


def test_rebuild_after_losing_the_state_root(server: Server, repo: Repo,
                                             tmp_path: Path) -> None:
    clients = ["OFSREBLD01", "OFSREBLD02"]
    originals: dict[tuple[str, str], dict[str, tuple[object, ...]]] = {}
    for n, sn in enumerate(clients):
        server.add_client(sn)
        src = source_tree(tmp_path / f"src{n}", sn)
        for i in range(2):
            (src / "docs" / "a.txt").write_text(f"{sn} {i}\n")
            sid = push(server, sn, src)
            originals[(sn, sid)] = stored(server.store.snapshots_dir(sn, "documents") / sid)
    # The server's identity: the embedded SSH server's host keys and an HTTP admin.
    ensure_host_keys(server.store.ssh_dir)
    server.cli("admin", "add-user", "alice", "--password-stdin", input="s3cret-pass\n")
    offsite_server(server, repo)
    server.cli("offsite", "run", "--once")
    keys = {sn: server.ctx().registry.get(sn).keys for sn in clients}
    identity = {p.relative_to(server.root): p.read_bytes()
                for p in server.store.identity_files()}
    assert len(identity) == 3

    fresh = tmp_path / "fresh"
    init_root(fresh)
    (fresh / "xsbackup.toml").write_text(repo.config_text())
    rebuilt = Server(fresh, server.keydir)
    out = rebuilt.cli("offsite", "rebuild", "--json")
    report = orjson.loads(out.stdout[out.stdout.index("{"):])
    assert set(clients) <= set(report["clients"])
    for sn in clients:
        assert rebuilt.ctx().registry.get(sn).keys == keys[sn]
    # The same host keys (devices that pinned them see no warning) and the same admin.
    assert sorted(report["files"]) == sorted(str(p) for p in identity)
    for rel, data in identity.items():
        assert (fresh / rel).read_bytes() == data
        assert (fresh / rel).stat().st_mode & 0o777 == 0o600
    assert users.verify(rebuilt.store, "alice", "s3cret-pass") is not None
    for (sn, sid), tree in originals.items():
        assert sid in rebuilt.store.snapshot_ids(sn, "documents")
        assert stored(rebuilt.store.snapshots_dir(sn, "documents") / sid) == tree
    # What was restored counts as off-site already: nothing to replicate, nothing forgotten.
    out = rebuilt.cli("offsite", "run", "--once", "--json")
    again = orjson.loads(out.stdout[out.stdout.index("{"):])
    assert again["replicated"] == []
    assert again["forgotten"] == []


@pytest.fixture
def sftp_repo(tmp_path: Path, host_key: Path) -> Iterator[Repo]:
    from tests.conftest import running_sshd

    keydir = tmp_path / "sftpkey"
    keydir.mkdir()
    key = keydir / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    auth = keydir / "authorized_keys"
    auth.write_text(key.with_suffix(".pub").read_text())
    user = os.environ.get("USER") or "root"
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    with running_sshd(tmp_path / "sftpd", host_key, auth,
                      ("PermitRootLogin prohibit-password",
                       "Subsystem sftp internal-sftp")) as (port, _log):
        command = (f"sftp.command=ssh -F /dev/null -o StrictHostKeyChecking=no "
                   f"-o UserKnownHostsFile=/dev/null -o BatchMode=yes -i {key} -p {port} "
                   f"{user}@127.0.0.1 -s sftp")
        r = Repo(f"sftp:{user}@127.0.0.1:{tmp_path / 'sftp-repo'}",
                 make_password(tmp_path / "secret"), options=(command,))
        yield r


def test_sftp_round_trip(server: Server, sftp_repo: Repo, tmp_path: Path) -> None:
    sn = "OFSSFTP001"
    server.add_client(sn)
    src = source_tree(tmp_path / "src", "sftp")
    sid = push(server, sn, src)
    snap = server.store.snapshots_dir(sn, "documents") / sid
    before = stored(snap)
    offsite_server(server, sftp_repo)
    server.cli("offsite", "init")
    server.cli("offsite", "run", "--once")
    assert len(sftp_repo.snapshots(sn)) == 1
    ctx = server.ctx()
    (src / "later").write_text("x\n")
    push(server, sn, src)  # the lost snapshot is not the newest
    assert ctx.storage.delete(sn, "documents", sid) == ""
    ctx.storage.purge()
    server.cli("offsite", "restore", sn, "--at", sid)
    assert stored(snap) == before


@pytest.fixture
def s3_repo(tmp_path: Path) -> Iterator[Repo]:
    """moto's S3 server on a loopback port; the credentials come from a 0600 file."""
    from tests.conftest import free_port

    server_bin = Path(XSBACKUP).with_name("moto_server")
    if not server_bin.exists():
        pytest.fail("moto_server is missing: pip install 'moto[server]' (the test extras)")
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen([str(server_bin), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, "moto_server exited"
                time.sleep(0.1)
        creds = tmp_path / "s3.env"
        creds.write_text("AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n")
        creds.chmod(0o600)
        repo = Repo(f"s3:http://127.0.0.1:{port}/xsbackup", make_password(tmp_path / "secret"),
                    {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        repo.credentials = creds
        yield repo
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_s3_round_trip(server: Server, s3_repo: Repo, tmp_path: Path) -> None:
    sn = "OFSS3RT001"
    server.add_client(sn)
    src = source_tree(tmp_path / "src", "s3")
    sid = push(server, sn, src)
    snap = server.store.snapshots_dir(sn, "documents") / sid
    before = stored(snap)
    server.configure(s3_repo.config_text(f'credentials_file = "{s3_repo.credentials}"\n'
                                         "credentials_env = []\n"))
    server.cli("offsite", "init")
    server.cli("offsite", "run", "--once")
    assert len(s3_repo.snapshots(sn)) == 1
    (src / "later").write_text("x\n")
    push(server, sn, src)
    ctx = server.ctx()
    assert ctx.storage.delete(sn, "documents", sid) == ""
    ctx.storage.purge()
    server.cli("offsite", "restore", sn, "--at", sid)
    assert stored(snap) == before


def test_dashboard_shows_off_site_lag_and_failure(repo: Repo, tmp_path: Path) -> None:
    from tests.integration.test_webui import ADMIN, ADMIN_PW, start_site
    from tests.integration.test_webui_http import Client

    sn = "OFSDASH001"
    missing = Repo(str(tmp_path / "no-such-repo"), repo.password)
    site = start_site(tmp_path / "site", missing.config_text())
    try:
        site.server.add_client(sn)
        src = source_tree(tmp_path / "src", "dash")
        push(site.server, sn, src)
        site.server.configure(missing.config_text())
        r = site.server.xsbackup("offsite", "run", "--once", check=False)
        assert r.returncode == 60, r.stderr
        browser = Client(site.http.effective_port)
        browser.sign_in(ADMIN, ADMIN_PW)
        page = browser.get("/ui/").text
        assert "Off-site copies" in page
        assert "failing" in page
        assert f'<a href="/ui/clients/{sn}">{sn}</a></td><td data-label="Waiting" ' \
               'class="num">1</td>' in page
    finally:
        site.close()


def test_serve_job_replicates_in_its_own_thread_inside_the_window(
        server: Server, repo: Repo, tmp_path: Path) -> None:
    import datetime as dt

    from xsbackup.offsite import replicate
    from xsbackup.offsite.schedule import OffsiteJob

    sn = "OFSSERVE01"
    server.add_client(sn)
    sid = push(server, sn, source_tree(tmp_path / "src", "serve"))
    now = dt.datetime.now().astimezone()
    outside = f"{(now.hour + 2) % 24:02d}:00"
    offsite_server(server, repo, f'window_start = "{outside}"\n'
                                 f'window_end = "{(now.hour + 3) % 24:02d}:00"\n')
    assert not replicate.in_window(server.ctx(), now)
    job = OffsiteJob(server.ctx)
    job()
    assert job.thread is None  # outside the window: nothing started

    offsite_server(server, repo)
    rec = state.load_repo(server.store)
    rec.retry_at = time.time() + 3600  # in back-off after a repository failure
    state.save_repo(server.store, rec)
    job()
    assert job.thread is None
    rec.retry_at = 0.0
    state.save_repo(server.store, rec)
    job()
    assert job.thread is not None
    first = job.thread
    first.join(timeout=120)
    assert state.load_client(server.store, sn).has("documents", sid)
    job()  # not due again before offsite.interval_minutes
    assert job.thread is first


def test_restic_prune_is_due_once_a_day_after_its_time(server: Server) -> None:
    import datetime as dt

    from xsbackup.offsite.schedule import prune_due

    server.configure('[offsite]\nrepository = "/nowhere"\nprune_schedule = "04:30"\n')
    ctx = server.ctx()
    local = dt.datetime.now().astimezone()
    before = local.replace(hour=4, minute=0, second=0, microsecond=0)
    after = local.replace(hour=5, minute=0, second=0, microsecond=0)
    assert not prune_due(ctx, before)
    assert prune_due(ctx, after)
    rec = state.load_repo(server.store)
    rec.last_prune = state.now_iso(after - dt.timedelta(minutes=10))  # 04:50 today
    state.save_repo(server.store, rec)
    assert not prune_due(ctx, after)
    assert prune_due(ctx, after + dt.timedelta(days=1))
    server.configure('[offsite]\nrepository = "/nowhere"\nprune_schedule = ""\n')
    assert not prune_due(server.ctx(), after + dt.timedelta(days=1))


def test_missing_restic_and_no_repository_have_their_own_codes(server: Server,
                                                               tmp_path: Path) -> None:
    pw = make_password(tmp_path / "secret")
    server.configure(f'[offsite]\nrepository = "{tmp_path / "repo"}"\n'
                     f'password_file = "{pw}"\nrestic = "/nonexistent/restic"\n')
    r = server.cli("offsite", "init", check=False)
    assert r.exit_code == 61
    assert "restic program '/nonexistent/restic' was not found" in r.output
    server.configure("")
    r = server.cli("offsite", "run", "--once", check=False)
    assert r.exit_code == 64
    assert "offsite.repository" in r.output
