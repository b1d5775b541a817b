"""The HTTP service under abuse, through a real waitress server on loopback: connection
floods and unread downloads, password guessing over HTTP Basic, login CSRF, malformed
parameters, odd file names, symlinked snapshot ids, a corrupt registry record, and the
open health check."""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import socket
import time
import urllib.parse
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Server
from tests.integration.test_http import (
    BASE_CONFIG,
    PASSWORD,
    SN,
    Reply,
    Web,
    rsa_blob,
    serving,
)
from tests.integration.test_restore import sugar_datastore
from tests.integration.test_webui import push
from xsbackup.web import users
from xsbackup.web.pages import human_bytes

pytestmark = pytest.mark.integration
BIG = 48 << 20  # well past what waitress buffers for one connection (16 MiB) and loopback's
WAIT = 10.0     # a client timeout, never a speed assertion


def basic(user: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def snapshot_base(web: Web, volume: str = "documents", serial: str = SN) -> str:
    (sid,) = web.server.store.snapshot_ids(serial, volume)[-1:]
    return f"/api/v1/clients/{serial}/volumes/{volume}/snapshots/{sid}"


@pytest.fixture
def people(server: Server) -> None:
    users.add_user(server.store, "alice", PASSWORD, "admin")
    users.add_user(server.store, "bob", PASSWORD, "teacher")


@contextlib.contextmanager
def web_with(server: Server, config: str = "") -> Iterator[Web]:
    server.configure(BASE_CONFIG + config)
    with serving(server) as w:
        yield w


def session(web: Web, user: str = "alice") -> dict[str, str]:
    r = web.request("POST", "/api/v1/session", headers={"Content-Type": "application/json"},
                    body=orjson.dumps({"user": user, "password": PASSWORD}))
    assert r.status == 200, r.body
    return {"Cookie": r.headers["Set-Cookie"].split(";")[0]}


# ---- 1. connection floods and unread downloads ---------------------------------------


class TimeoutTransport(xmlrpc.client.Transport):
    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = WAIT
        return conn


def half_open(port: int, count: int) -> list[socket.socket]:
    """Connections that send part of a request's head, then stall."""
    out = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        s.sendall(f"GET /backup/1/available/{SN} HTTP/1.1\r\nHost: x\r\n".encode())
        out.append(s)
    return out


def unread_download(port: int, path: str, user: str) -> socket.socket:
    """A download whose body is never read (a tiny receive buffer, so it stalls soon)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(WAIT)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic(user)}\r\n\r\n"
              .encode())
    return s


def status_of(s: socket.socket) -> tuple[int, bytes]:
    """The status code of the answer and the start of its head (0: none within WAIT)."""
    try:
        head = s.recv(512)
    except TimeoutError:
        return 0, b""
    return int(head[9:12]), head


def big_snapshot(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "big"
    src.mkdir()
    with (src / "zeros.bin").open("wb") as fh:
        fh.truncate(BIG)
    push(server, SN, src)


def can_still_serve(web: Web, tmp_path: Path, new_serial: str) -> None:
    """An availability check and an XML-RPC registration, each with a 10 s timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=WAIT)
    try:
        conn.request("GET", f"/backup/1/available/{SN}")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    blob = rsa_blob(tmp_path, f"k-{new_serial}")
    with xmlrpc.client.ServerProxy(web.url, transport=TimeoutTransport()) as proxy:
        reply: Any = proxy.register(new_serial, "", "", blob)
    assert reply["success"] == "OK"


def test_floods_and_unread_downloads_leave_availability_and_registration(
        server: Server, tmp_path: Path) -> None:
    big_snapshot(server, tmp_path)
    names = [f"user{i}" for i in range(5)]
    for name in names:
        users.add_user(server.store, name, PASSWORD, "teacher")
    socks: list[socket.socket] = []
    with web_with(server) as web:
        try:
            socks += half_open(web.port, 150)
            path = f"{snapshot_base(web)}/archive.tar"
            downloads = [unread_download(web.port, path, n) for n in names for _ in (1, 2)]
            socks += downloads
            answers = [status_of(s) for s in downloads]
            can_still_serve(web, tmp_path, "SHF00000777")
            # At most http.max_downloads stream at once; the rest are told when to retry.
            settings = server.settings().http
            assert sum(1 for code, _ in answers if code == 200) <= settings.max_downloads
            for code, head in answers:
                assert code in (200, 429, 503), head
                if code != 200:
                    assert b"\r\nRetry-After: " in head
        finally:
            for s in socks:
                s.close()


