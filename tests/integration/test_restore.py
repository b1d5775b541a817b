"""Restore end to end: rsync pull, SSH archive | tar x, HTTP; aliases; refusals; memory."""

from __future__ import annotations

import base64
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.backends import BACKENDS
from tests.conftest import Server, Sshd
from tests.integration.test_sshserver import embedded  # noqa: F401 - fixture
from xsbackup.context import Context
from xsbackup.locking import lock_directory
from xsbackup.snapshots import postprocess
from xsbackup.web import users
from xsbackup.web.app import create_app, make_server

pytestmark = pytest.mark.integration
SN = "SHF00112233"
NEW, OLD, OTHER = "SHF0000NEW1", "SHF0000OLD1", "SHF000OTHER"
ROOT = os.geteuid() == 0


def sugar_datastore(base: Path, entries: int = 200) -> Path:
    """A version-6 Sugar datastore with every awkward case the issue lists."""
    base.mkdir(parents=True)
    (base / "version").write_text("6")
    (base / "index").mkdir()
    (base / "index" / "postlist.DB").write_bytes(os.urandom(2048))
    for i in range(entries):
        uid = f"{i:08x}-0000-4000-8000-{i:012x}"
        d = base / uid[:2] / uid
        (d / "metadata").mkdir(parents=True)
        (d / "data").write_bytes(os.urandom(500 + i * 10))
        (d / "metadata" / "title").write_text(f"Dibujo número {i} — ✏️ 日本")
        (d / "metadata" / "activity").write_text("org.laptop.Paint")
        (d / "metadata" / "mime_type").write_text("image/png")
        (d / "metadata" / "timestamp").write_text(str(1_700_000_000 + i))
        (d / "metadata" / "preview").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    odd = base / "odd"
    odd.mkdir()
    (odd / "empty").write_bytes(b"")
    (odd / "link-to-passwd").symlink_to("/etc/passwd")
    (odd / "relative-link").symlink_to("../version")
    (odd / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(odd / "suid", 0o4755)  # noqa: S103 - the fidelity case itself
    (odd / "new\nline").write_text("a newline in the name\n")
    (odd / os.fsdecode(b"bad-\xff\xfe-utf8")).write_text("invalid UTF-8 name\n")
    for p in base.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_600_000_000, 1_600_000_000 + hash(p.name) % 1000))
    return base


