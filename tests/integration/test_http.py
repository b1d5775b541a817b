"""The HTTP service through a real waitress server on loopback: ds-backup's availability
check, OLPC registration over XML-RPC, the authenticated JSON API and /metrics."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import re
import stat
import struct
import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, local_push
from xsbackup import counters
from xsbackup.clients import registration
from xsbackup.clients.registry import Registry
from xsbackup.context import Context
from xsbackup.snapshots import postprocess
from xsbackup.store import init_root
from xsbackup.web import users
from xsbackup.web.app import WebApp, create_app, make_server
from xsbackup.web.sessions import SessionKeys

pytestmark = pytest.mark.integration
SN = "SHF00112233"
PASSWORD = "correct horse battery"
# The tests own their load and disk limits: a busy CI machine must not turn a 200 into 503.
BASE_CONFIG = "[admission]\nmax_load = 1000.0\nmax_blocks_pct = 100.0\nmax_inodes_pct = 100.0\n"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json"
        return orjson.loads(self.body)


@dataclass
class Web:
    server: Server
    port: int
    app: WebApp

    def counters(self) -> dict[str, float]:
        self.app.flush_counters()  # availability counts are batched for up to a second
        return counters.read(self.server.store)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(self, extra: str = "") -> None:
        self.server.configure(BASE_CONFIG + extra)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, user: str | None = None,
                password: str = PASSWORD) -> Reply:
        hdrs = dict(headers or {})
        if user is not None:
            cred = base64.b64encode(f"{user}:{password}".encode()).decode()
            hdrs["Authorization"] = f"Basic {cred}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def register(self, *args: Any, path: str = "/") -> Any:
        """One XML-RPC call, as Sugar makes it (a fresh proxy, closed afterwards)."""
        with xmlrpc.client.ServerProxy(f"{self.url}{path}", allow_none=True) as proxy:
            return proxy.register(*args)


def contexts(server: Server) -> Callable[[], Context]:
    """What ``serve`` hands the app: the current Context, asked for on every request
    (here read afresh each time, so a test's configuration change applies at once)."""
    return lambda: Context.open(server.settings())


@contextlib.contextmanager
def serving(server: Server, port: int = 0) -> Iterator[Web]:
    """A new application and waitress server over ``server``'s state root."""
    app = create_app(contexts(server))
    srv = make_server(app, "127.0.0.1", port, 8)
    thread = threading.Thread(target=srv.run_forever, name="http-test", daemon=True)
    thread.start()
    try:
        yield Web(server, srv.effective_port, app)
    finally:
        srv.close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture
def web(server: Server) -> Iterator[Web]:
    server.configure(BASE_CONFIG)
    with serving(server) as w:
        yield w


def rsa_blob(tmp_path: Path, name: str) -> str:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "",
                    "-f", str(key)], check=True)
    return Path(f"{key}.pub").read_text().split()[1]


def dsa_blob() -> str:
    raw = struct.pack(">I", 7) + b"ssh-dss" + b"\x00\x00\x00\x01\x01" * 4
    return base64.b64encode(raw).decode()


def authorized_keys(server: Server) -> str:
    return (server.root / "ssh" / "authorized_keys").read_text()


# ---- availability --------------------------------------------------------------------


def test_availability_answers(web: Web) -> None:
    web.server.add_client(SN)
    web.server.add_client("SHF00000099")
    web.server.cli("clients", "disable", "SHF00000099")
    web.configure("[availability]\nwindow_count = 2\n")
    first = web.get(f"/backup/1/available/{SN}")
    assert (first.status, first.body) == (200, b"")
    assert first.headers["Content-Length"] == "0"
    for path in ("/backup/1/available/SHF99999999",          # unknown
                 "/backup/1/available/SHF-1234",              # malformed
                 "/backup/1/available/" + "A" * 65,           # too long
                 "/backup/1/available/%2e%2e",                # traversal
                 f"/backup/1/available/{SN}/extra",
                 "/backup/1/available/SHF00000099"):          # disabled
        r = web.get(path)
        assert (r.status, r.body) == (403, b""), path
    r = web.request("POST", f"/backup/1/available/{SN}")
    assert (r.status, r.body, r.headers["Allow"]) == (405, b"", "GET")
    # Surrounding whitespace is stripped, as ds-backup's SN check does.
    assert web.get(f"/backup/1/available/%20{SN}%20").status == 200
    seen = web.counters()
    assert seen['admissions{path="http",reason="",result="granted"}'] == 2
    assert seen['admissions{path="http",reason="unknown",result="refused"}'] == 1
    assert seen['admissions{path="http",reason="malformed",result="refused"}'] == 4
    assert seen['admissions{path="http",reason="disabled",result="refused"}'] == 1