def download_when_free(web: Web, user: str) -> Reply:
    """A file download, asked for again while ``user`` has no free download slot (for at
    most a minute: the slot comes back when the server is done with the other one)."""
    deadline = time.monotonic() + 60
    while (r := web.get(f"{snapshot_base(web)}/file?path=zeros.bin", user=user)).status \
            == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    return r


@contextlib.contextmanager
def alice_stalls(server: Server, tmp_path: Path,
                 config: str) -> Iterator[tuple[Web, socket.socket]]:
    """A server with a 48 MiB snapshot that alice (admin) downloads as tar without ever
    reading it; bob (teacher) is idle."""
    big_snapshot(server, tmp_path)
    users.add_user(server.store, "alice", PASSWORD, "admin")
    users.add_user(server.store, "bob", PASSWORD, "teacher")
    with web_with(server, config) as web:
        stalled = unread_download(web.port, f"{snapshot_base(web)}/archive.tar", "alice")
        try:
            assert status_of(stalled)[0] == 200
            yield web, stalled
        finally:
            stalled.close()


def test_downloads_per_user_are_bounded(server: Server, tmp_path: Path) -> None:
    with alice_stalls(server, tmp_path, "[http]\ndownloads_per_user = 1\n") as (web, first):
        r = web.get(f"{snapshot_base(web)}/archive.tar", user="alice")
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert set(r.json()) == {"error"}
        # ...whatever is downloaded
        r = web.get(f"{snapshot_base(web)}/file?path=zeros.bin", user="alice")
        assert r.status == 429
        # another user is not held back
        ok = web.get(f"{snapshot_base(web)}/file?path=zeros.bin", user="bob")
        assert (ok.status, len(ok.body)) == (200, BIG)
        first.close()  # once the first download is gone, alice may download again
        assert download_when_free(web, "alice").status == 200


def test_a_download_nobody_reads_is_dropped(server: Server, tmp_path: Path) -> None:
    """A client that stops reading a response for ``channel_timeout`` seconds is cut off,
    and its download slot is free again."""
    config = "[http]\ndownloads_per_user = 1\nchannel_timeout = 2\n"
    with alice_stalls(server, tmp_path, config) as (web, _):
        assert download_when_free(web, "alice").status == 200


def test_closing_the_server_ends_unread_downloads(server: Server, tmp_path: Path) -> None:
    """``serve``'s shutdown must not wait forever on a worker blocked by a client that
    reads nothing (nor leave its producer thread running, which hangs the exit)."""
    big_snapshot(server, tmp_path)
    users.add_user(server.store, "alice", PASSWORD, "admin")
    with web_with(server) as web:
        stalled = unread_download(web.port, f"{snapshot_base(web)}/archive.tar", "alice")
        assert status_of(stalled)[0] == 200
        gate = web.app.downloads
        assert gate.running == 1
        time.sleep(2)  # time for its worker to fill waitress's buffer and block on it
    try:
        assert gate.running == 0
    finally:
        stalled.close()


def test_head_requests_give_their_download_slot_back(journal_web: Web) -> None:
    """A HEAD of a UI download starts (and must end) a stream nobody iterates."""
    jar = session(journal_web)
    ui = snapshot_base(journal_web, "odd").replace("/api/v1/", "/ui/")
    gate = journal_web.app.downloads
    for _ in range(3):  # one more than downloads_per_user
        r = journal_web.request("HEAD", f"{ui}/archive.tar", headers=jar)
        assert (r.status, r.body) == (200, b"")
        deadline = time.monotonic() + 30  # given back once the server is done with it
        while gate.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.running == 0