def fingerprint(root: Path) -> dict[str, tuple[object, ...]]:
    """bytes, mode, mtime and symlink target of every file and symlink."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, os.fsencode(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[os.fsdecode(rel)] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    body = fh.read()
                out[os.fsdecode(rel)] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns // 10**9,
                                         body)
            else:
                out[os.fsdecode(rel)] = ("dir", stat.S_IMODE(st.st_mode))
    return out


def ssh_cmd(sshd: Sshd, key: Path, user: str) -> list[str]:
    return [*sshd.ssh_base(key, user), "127.0.0.1"]


def push(server: Server, sshd: Sshd, serial: str, src: Path, volume: str) -> None:
    r = sshd.rsync(server.keys[serial], "-a", f"{src}/", f"127.0.0.1:{volume}/", user=serial)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())


@pytest.mark.parametrize("server", BACKENDS, indirect=True)
def test_round_trip_rsync_and_ssh_archive(server: Server, embedded: Sshd,  # noqa: F811
                                          tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = sugar_datastore(tmp_path / "datastore")
    expected = fingerprint(src)
    r = subprocess.run(["rsync", "-a", "-e", embedded.rsh(key, SN), f"{src}/",
                        "127.0.0.1:datastore-current"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    shutil.rmtree(src)  # the device is wiped

    pulled = tmp_path / "pulled"
    r = subprocess.run(["rsync", "-a", "-e", embedded.rsh(key, SN), "127.0.0.1:datastore-latest/",
                        f"{pulled}/"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert fingerprint(pulled) == expected

    untarred = tmp_path / "untarred"
    untarred.mkdir()
    ssh = subprocess.Popen([*ssh_cmd(embedded, key, SN), "archive --volume datastore"],
                           stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-p", "-C", str(untarred)], stdin=ssh.stdout,
                         capture_output=True, timeout=120)
    assert ssh.wait(timeout=60) == 0
    assert ssh.stdout is not None
    ssh.stdout.close()
    assert tar.returncode == 0, tar.stderr
    got = fingerprint(untarred)
    if not ROOT:  # tar cannot restore setuid for an unprivileged user
        expected = {k: v for k, v in expected.items() if not k.endswith("suid")}
        got = {k: v for k, v in got.items() if not k.endswith("suid")}
    assert got == expected


def test_zip_archive_of_a_subtree(server: Server, embedded: Sshd,  # noqa: F811
                                  tmp_path: Path) -> None:
    import zipfile

    key = server.add_client(SN)
    src = sugar_datastore(tmp_path / "ds", entries=3)
    push(server, embedded, SN, src, "documents")
    r = subprocess.run([*ssh_cmd(embedded, key, SN), "archive --format zip odd"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    zf = zipfile.ZipFile(io.BytesIO(r.stdout))
    names = set(zf.namelist())
    assert "empty" in names
    assert "new\nline" in names
    link = zf.getinfo("link-to-passwd")
    assert stat.S_ISLNK(link.external_attr >> 16)
    assert zf.read(link) == b"/etc/passwd"
    assert stat.S_IMODE(zf.getinfo("suid").external_attr >> 16) == 0o4755


@pytest.fixture
def three_clients(server: Server, embedded: Sshd,  # noqa: F811
                  tmp_path: Path) -> tuple[Server, Sshd]:
    for serial in (NEW, OLD, OTHER):
        server.add_client(serial)
        src = tmp_path / f"src-{serial}"
        src.mkdir()
        (src / "owner.txt").write_text(f"{serial}\n")
        push(server, embedded, serial, src, "documents")
    server.cli("clients", "alias", NEW, OLD)
    return server, embedded


def _ssh(sshd: Sshd, server: Server, serial: str,
         command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*ssh_cmd(sshd, server.keys[serial], serial), command],
                          capture_output=True, timeout=60)


def test_alias_matrix_rsync(three_clients: tuple[Server, Sshd], tmp_path: Path) -> None:
    server, sshd = three_clients
    out = tmp_path / "out"
    r = sshd.rsync(server.keys[NEW], "-a", f"127.0.0.1:clients/{OLD}/documents/latest/",
                   f"{out}/", user=NEW)
    assert r.returncode == 0, r.stderr
    assert (out / "owner.txt").read_text() == f"{OLD}\n"
    for reader, source in ((OLD, NEW), (OTHER, OLD), (OTHER, NEW)):
        res = _ssh(sshd, server, reader, "rsync --server --sender -logDtpre.iLsfxCIvu . "
                                         f"clients/{source}/documents/latest/")
        assert res.returncode == 52, (reader, source)
        assert res.stderr.decode().strip() == \
            f"xsbackup: {reader} may not read the snapshots of {source}"
    res = _ssh(sshd, server, NEW, f"rsync --server -logDtpre.iLsfxCIvu . clients/{OLD}/documents/")
    assert res.returncode == 40
    assert "read-only" in res.stderr.decode()


def test_alias_matrix_ssh_archive(three_clients: tuple[Server, Sshd]) -> None:
    server, sshd = three_clients
    res = _ssh(sshd, server, NEW, f"archive --from {OLD}")
    assert res.returncode == 0, res.stderr
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        member = tar.extractfile("owner.txt")
        assert member is not None
        assert member.read() == f"{OLD}\n".encode()
    for reader, source in ((OLD, NEW), (OTHER, OLD), (OTHER, NEW)):
        res = _ssh(sshd, server, reader, f"archive --from {source}")
        assert res.returncode == 52
        assert res.stdout == b""


@pytest.fixture
def web(server: Server) -> Iterator[str]:
    users.add_user(server.store, "teacher", "a long password", role="teacher")
    http = make_server(create_app(lambda: Context.open(server.settings())), "127.0.0.1", 0, 4)
    t = threading.Thread(target=http.run_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{http.effective_port}"
    finally:
        http.close()
        t.join(timeout=5)


def get(url: str) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url)
    token = base64.b64encode(b"teacher:a long password").decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_alias_matrix_http(three_clients: tuple[Server, Sshd], web: str) -> None:
    server, _ = three_clients
    old_id = server.store.snapshot_ids(OLD, "documents")[0]
    new_id = server.store.snapshot_ids(NEW, "documents")[0]
    code, body, headers = get(f"{web}/api/v1/clients/{NEW}/volumes/documents/snapshots/"
                              f"{old_id}/archive.tar?from={OLD}")
    assert code == 200
    assert headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member = tar.extractfile("owner.txt")
        assert member is not None
        assert member.read() == f"{OLD}\n".encode()
    for reader, source, sid in ((OLD, NEW, new_id), (OTHER, OLD, old_id),
                                (OTHER, NEW, new_id)):
        code, body, _ = get(f"{web}/api/v1/clients/{reader}/volumes/documents/snapshots/"
                            f"{sid}/archive.tar?from={source}")
        assert code == 403, (reader, source)
        assert b"may not read" in body
    code, body, _ = get(f"{web}/api/v1/clients/{NEW}/restore?volume=documents&from={OLD}")
    assert code == 200
    assert f"clients/{OLD}/documents/{old_id}/".encode() in body


@pytest.fixture
def evil_snapshot(server: Server, embedded: Sshd,  # noqa: F811
                  tmp_path: Path) -> tuple[Server, Sshd, str]:
    server.add_client(SN)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "essay.txt").write_text("mine\n")
    (src / "etc-link").symlink_to("/etc")
    (src / "passwd-link").symlink_to("/etc/passwd")
    push(server, embedded, SN, src, "documents")
    return server, embedded, server.store.snapshot_ids(SN, "documents")[0]


@pytest.mark.parametrize(("path", "code"), [
    ("../../../../etc/passwd", 403),
    ("docs/../../client.json", 403),
    ("/etc/passwd", 403),
    ("etc-link/passwd", 403),
    ("passwd-link", 403),
    ("docs/nothing.txt", 404),
], ids=["dotdot", "dotdot-inside", "absolute", "through-symlink", "symlink-itself", "absent"])
def test_http_file_refusals(evil_snapshot: tuple[Server, Sshd, str], web: str, path: str,
                            code: int) -> None:
    _, _, sid = evil_snapshot
    status, body, _ = get(f"{web}/api/v1/clients/{SN}/volumes/documents/snapshots/{sid}/"
                          f"file?path={urllib.request.quote(path)}")
    assert status == code
    assert b"root:" not in body


def test_http_file_served_with_type_and_name(evil_snapshot: tuple[Server, Sshd, str],
                                             web: str) -> None:
    _, _, sid = evil_snapshot
    status, body, headers = get(f"{web}/api/v1/clients/{SN}/volumes/documents/snapshots/{sid}/"
                                "file?path=docs/essay.txt")
    assert status == 200
    assert body == b"mine\n"
    assert headers["Content-Type"] == "text/plain"
    assert 'filename="essay.txt"' in headers["Content-Disposition"]


def test_ssh_archive_through_symlink_refused(evil_snapshot: tuple[Server, Sshd, str]) -> None:
    server, sshd, _ = evil_snapshot
    res = _ssh(sshd, server, SN, "archive etc-link")
    assert res.returncode == 53
    assert res.stdout == b""
    res = _ssh(sshd, server, SN, "archive ../..")
    assert res.returncode == 40


def test_absent_snapshot_is_a_clear_error(evil_snapshot: tuple[Server, Sshd, str],
                                          web: str) -> None:
    server, sshd, _ = evil_snapshot
    res = _ssh(sshd, server, SN, "archive --at 2001-01-01T000000Z")
    assert res.returncode == 51
    assert res.stderr.decode().strip() == "xsbackup: no snapshot 2001-01-01T000000Z of documents"
    status, _, _ = get(f"{web}/api/v1/clients/{SN}/volumes/documents/snapshots/"
                       "2001-01-01T000000Z/archive.tar")
    assert status == 404


def test_symlinked_snapshot_id_is_never_followed(three_clients: tuple[Server, Sshd],
                                                web: str, tmp_path: Path) -> None:
    """A symlink in snapshots/ named like an id (here the newest, pointing at another
    client's snapshot) is no snapshot: not listed, resolved, pulled, archived or served."""
    server, sshd = three_clients
    theirs = server.store.snapshots_dir(OTHER, "documents") / \
        server.store.snapshot_ids(OTHER, "documents")[0]
    (mine,) = server.store.snapshot_ids(NEW, "documents")
    planted = "2999-01-01T000000Z"
    (server.store.snapshots_dir(NEW, "documents") / planted).symlink_to(theirs)
    (server.store.volume_dir(NEW, "documents") / "latest").unlink()  # newest decides
    leak = OTHER.encode()

    res = _ssh(sshd, server, NEW, "list")
    assert res.returncode == 0, res.stderr
    assert planted.encode() not in res.stdout
    res = _ssh(sshd, server, NEW, f"archive --at {planted}")
    assert (res.returncode, res.stdout) == (51, b"")
    res = _ssh(sshd, server, NEW, "archive --at 2999-06-01T00:00:00Z")
    assert res.returncode == 0, res.stderr
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        member = tar.extractfile("owner.txt")
        assert member is not None
        assert member.read() == f"{NEW}\n".encode()
    res = _ssh(sshd, server, NEW, "rsync --server --sender -logDtpre.iLsfxCIvu . "
                                  f"documents/{planted}/")
    assert res.returncode == 51
    assert leak not in res.stdout
    out = tmp_path / "out"
    r = sshd.rsync(server.keys[NEW], "-a", "127.0.0.1:documents/latest/", f"{out}/", user=NEW)
    assert r.returncode == 0, r.stderr
    assert (out / "owner.txt").read_text() == f"{NEW}\n"

    base = f"{web}/api/v1/clients/{NEW}"
    for what in ("archive.tar", "file?path=owner.txt"):
        status, body, _ = get(f"{base}/volumes/documents/snapshots/{planted}/{what}")
        assert status == 404, what
        assert leak not in body
    status, body, _ = get(f"{base}/restore?volume=documents")
    assert status == 200
    assert f"documents/{mine}/".encode() in body


def test_snapshot_being_pruned_is_a_clear_error(evil_snapshot: tuple[Server, Sshd, str],
                                                web: str, tmp_path: Path) -> None:
    server, sshd, sid = evil_snapshot
    fd = lock_directory(server.store.snapshots_dir(SN, "documents") / sid, shared=False)
    try:
        res = _ssh(sshd, server, SN, "archive")
        assert res.returncode == 51
        assert "is being pruned" in res.stderr.decode()
        r = sshd.rsync(server.keys[SN], "-a", "127.0.0.1:documents/latest/",
                       f"{tmp_path}/x/", user=SN)
        assert r.returncode != 0
        assert "is being pruned" in r.stderr
        status, body, _ = get(f"{web}/api/v1/clients/{SN}/volumes/documents/snapshots/{sid}/"
                              "archive.tar")
        assert status == 404
        assert b"is being pruned" in body
    finally:
        os.close(fd)


def test_archiving_two_gigabytes_in_constant_memory(server: Server, web: str) -> None:
    """RSS of the serving process grows by less than 50 MB while it streams 2 GB."""
    server.add_client(SN)
    snap = server.store.snapshots_dir(SN, "big") / "2026-01-01T000000Z"
    snap.mkdir(parents=True)
    for i in range(4):  # sparse: 2 GB to read, no disk used
        with open(snap / f"part{i}.bin", "wb") as fh:
            fh.truncate(512 << 20)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    total = 0
    req = urllib.request.Request(f"{web}/api/v1/clients/{SN}/volumes/big/snapshots/"
                                 "2026-01-01T000000Z/archive.tar")
    req.add_header("Authorization",
                   "Basic " + base64.b64encode(b"teacher:a long password").decode())
    with urllib.request.urlopen(req, timeout=120) as resp:
        while chunk := resp.read(1 << 20):
            total += len(chunk)
            peak = max(peak, proc.memory_info().rss)
    assert total > 2 * (1 << 30)
    assert peak - base < 50 << 20, f"RSS grew by {(peak - base) >> 20} MB"


def test_journal_listing_and_bundles_over_http(server: Server, embedded: Sshd,  # noqa: F811
                                               web: str, tmp_path: Path) -> None:
    import json
    import zipfile

    server.add_client(SN)
    v1 = sugar_datastore(tmp_path / "v1", entries=5)
    push(server, embedded, SN, v1, "datastore")
    v0 = tmp_path / "v0"
    (v0 / "store" / "preview").mkdir(parents=True)
    (v0 / "store" / "old-uid-1").write_bytes(b"old drawing")
    (v0 / "store" / "old-uid-1.metadata").write_text(
        json.dumps({"title": "Mi casa", "activity": "org.laptop.Paint", "preview": "x"}))
    (v0 / "store" / "preview" / "old-uid-1").write_bytes(b"\x89PNG old")
    push(server, embedded, SN, v0, "olddatastore")
    for volume, uid, title in (("datastore", "00000002-0000-4000-8000-000000000002",
                                "Dibujo número 2 — ✏️ 日本"),
                               ("olddatastore", "old-uid-1", "Mi casa")):
        (sid,) = server.store.snapshot_ids(SN, volume)
        base = f"{web}/api/v1/clients/{SN}/volumes/{volume}/snapshots/{sid}"
        code, body, _ = get(f"{base}/journal?q={urllib.request.quote(title)}")
        assert code == 200
        listing = json.loads(body)
        assert [e["uid"] for e in listing["entries"]] == [uid]
        assert listing["entries"][0]["title"] == title
        code, body, headers = get(f"{base}/journal/{uid}.xoj")
        assert code == 200
        assert headers["Content-Type"] == "application/vnd.olpc-journal-entry"
        zf = zipfile.ZipFile(io.BytesIO(body))
        assert sorted(zf.namelist()) == sorted([f"{uid}/_metadata.json", f"{uid}/{uid}",
                                                f"{uid}/preview/{uid}"])
        meta = json.loads(zf.read(f"{uid}/_metadata.json"))
        assert meta["title"] == title
        assert "preview" not in meta
        assert zf.read(f"{uid}/preview/{uid}").startswith(b"\x89PNG")
    code, _, _ = get(f"{base}/journal/no-such-entry.xoj")
    assert code == 404


def test_manifest_carries_non_utf8_names_exactly(server: Server, embedded: Sshd,  # noqa: F811
                                                 tmp_path: Path) -> None:
    import json

    key = server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / os.fsdecode(b"bad-\xff-name")).write_bytes(b"x")
    (src / "link").symlink_to("target")
    push(server, embedded, SN, src, "documents")
    r = subprocess.run([*ssh_cmd(embedded, key, SN), "manifest"], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {os.fsencode(row["path"]) for row in rows} == {b"bad-\xff-name", b"link"}
    (link,) = (row for row in rows if row["path"] == "link")
    assert (link["type"], link["target"]) == ("symlink", "target")