def test_window_full_gives_503_and_reservation_repeats_200(web: Web) -> None:
    for sn in ("SHF00000001", "SHF00000002", "SHF00000003"):
        Registry(web.server.store).add(sn, None)
    web.configure("[availability]\nwindow_count = 2\nwindow_minutes = 5\n")
    assert web.get("/backup/1/available/SHF00000001").status == 200
    # Asking again within the reservation is 200 without taking a second place...
    assert web.get("/backup/1/available/SHF00000001").status == 200
    assert web.get("/backup/1/available/SHF00000001").status == 200
    assert web.get("/backup/1/available/SHF00000002").status == 200
    # ...so exactly two places are taken and the third client is told to come back.
    busy = web.get("/backup/1/available/SHF00000003")
    assert (busy.status, busy.body) == (503, b"")
    assert int(busy.headers["Retry-After"]) in range(1, 302)
    assert sorted(os.listdir(web.server.root / "admissions")) == ["SHF00000001", "SHF00000002"]
    assert web.get("/backup/1/available/SHF00000001").status == 200
    # A configuration change (what SIGHUP reloads) applies to the next request.
    web.configure("[availability]\nwindow_count = 3\n")
    assert web.get("/backup/1/available/SHF00000003").status == 200


def test_maintenance_refuses_with_retry_after(web: Web) -> None:
    Registry(web.server.store).add(SN, None)
    web.server.cli("maintenance", "on")
    r = web.get(f"/backup/1/available/{SN}")
    assert (r.status, r.body, r.headers["Retry-After"]) == (503, b"", "300")
    assert web.counters()[
        'admissions{path="http",reason="maintenance",result="refused"}'] == 1


def test_thundering_herd_admits_exactly_the_window(web: Web) -> None:
    serials = [f"SHF{i:08d}" for i in range(200)]
    registry = Registry(web.server.store)
    for sn in serials:
        registry.add(sn, None)
    # Every serial here is new; let them have the whole window (see new_per_window).
    web.configure("[availability]\nwindow_count = 10\nnew_per_window = 10\n")

    def ask(sn: str) -> tuple[int, str | None, bytes]:
        r = web.get(f"/backup/1/available/{sn}")
        return r.status, r.headers["Retry-After"], r.body

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(ask, serials))
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == 10
    assert statuses.count(503) == 190
    assert all(body == b"" for _, _, body in results)
    assert all(int(ra) >= 1 for s, ra, _ in results if s == 503 and ra is not None)
    assert sum(1 for s, ra, _ in results if s == 503 and ra is not None) == 190
    granted = sorted(sn for sn, (s, _, _) in zip(serials, results, strict=True) if s == 200)
    assert sorted(os.listdir(web.server.root / "admissions")) == granted
    seen = web.counters()
    assert seen['admissions{path="http",reason="",result="granted"}'] == 10
    assert seen['admissions{path="http",reason="window",result="refused"}'] == 190


# ---- registration ----------------------------------------------------------------------