def test_a_request_trickled_in_is_cut_off(server: Server) -> None:
    """Slowloris: one byte at a time keeps a connection busy, never idle; the whole
    request must arrive within ``channel_timeout`` seconds."""
    with web_with(server, "[http]\nchannel_timeout = 2\n") as web:
        s = socket.create_connection(("127.0.0.1", web.port), timeout=WAIT)
        closed = False
        try:
            deadline = time.monotonic() + 60
            for byte in b"GET /backup/1/available/" + b"X" * 10_000:
                try:
                    s.sendall(bytes([byte]))
                    s.settimeout(0.2)
                    if s.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                if time.monotonic() > deadline:
                    break
        finally:
            s.close()
        assert closed


# ---- 2. one throttle for every way of presenting a password --------------------------


LOCKOUT = "[ui]\nmax_login_failures = 3\nlogin_lockout_minutes = 1.0\n"


@pytest.mark.usefixtures("people")
@pytest.mark.parametrize("path", ["/api/v1/clients", "/metrics"])
def test_basic_auth_is_throttled(server: Server, path: str) -> None:
    with web_with(server, LOCKOUT) as web:
        for i in range(3):
            assert web.get(path, user="alice", password=f"guess {i}").status == 401
        r = web.get(path, user="alice")  # right, but too late
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.json() == {"error": r.json()["error"]}
        assert "too many failed logins" in r.json()["error"]
        # the address is locked out too, whatever the name...
        assert web.get(path, user="bob").status == 429
        # ...and the JSON sign-in shares the counters
        r = web.request("POST", "/api/v1/session", headers={"Content-Type": "application/json"},
                        body=orjson.dumps({"user": "bob", "password": PASSWORD}))
        assert r.status == 429
        assert "Set-Cookie" not in r.headers


@pytest.mark.usefixtures("people")
def test_failed_json_sign_ins_lock_basic_auth_too(server: Server) -> None:
    with web_with(server, LOCKOUT) as web:
        for i in range(3):
            r = web.request("POST", "/api/v1/session",
                            headers={"Content-Type": "application/json"},
                            body=orjson.dumps({"user": "alice", "password": f"guess {i}"}))
            assert r.status == 401
        assert web.get("/metrics", user="alice").status == 429
        assert web.get("/api/v1/clients", user="alice").status == 429


@pytest.mark.usefixtures("people")
def test_a_repeated_wrong_basic_password_counts_once(server: Server) -> None:
    """A scraper left with an old password is one failure, not a lockout per scrape."""
    with web_with(server, LOCKOUT) as web:
        for _ in range(10):
            assert web.get("/metrics", user="bob", password="old password").status == 401
        assert web.get("/metrics", user="bob").status == 200


# ---- 3. login CSRF ---------------------------------------------------------------------