def test_register_new_device_like_sugar(web: Web, tmp_path: Path) -> None:
    blob = rsa_blob(tmp_path, "owner.key")
    reply = web.register(SN, "Ana", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", blob)
    assert reply == {"success": "OK", "backupurl": f"{SN}@127.0.0.1:backup",
                     "jabberserver": "127.0.0.1"}
    client = Registry(web.server.store).get(SN)
    assert (client.nickname, client.uuid) == ("Ana", "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    assert [(k.type, k.blob, k.status) for k in client.keys] == [("ssh-rsa", blob, "active")]
    line = next(ln for ln in authorized_keys(web.server).splitlines() if blob in ln)
    assert line.startswith('restrict,command="')
    assert f"ssh-command --client {SN}" in line
    # Same serial, same key: idempotent, and the nickname follows the device.
    again = web.register(f" {SN}\n", "Ana B", "", blob)
    assert again == reply
    client = Registry(web.server.store).get(SN)
    assert (client.nickname, len(client.keys)) == ("Ana B", 1)
    assert authorized_keys(web.server).count(blob) == 1
    # The device may send the blob with a trailing comment; the type prefix is optional.
    assert web.register(SN, "", "", f"{blob} ana@xo")["success"] == "OK"
    assert web.register(SN, "", "", f"ssh-rsa {blob}")["success"] == "OK"
    assert len(Registry(web.server.store).get(SN).keys) == 1


def test_register_uses_public_host(web: Web, tmp_path: Path) -> None:
    web.configure('[server]\npublic_host = "schoolserver.lan"\n')
    reply = web.register(SN, "", "", rsa_blob(tmp_path, "k"))
    assert reply == {"success": "OK", "backupurl": f"{SN}@schoolserver.lan:backup",
                     "jabberserver": "schoolserver.lan"}


def test_new_key_waits_for_approval(web: Web, tmp_path: Path) -> None:
    old = rsa_blob(tmp_path, "old")
    new = rsa_blob(tmp_path, "new")
    assert web.register(SN, "", "", old)["success"] == "OK"
    # A reflashed device (or an impostor): the default new_key policy is approve.
    pending_reply = web.register(SN, "", "", new)
    assert pending_reply == {"success": "PENDING", "error": "key awaiting administrator approval"}
    assert web.register(SN, "", "", new) == pending_reply  # still waiting, not doubled
    assert new not in authorized_keys(web.server)
    assert old in authorized_keys(web.server)
    waiting = registration.pending(Registry(web.server.store))
    assert [(r.serial, r.key.blob, r.key.status) for r in waiting] == [(SN, new, "pending")]
    rows = orjson.loads(web.server.cli("clients", "pending", "--json").stdout)
    assert [(r["serial"], r["type"], r["status"]) for r in rows] == [(SN, "ssh-rsa", "pending")]
    out = web.server.cli("clients", "approve", SN).stdout
    assert out == f"approved: {SN} now has 1 active key(s) (ssh-rsa)\n"
    keys = authorized_keys(web.server)
    assert new in keys
    assert old not in keys  # the reflashed device's old key is retired
    assert registration.pending(Registry(web.server.store)) == []
    assert web.register(SN, "", "", new)["success"] == "OK"
    with pytest.raises(registration.NothingPending):
        registration.approve(Registry(web.server.store), SN)


def test_approve_keep_old_and_reject(web: Web, tmp_path: Path) -> None:
    a, b, c = (rsa_blob(tmp_path, n) for n in ("a", "b", "c"))
    assert web.register(SN, "", "", a)["success"] == "OK"
    assert web.register(SN, "", "", b)["success"] == "PENDING"
    registration.approve(Registry(web.server.store), SN, keep_old=True)
    keys = authorized_keys(web.server)
    assert a in keys
    assert b in keys
    assert web.register(SN, "", "", c)["success"] == "PENDING"
    out = web.server.cli("clients", "reject", SN).stdout
    assert out == f"rejected 1 pending key(s) of {SN}\n"
    again = web.server.cli("clients", "reject", SN, check=False)
    assert again.exit_code == registration.NothingPending.exit_code
    assert [k.blob for k in Registry(web.server.store).get(SN).keys] == [a, b]
    assert c not in authorized_keys(web.server)


def test_new_serial_under_approve_policy(web: Web, tmp_path: Path) -> None:
    web.configure('[registration]\nnew_serial = "approve"\n')
    blob = rsa_blob(tmp_path, "k")
    assert web.register(SN, "Ana", "", blob) == \
        {"success": "PENDING", "error": "key awaiting administrator approval"}
    assert not Registry(web.server.store).exists(SN)  # nothing changes before approval
    assert [r.key.blob for r in registration.pending(Registry(web.server.store))] == [blob]
    assert not (web.server.root / "ssh" / "authorized_keys").exists()  # nothing written
    registration.approve(Registry(web.server.store), SN)
    assert blob in authorized_keys(web.server)
    assert web.register(SN, "Ana", "", blob)["success"] == "OK"


def test_closed_policies_refuse(web: Web, tmp_path: Path) -> None:
    web.configure('[registration]\nnew_serial = "closed"\nnew_key = "closed"\n')
    blob = rsa_blob(tmp_path, "k")
    reply = web.register(SN, "", "", blob)
    assert reply["success"] == "DENIED"
    assert "does not accept new devices" in reply["error"]
    assert not Registry(web.server.store).exists(SN)
    web.server.add_client(SN)
    reply = web.register(SN, "", "", blob)
    assert reply["success"] == "DENIED"
    assert "a different key is already registered" in reply["error"]
    assert blob not in authorized_keys(web.server)
    assert len(Registry(web.server.store).get(SN).keys) == 1


def test_new_key_open_policy_adds_active_key(web: Web, tmp_path: Path) -> None:
    web.configure('[registration]\nnew_key = "open"\n')
    a, b = rsa_blob(tmp_path, "a"), rsa_blob(tmp_path, "b")
    assert web.register(SN, "", "", a)["success"] == "OK"
    assert web.register(SN, "", "", b)["success"] == "OK"
    keys = authorized_keys(web.server)
    assert a in keys
    assert b in keys


def test_dsa_key_is_stored_but_reported_unsupported(web: Web) -> None:
    reply = web.register(SN, "old xo", "", dsa_blob())
    assert reply["success"] == "UNSUPPORTED_KEY"
    assert "ssh-dss keys cannot authenticate transfers" in reply["error"]
    client = Registry(web.server.store).get(SN)
    assert [(k.type, k.status) for k in client.keys] == [("ssh-dss", "active")]
    assert "ssh-dss" not in authorized_keys(web.server)


@pytest.mark.parametrize(("serial", "pubkey", "message"), [
    ("SHF-0001", None, "invalid serial number"),
    ("", None, "invalid serial number"),
    ("A" * 65, None, "invalid serial number"),
    ("../../etc", None, "invalid serial number"),
    (SN, "not a key!", "not a valid base64 SSH key blob"),
    (SN, "", "empty public key"),
], ids=["dash", "empty", "long", "traversal", "garbage-key", "no-key"])
def test_bad_registrations_are_errors(web: Web, tmp_path: Path, serial: str,
                                      pubkey: str | None, message: str) -> None:
    reply = web.register(serial, "", "", pubkey if pubkey is not None else
                               rsa_blob(tmp_path, "k"))
    assert reply["success"] == "ERROR"
    assert message in reply["error"]
    assert Registry(web.server.store).all() == []


def test_registration_transport_limits(web: Web) -> None:
    r = web.request("POST", "/", body=b"<?xml version='1.0'?>" + b" " * (64 * 1024),
                    headers={"Content-Type": "text/xml"})
    assert r.status == 413
    assert r.json() == {"error": "request body over 65536 bytes"}
    r = web.get("/")
    assert (r.status, r.headers["Allow"]) == (405, "POST")
    # Wrong arity is an XML-RPC fault, not a crash.
    with pytest.raises(xmlrpc.client.Fault):
        web.register(SN)
    reply = web.register(SN, "", "", "x", path="/RPC2")
    assert reply["success"] == "ERROR"


# ---- authentication ------------------------------------------------------------------


@pytest.fixture
def people(server: Server) -> None:
    users.add_user(server.store, "alice", PASSWORD, "admin")
    users.add_user(server.store, "bob", PASSWORD, "teacher")
    users.add_user(server.store, "carol", PASSWORD, "admin")
    users.disable(server.store, "carol")


@pytest.mark.usefixtures("people")
def test_api_requires_authentication(web: Web) -> None:
    for path in ("/api/v1/clients", "/metrics", "/api/v1/nowhere"):
        r = web.get(path)
        assert r.status == 401, path
        assert r.headers["WWW-Authenticate"] == 'Basic realm="xsbackup"'
        assert r.json() == {"error": "authentication required"}
    assert web.get("/api/v1/health", user="alice", password="wrong").status == 401
    assert web.get("/api/v1/health", user="nobody").status == 401
    assert web.get("/api/v1/health", user="carol").status == 401  # disabled
    assert web.get("/api/v1/health",
                   headers={"Authorization": "Basic !!!not-base64"}).status == 401
    assert web.get("/api/v1/health", headers={"Authorization": "Bearer x"}).status == 401
    r = web.get("/api/v1/health", user="alice")
    assert r.status == 200
    health = r.json()
    assert health["status"] == "ok"
    assert health["version"] == "0.1.0"
    assert health["queue_depth"] == 0
    assert health["maintenance"] is False
    assert 0.0 <= health["disk"]["blocks_used_ratio"] <= 1.0
    assert 0.0 <= health["disk"]["inodes_used_ratio"] <= 1.0
    assert web.get("/api/v1/clients", user="bob").status == 200  # teachers read


@pytest.mark.usefixtures("people")
def test_disabling_or_changing_a_password_applies_at_once(web: Web) -> None:
    assert web.get("/api/v1/health", user="alice").status == 200
    users.disable(web.server.store, "alice")
    assert web.get("/api/v1/health", user="alice").status == 401
    users.enable(web.server.store, "alice")
    assert web.get("/api/v1/health", user="alice").status == 200
    users.set_password(web.server.store, "alice", "a new password")
    assert web.get("/api/v1/health", user="alice").status == 401
    assert web.get("/api/v1/health", user="alice", password="a new password").status == 200


@pytest.mark.usefixtures("people")
def test_session_cookie_flow(web: Web) -> None:
    login = orjson.dumps({"user": "bob", "password": PASSWORD})
    r = web.request("POST", "/api/v1/session", body=login,
                    headers={"Content-Type": "application/json"})
    assert r.status == 200
    assert r.json()["user"] == "bob"
    assert r.json()["role"] == "teacher"
    cookie = r.headers["Set-Cookie"]
    # The value is Flask's signed session: base64url payload, timestamp and signature.
    m = re.fullmatch(r"xsbackup_session=([\w-]{40,}\.[\w-]+\.[\w-]{40,}); (.*)", cookie,
                     re.ASCII)
    assert m is not None, cookie
    flags = m.group(2).split("; ")
    assert set(flags) == {"Path=/", "Max-Age=43200", "HttpOnly", "SameSite=Strict"}
    assert "Secure" not in flags  # plain http here; see the https test below
    jar = {"Cookie": f"xsbackup_session={m.group(1)}"}
    assert web.get("/api/v1/clients", headers=jar).status == 200
    assert web.get("/metrics", headers=jar).status == 200
    assert web.get("/api/v1/session", headers=jar).json() == {"user": "bob", "role": "teacher"}
    out = web.request("DELETE", "/api/v1/session", headers=jar)
    assert out.status == 200
    assert out.headers["Set-Cookie"].startswith("xsbackup_session=; Path=/; Max-Age=0;")
    assert web.get("/api/v1/clients", headers=jar).status == 401
    assert web.get("/api/v1/clients",
                   headers={"Cookie": "xsbackup_session=forged"}).status == 401
    # Bad logins.
    for body, status in ((orjson.dumps({"user": "bob", "password": "nope"}), 401),
                         (orjson.dumps({"user": "carol", "password": PASSWORD}), 401),
                         (b"not json", 400), (orjson.dumps(["bob"]), 400)):
        r = web.request("POST", "/api/v1/session", body=body,
                        headers={"Content-Type": "application/json"})
        assert r.status == status
        assert "error" in r.json()


@pytest.mark.usefixtures("people")
def test_session_ends_when_user_is_disabled(web: Web) -> None:
    jar = _login(web, "alice")
    assert web.get("/api/v1/health", headers=jar).status == 200
    users.disable(web.server.store, "alice")
    assert web.get("/api/v1/health", headers=jar).status == 401
    users.enable(web.server.store, "alice")
    assert web.get("/api/v1/health", headers=jar).status == 401  # that session is gone


def _login(web: Web, user: str, password: str = PASSWORD) -> dict[str, str]:
    r = web.request("POST", "/api/v1/session", headers={"Content-Type": "application/json"},
                    body=orjson.dumps({"user": user, "password": password}))
    assert r.status == 200, r.body
    return {"Cookie": r.headers["Set-Cookie"].split(";")[0]}


@pytest.mark.usefixtures("people")
def test_sessions_survive_a_restart_and_sign_outs_too(web: Web) -> None:
    """The session cookie is signed under a key kept in the state root (0600): a new
    application over the same root honours it, and a signed-out cookie stays dead."""
    kept, ended = _login(web, "bob"), _login(web, "alice")
    assert web.request("DELETE", "/api/v1/session", headers=ended).status == 200
    secret = web.server.root / "admin" / "web-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((secret.parent / "revoked-sessions.json").stat().st_mode) == 0o600
    with serving(web.server) as again:
        assert again.app is not web.app
        assert again.get("/api/v1/session", headers=kept).json() == \
            {"user": "bob", "role": "teacher"}
        assert again.get("/api/v1/clients", headers=ended).status == 401
    # Another state root (another secret) knows neither.
    other = web.server.root.parent / "other"
    init_root(other)
    users.add_user(Server(other, web.server.keydir).store, "bob", PASSWORD, "teacher")
    with serving(Server(other, web.server.keydir)) as elsewhere:
        assert elsewhere.get("/api/v1/clients", headers=kept).status == 401


@pytest.mark.usefixtures("people")
def test_password_change_ends_sessions(web: Web) -> None:
    jar = _login(web, "bob")
    other = _login(web, "alice")
    users.set_password(web.server.store, "bob", "a new password")
    assert web.get("/api/v1/health", headers=jar).status == 401
    assert web.get("/api/v1/health", headers=other).status == 200  # only bob's
    assert web.get("/api/v1/health", headers=_login(web, "bob", "a new password")).status \
        == 200


@pytest.mark.usefixtures("people")
def test_expired_or_altered_session_cookies_are_refused(web: Web) -> None:
    jar = _login(web, "bob")
    value = jar["Cookie"].split("=", 1)[1]
    payload, stamp, signature = value.split(".")
    forged = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload + "==").replace(b'"bob"', b'"alice"')).rstrip(b"=")
    for bad in (f"{forged.decode()}.{stamp}.{signature}", f"{payload}.{stamp}.{'A' * 43}"):
        assert web.get("/api/v1/session", headers={"Cookie": f"xsbackup_session={bad}"}) \
            .status == 401
    # A session past its twelve hours, signed with the real key, is refused all the same.
    keys = SessionKeys()
    stale = keys.serializer(web.server.store).dumps(
        {"user": "bob", "epoch": 0, "sid": "s" * 22, "exp": int(time.time()) - 1})
    assert web.get("/api/v1/session",
                   headers={"Cookie": f"xsbackup_session={stale}"}).status == 401
    fresh = keys.serializer(web.server.store).dumps(
        {"user": "bob", "epoch": 0, "sid": "s" * 22, "exp": int(time.time()) + 60})
    assert web.get("/api/v1/session",
                   headers={"Cookie": f"xsbackup_session={fresh}"}).status == 200