@pytest.mark.usefixtures("people")
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_session_sign_in_needs_a_json_content_type(server: Server,
                                                   content_type: str | None) -> None:
    """What a cross-site form can send (no CORS preflight) never signs anyone in."""
    with web_with(server) as web:
        # the classic text/plain trick: the form field's name carries the JSON
        body = b'{"user": "alice", "password": "' + PASSWORD.encode() + b'", "x": "="}'
        headers = {"Content-Type": content_type} if content_type else {}
        r = web.request("POST", "/api/v1/session", body=body, headers=headers)
        assert r.status == 415
        assert r.json() == {"error": "the body must be JSON (Content-Type: application/json)"}
        assert "Set-Cookie" not in r.headers
        ok = web.request("POST", "/api/v1/session", body=body,
                         headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status == 200
        assert ok.headers["Set-Cookie"].startswith("xsbackup_session=")


@pytest.mark.usefixtures("people")
def test_session_sign_in_from_another_site_is_refused(server: Server) -> None:
    with web_with(server) as web:
        r = web.request("POST", "/api/v1/session",
                        body=orjson.dumps({"user": "alice", "password": PASSWORD}),
                        headers={"Content-Type": "application/json",
                                 "Sec-Fetch-Site": "cross-site"})
        assert r.status == 403
        assert "Set-Cookie" not in r.headers


# ---- 4. robustness ----------------------------------------------------------------------


@pytest.fixture
def journal_web(server: Server, tmp_path: Path) -> Iterator[Web]:
    server.add_client(SN)
    users.add_user(server.store, "alice", PASSWORD, "admin")
    push(server, SN, sugar_datastore(tmp_path / "ds", entries=3), "datastore")
    odd = tmp_path / "odd"
    (odd / os.fsdecode(b"dir-\xff")).mkdir(parents=True)
    (odd / os.fsdecode(b"dir-\xff") / os.fsdecode(b"caf\xe9-latin1.txt")).write_bytes(b"l1\n")
    (odd / "ñandú.txt").write_bytes(b"utf-8 name\n")
    push(server, SN, odd, "odd")
    with web_with(server) as web:
        yield web


@pytest.mark.parametrize("query", ["offset=abc", "limit=-5", "offset=-1", "limit=0",
                                   "limit=1e3", "offset=%FF", "limit=99999999999999999999x"])
def test_journal_paging_parameters_are_checked(journal_web: Web, query: str) -> None:
    r = journal_web.get(f"{snapshot_base(journal_web, 'datastore')}/journal?{query}",
                        user="alice")
    assert r.status == 400, r.body
    assert list(r.json()) == ["error"]
    assert "\n" not in r.json()["error"]


def test_journal_paging_still_pages(journal_web: Web) -> None:
    base = f"{snapshot_base(journal_web, 'datastore')}/journal"
    page = journal_web.get(f"{base}?offset=1&limit=1", user="alice").json()
    assert (page["offset"], page["limit"], page["more"], len(page["entries"])) == \
        (1, 1, True, 1)
    assert journal_web.get(f"{base}?limit=5000", user="alice").json()["limit"] == 1000


def test_api_downloads_names_that_are_not_utf8(journal_web: Web) -> None:
    """``?path=`` is the name's bytes percent-encoded, as in the web UI's links."""
    base = snapshot_base(journal_web, "odd")
    r = journal_web.get(f"{base}/file?path=dir-%FF/caf%E9-latin1.txt", user="alice")
    assert (r.status, r.body) == (200, b"l1\n")
    assert "filename*=UTF-8''caf%E9-latin1.txt" in r.headers["Content-Disposition"]
    r = journal_web.get(f"{base}/file?path={urllib.parse.quote('ñandú.txt')}", user="alice")
    assert (r.status, r.body) == (200, b"utf-8 name\n")
    r = journal_web.get(f"{base}/archive.tar?path=dir-%FF", user="alice")
    assert r.status == 200
    assert b"caf\xe9-latin1.txt" in r.body
    # the web UI takes the very same link
    ui = base.replace("/api/v1/", "/ui/")
    r = journal_web.get(f"{ui}/file?path=dir-%FF/caf%E9-latin1.txt",
                        headers=session(journal_web))
    assert (r.status, r.body) == (200, b"l1\n")


def test_a_symlinked_snapshot_id_is_not_found_anywhere(journal_web: Web) -> None:
    web = journal_web
    store = web.server.store
    (real,) = store.snapshot_ids(SN, "datastore")
    link = "2031-01-01T000000Z"
    (store.snapshots_dir(SN, "datastore") / link).symlink_to(real)
    api = f"/api/v1/clients/{SN}/volumes/datastore/snapshots/{link}"
    uid = "00000001-0000-4000-8000-000000000001"
    paths = [api, f"{api}/archive.tar", f"{api}/archive.zip", f"{api}/file?path=version",
             f"{api}/journal", f"{api}/journal/{uid}.xoj",
             f"/api/v1/clients/{SN}/restore?volume=datastore&at={link}"]
    for path in paths:
        r = web.get(path, user="alice")
        assert r.status == 404, (path, r.status, r.body)
    listed = web.get(f"/api/v1/clients/{SN}/volumes/datastore/snapshots", user="alice").json()
    assert [s["id"] for s in listed] == [real]
    # the web UI, signed in
    jar = session(web)
    ui = f"/ui/clients/{SN}/volumes/datastore/snapshots/{link}"
    for path in (ui, f"{ui}/browse", f"{ui}/file?path=version", f"{ui}/archive.zip",
                 f"{ui}/archive.tar", f"{ui}/journal", f"{ui}/journal/{uid}/preview",
                 f"{ui}/journal/{uid}.xoj"):
        r = web.get(path, headers=jar)
        assert r.status == 404, (path, r.status)
    page = web.get(f"/ui/clients/{SN}", headers=jar)
    assert page.status == 200
    assert link not in page.body.decode()


def test_one_corrupt_client_record_breaks_only_that_client(
        server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = "SHF00000GOOD", "SHF000000BAD"
    server.add_client(good, "Ana")
    server.add_client(bad, "Beto")
    users.add_user(server.store, "alice", PASSWORD, "admin")
    (server.store.client_dir(bad) / "client.json").write_text("{not json")
    caplog.set_level(logging.ERROR)
    with web_with(server) as web:
        rows = web.get("/api/v1/clients", user="alice")
        assert rows.status == 200
        by_serial = {r["serial"]: r for r in rows.json()}
        assert by_serial[good]["nickname"] == "Ana"
        assert by_serial[good]["unreadable"] is False
        assert by_serial[bad]["unreadable"] is True
        assert by_serial[bad]["error"] == "the registry record is unreadable; see the log"
        assert f"client={bad}" in caplog.text
        jar = session(web)
        page = web.get("/ui/", headers=jar)
        assert page.status == 200
        text = page.body.decode()
        assert f'href="/ui/clients/{good}"' in text
        assert bad in text
        assert "registry record is unreadable" in text
        assert web.get(f"/ui/clients/{good}", headers=jar).status == 200
        assert web.get(f"/backup/1/available/{good}").status == 200


# ---- 5. operations -----------------------------------------------------------------------


def test_latest_is_a_snapshot_id_in_the_api(journal_web: Web) -> None:
    web = journal_web
    (sid,) = web.server.store.snapshot_ids(SN, "odd")
    base = f"/api/v1/clients/{SN}/volumes/odd/snapshots"
    one = web.get(f"{base}/latest", user="alice")
    assert one.status == 200
    assert (one.json()["id"], one.json()["latest"]) == (sid, True)
    r = web.get(f"{base}/latest/file?path={urllib.parse.quote('ñandú.txt')}", user="alice")
    assert (r.status, r.body) == (200, b"utf-8 name\n")
    r = web.get(f"{base}/latest/archive.zip", user="alice")
    assert r.status == 200
    assert f"{SN}-odd-{sid}.zip" in r.headers["Content-Disposition"]
    ds = f"/api/v1/clients/{SN}/volumes/datastore/snapshots/latest/journal"
    assert len(web.get(ds, user="alice").json()["entries"]) == 3
    assert web.get(f"/api/v1/clients/{SN}/volumes/photos/snapshots/latest",
                   user="alice").status == 404


@pytest.mark.usefixtures("people")
def test_health_is_open_and_says_nothing_else(server: Server) -> None:
    server.add_client(SN, "Ana")
    with web_with(server) as web:
        r = web.get("/api/v1/health")
        assert r.status == 200
        assert r.json() == {"status": "ok"}
        assert "WWW-Authenticate" not in r.headers
        server.cli("maintenance", "on")
        assert web.get("/api/v1/health").json() == {"status": "degraded"}
        # with credentials, the details (as before)
        detail = web.get("/api/v1/health", user="alice").json()
        assert detail["status"] == "degraded"
        assert detail["maintenance"] is True
        assert "version" in detail
        assert web.get("/api/v1/health", user="alice", password="wrong").status == 401


def test_sizes_are_iec() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 10 * 1024 ** 2, 3 * 1024 ** 3,
                                     5 * 1024 ** 4)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "10.0 MiB", "3.0 GiB", "5.0 TiB"]
    assert human_bytes(None) == "—"