@pytest.mark.usefixtures("people")
def test_session_cookie_is_secure_under_https(server: Server) -> None:
    app = create_app(contexts(server))
    body = orjson.dumps({"user": "alice", "password": PASSWORD})
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/session",
                               "CONTENT_LENGTH": str(len(body)), "wsgi.input": BytesIO(body),
                               "CONTENT_TYPE": "application/json",
                               "wsgi.url_scheme": "https"}
    setup_testing_defaults(environ)
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append((status, headers))
        return None

    out = b"".join(app(environ, start_response))
    assert seen[0][0] == "200 OK"
    assert orjson.loads(out)["user"] == "alice"
    cookie = dict(seen[0][1])["Set-Cookie"]
    assert cookie.endswith("; HttpOnly; SameSite=Strict; Secure")


# ---- the API after a real transfer ---------------------------------------------------


def _push_one(server: Server, tmp_path: Path) -> str:
    server.add_client(SN, nickname="Ana")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_text(f"file {i}\n")
    r = local_push(server, SN, src, "documents")
    assert r.returncode == 0, r.stderr
    assert postprocess.run_once(server.ctx()) == {"promoted": 1}
    (sid,) = server.store.snapshot_ids(SN, "documents")
    return sid


@pytest.mark.usefixtures("people")
def test_api_clients_snapshots_and_restore(web: Web, tmp_path: Path) -> None:
    sid = _push_one(web.server, tmp_path)
    rows = web.get("/api/v1/clients", user="alice").json()
    assert [(r["serial"], r["nickname"], r["snapshot_count"]) for r in rows] == [(SN, "Ana", 1)]
    assert rows[0]["last_success"] is not None
    assert [(k["type"], k["status"]) for k in rows[0]["keys"]] == [("ssh-ed25519", "active")]
    assert rows[0]["keys"][0]["fingerprint"].startswith("SHA256:")

    detail = web.get(f"/api/v1/clients/{SN}", user="bob").json()
    assert detail["serial"] == SN
    assert detail["status"]["snapshot_count"] == "1"
    assert detail["volumes"] == [{"volume": "documents", "snapshots": 1, "latest": sid,
                                  "oldest": sid}]
    assert web.get(f"/api/v1/clients/{SN}/volumes", user="bob").json() == detail["volumes"]

    snaps = web.get(f"/api/v1/clients/{SN}/volumes/documents/snapshots", user="alice").json()
    assert [(s["id"], s["latest"], s["files"], s["client"], s["volume"]) for s in snaps] == \
        [(sid, True, 3, SN, "documents")]
    one = web.get(f"/api/v1/clients/{SN}/volumes/documents/snapshots/{sid}", user="alice")
    assert one.json() == snaps[0]

    plan = web.get(f"/api/v1/clients/{SN}/restore?volume=documents", user="bob").json()
    source = f"{SN}@127.0.0.1:documents/{sid}/"
    assert plan["client"] == SN
    assert plan["volume"] == "documents"
    assert plan["snapshot"] == sid
    assert plan["source"] == source
    assert plan["ssh_port"] == 2222
    assert plan["command"] == f"rsync -a -e 'ssh -p 2222' {source} <target>/"
    assert plan["facts"]["files"] == 3
    # at= takes an id or a time; the newest snapshot at or before it is chosen.
    assert web.get(f"/api/v1/clients/{SN}/restore?at={sid}", user="bob").json()["snapshot"] \
        == sid
    assert web.get(f"/api/v1/clients/{SN}/restore?at=2999-01-01T00:00:00Z",
                   user="bob").json()["snapshot"] == sid
    early = web.get(f"/api/v1/clients/{SN}/restore?at=2000-01-01T00:00:00Z", user="bob")
    assert early.status == 404
    assert early.json() == {"error": "no snapshot of documents at or before "
                                     "2000-01-01T00:00:00Z"}
    absent = web.get(f"/api/v1/clients/{SN}/restore?at=2000-01-01T000000Z", user="bob")
    assert absent.status == 404
    assert absent.json() == {"error": "no snapshot 2000-01-01T000000Z of documents"}
    assert web.get(f"/api/v1/clients/{SN}/restore?at=yesterday", user="bob").status == 400
    web.configure('[server]\npublic_host = "xs.school"\nssh_port = 22\n')
    plan = web.get(f"/api/v1/clients/{SN}/restore", user="bob").json()
    assert plan["command"] == f"rsync -a {SN}@xs.school:documents/{sid}/ <target>/"

    # The plan's source really restores, through the same forced command.
    target = tmp_path / "restored"
    rsh = web.server.keydir / "local-rsh"
    env = {**os.environ, "XSB": XSBACKUP, "XSB_ROOT": str(web.server.root), "XSB_SN": SN}
    r = subprocess.run(["rsync", "-e", str(rsh), "-a", f"{SN}@local:documents/{sid}/",
                        f"{target}/"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in target.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


@pytest.mark.usefixtures("people")
def test_api_errors(web: Web, tmp_path: Path) -> None:
    sid = _push_one(web.server, tmp_path)
    base = f"/api/v1/clients/{SN}"
    for path, status in [
        ("/api/v1/clients/SHF99999999", 404),
        ("/api/v1/clients/SHF99999999/volumes", 404),
        (f"{base}/volumes/photos/snapshots", 404),
        (f"{base}/volumes/documents/snapshots/2000-01-01T000000Z", 404),
        (f"{base}/volumes/photos/snapshots/{sid}", 404),
        (f"{base}/volumes/documents/snapshots/newest", 400),
        (f"{base}/volumes/photos/snapshots/latest", 404),
        (f"{base}/volumes/.hidden/snapshots", 400),
        (f"{base}/restore?volume=photos", 404),
        ("/api/v1/clients/bad-serial", 400),
        ("/api/v1/nothing", 404),
        (f"{base}/nothing", 404),
        ("/nothing", 404),
    ]:
        r = web.get(path, user="alice")
        assert r.status == status, (path, r.body)
        assert set(r.json()) == {"error"}
    r = web.request("POST", "/api/v1/clients", user="alice")
    assert (r.status, r.headers["Allow"]) == (405, "GET")
    r = web.request("DELETE", f"{base}/volumes/documents/snapshots/{sid}", user="alice")
    assert r.status == 405
    assert web.server.store.snapshot_ids(SN, "documents") == [sid]


@pytest.mark.usefixtures("people")
@pytest.mark.parametrize("path", [
    "/api/v1/clients/..%2F..",
    "/api/v1/clients/..",
    "/api/v1/clients/%2e%2e/volumes",
    f"/api/v1/clients/{SN}/volumes/../snapshots",
    f"/api/v1/clients/{SN}/volumes/..%2F..%2F..%2Fssh/snapshots",
    f"/api/v1/clients/{SN}/volumes/documents/snapshots/..%2F..%2F..%2Fclient.json",
    f"/api/v1/clients/{SN}/volumes/documents/snapshots/%2e%2e",
    f"/api/v1/clients/{SN}/restore?volume=../../ssh",
    f"/api/v1/clients/{SN}/restore?volume=documents&at=../../x",
    "/api/v1/clients/%00",
    "/api/v1/clients/SHF%C3%A9",
    "/api/v1/clients//volumes",
])
def test_path_traversal_is_refused(web: Web, tmp_path: Path, path: str) -> None:
    _push_one(web.server, tmp_path)
    r = web.get(path, user="alice")
    assert r.status in (400, 404), (path, r.status, r.body)
    assert set(r.json()) == {"error"}
    assert b"authorized_keys" not in r.body


# ---- metrics -------------------------------------------------------------------------


@pytest.mark.usefixtures("people")
def test_metrics_after_a_transfer(web: Web, tmp_path: Path) -> None:
    assert web.get("/metrics").status == 401
    _push_one(web.server, tmp_path)
    assert web.get(f"/backup/1/available/{SN}").status == 200
    r = web.get("/metrics", user="bob")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    text = r.body.decode()
    lines = set(text.splitlines())
    assert "xsbackup_snapshot_promotions_total 1.0" in lines
    assert 'xsbackup_transfers_total{result="success"} 1.0' in lines
    assert "xsbackup_files_received_total 3.0" in lines
    assert "xsbackup_bytes_received_total 21.0" in lines
    assert "xsbackup_queue_depth 0.0" in lines
    assert 'xsbackup_admissions_total{path="ssh",reason="",result="granted"} 1.0' in lines
    assert 'xsbackup_admissions_total{path="http",reason="",result="granted"} 1.0' in lines
    assert f'xsbackup_snapshots{{client="{SN}"}} 1.0' in lines
    m = re.search(rf'^xsbackup_client_seconds_since_last_success{{client="{SN}"}} (\S+)$',
                  text, re.MULTILINE)
    assert m is not None
    assert float(m.group(1)) >= 0.0
    for name in ("xsbackup_disk_blocks_used_ratio", "xsbackup_disk_inodes_used_ratio"):
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert m is not None
        assert 0.0 <= float(m.group(1)) <= 1.0


# ---- the one error handler -----------------------------------------------------------


@pytest.mark.usefixtures("people")
def test_errors_map_through_http_status(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    """Every error answers with its class's ``http_status``; a server-side failure is a
    bare 500 (details only in the log), as JSON here and as a page in the web UI."""
    web.server.add_client(SN)
    (web.server.store.client_dir(SN) / "client.json").write_text("{not json")
    r = web.get(f"/api/v1/clients/{SN}", user="alice")
    assert r.status == 500
    assert r.json() == {"error": "internal server error; see the server log"}
    assert "corrupt registry record" in caplog.text  # StateRootError, logged in full
    assert web.get(f"/backup/1/available/{SN}").status == 500
    r = web.request("PROPFIND", "/nothing")
    assert (r.status, r.json()) == (404, {"error": "not found"})
    r = web.request("PROPFIND", "/api/v1/health", user="alice")
    assert (r.status, r.headers["Allow"]) == (405, "GET")
    assert r.json() == {"error": "method not allowed"}
    from xsbackup.errors import ClientNotFound, InvalidName, NotReadable, XsbackupError

    assert (XsbackupError.http_status, InvalidName.http_status, NotReadable.http_status,
            ClientNotFound.http_status) == (500, 400, 403, 404)
