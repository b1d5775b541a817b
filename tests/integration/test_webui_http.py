"""The web UI's security over plain HTTP (no browser): CSRF, roles by direct POST,
sign-in throttling, cookies and headers, and paths that must never be served."""

from __future__ import annotations

import base64
import http.client
import io
import os
import re
import tarfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_http import contexts
from tests.integration.test_webui import (
    ADMIN,
    ADMIN_PW,
    FRESH,
    PENDING,
    PRUNED,
    TEACHER,
    TEACHER_PW,
    Site,
    documents,
    prunable,
    push,
    register_pending,
    start_site,
)
from xsbackup.clients import registration
from xsbackup.clients.registry import Registry
from xsbackup.web.app import create_app

pytestmark = pytest.mark.integration
OTHER = "SHF00000OLD"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def csrf(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert m is not None, self.text[:500]
        return m.group(1)


@dataclass
class Client:
    """A cookie-keeping HTTP client of one site."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None) -> Reply:
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for line in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = line.partition("=")
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = rest.split(";", 1)[0]
        return reply

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: list[tuple[str, str]], **kw: Any) -> Reply:
        return self.request("POST", path, form=form, **kw)

    def sign_in(self, user: str, password: str) -> Reply:
        page = self.get("/ui/login")
        assert page.status == 200
        return self.post("/ui/login", [("csrf", page.csrf()), ("user", user),
                                       ("password", password), ("next", "/ui/")])

    def token(self) -> str:
        return self.get("/ui/").csrf()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = start_site(tmp_path_factory.mktemp("site"))
    src = tmp_path_factory.mktemp("src")
    s.server.add_client(FRESH)
    s.server.add_client(OTHER)
    push(s.server, FRESH, documents(src / "docs"))
    odd = src / "odd"
    odd.mkdir()
    (odd / os.fsdecode(b"caf\xe9-latin1.txt")).write_bytes(b"latin-1 name\n")
    (odd / "big").mkdir()
    for i in range(230):
        (odd / "big" / f"f{i:03d}.txt").write_text(f"{i}\n")
    push(s.server, FRESH, odd, "odd")
    register_pending(s, PENDING, "Carla")
    s.extra["ids"] = prunable(s, PRUNED, src)
    try:
        yield s
    finally:
        s.close()


def signed_in(site: Site, user: str = ADMIN, password: str = ADMIN_PW) -> Client:
    c = Client(site.http.effective_port)
    r = c.sign_in(user, password)
    assert (r.status, r.headers["Location"]) == (303, "/ui/"), r.text
    return c


def nothing_changed(site: Site) -> None:
    registry = Registry(site.store)
    assert [r.serial for r in registration.pending(registry)] == [PENDING]
    assert site.store.snapshot_ids(PRUNED, "documents") == site.extra["ids"]
    assert registry.get(PRUNED).aliases == []


def state_changing_posts(token: str | None, ids: list[str]) -> list[tuple[str, list[Any]]]:
    extra = [("csrf", token)] if token is not None else []
    return [
        (f"/ui/registrations/{PENDING}/approve", extra),
        (f"/ui/registrations/{PENDING}/reject", extra),
        (f"/ui/clients/{PRUNED}/prune",
         [*extra, ("confirm", "yes"), *[("snapshot", f"documents/{i}") for i in ids]]),
        (f"/ui/clients/{PRUNED}/aliases/add", [*extra, ("alias", FRESH)]),
    ]


# ---- CSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["missing", "empty", "forged", "other-session"])
def test_posts_without_a_valid_csrf_token_change_nothing(site: Site, token: str) -> None:
    admin = signed_in(site)
    given = {"missing": None, "empty": "", "forged": "A" * 43,
             "other-session": signed_in(site).token()}[token]
    for path, form in state_changing_posts(given, site.extra["ids"]):
        r = admin.post(path, form)
        assert r.status == 403, (path, r.status)
        assert "security token is missing or not valid" in r.text
        nothing_changed(site)
    r = admin.post("/ui/logout", [] if given is None else [("csrf", given)])
    assert r.status == 403
    assert admin.get("/ui/").status == 200  # still signed in


def test_cross_site_post_is_refused_even_with_a_token(site: Site) -> None:
    admin = signed_in(site)
    token = admin.token()
    r = admin.post(f"/ui/registrations/{PENDING}/approve", [("csrf", token)],
                   headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403
    nothing_changed(site)


def test_sign_in_form_needs_its_token_and_cookie(site: Site) -> None:
    c = Client(site.http.effective_port)
    token = c.get("/ui/login").csrf()
    assert "xsbackup_login" in c.cookies
    fresh = Client(site.http.effective_port)  # the token without its pre-session cookie
    r = fresh.post("/ui/login", [("csrf", token), ("user", ADMIN), ("password", ADMIN_PW)])
    assert r.status == 403
    assert "xsbackup_session" not in fresh.cookies
    r = c.post("/ui/login", [("user", ADMIN), ("password", ADMIN_PW)])
    assert r.status == 403
    assert "xsbackup_session" not in c.cookies


# ---- roles --------------------------------------------------------------------------------


def test_teacher_posts_are_refused(site: Site) -> None:
    teacher = signed_in(site, TEACHER, TEACHER_PW)
    token = teacher.token()
    for path, form in state_changing_posts(token, site.extra["ids"]):
        r = teacher.post(path, form)
        assert r.status == 403, path
        assert "Only an administrator can" in r.text
        nothing_changed(site)
    assert teacher.get(f"/ui/clients/{PRUNED}/prune").status == 403
    # reading and downloading are allowed
    assert teacher.get(f"/ui/clients/{FRESH}").status == 200
    sid = site.store.snapshot_ids(FRESH, "documents")[0]
    r = teacher.get(f"/ui/clients/{FRESH}/volumes/documents/snapshots/{sid}/file"
                    "?path=school/notes.txt")
    assert (r.status, r.body) == (200, b"buy crayons\n")


def test_admin_alias_add_and_remove(site: Site) -> None:
    admin = signed_in(site)
    token = admin.token()
    r = admin.post(f"/ui/clients/{OTHER}/aliases/add", [("csrf", token), ("alias", FRESH)])
    assert (r.status, r.headers["Location"]) == (303, f"/ui/clients/{OTHER}#aliases")
    assert Registry(site.store).get(OTHER).aliases == [FRESH]
    page = admin.get(f"/ui/clients/{OTHER}")
    assert f"{OTHER} may now read the snapshots of {FRESH}." in page.text
    for bad, status in ((OTHER, 400), ("NOSUCHCLIENT", 404), ("../x", 400)):
        r = admin.post(f"/ui/clients/{OTHER}/aliases/add", [("csrf", token), ("alias", bad)])
        assert r.status == status, bad
    r = admin.post(f"/ui/clients/{OTHER}/aliases/remove", [("csrf", token), ("alias", FRESH)])
    assert r.status == 303
    assert Registry(site.store).get(OTHER).aliases == []


def test_prune_needs_the_confirmation(site: Site) -> None:
    admin = signed_in(site)
    token = admin.token()
    ids = site.extra["ids"]
    r = admin.post(f"/ui/clients/{PRUNED}/prune", [("csrf", token)])
    assert r.status == 400
    r = admin.post(f"/ui/clients/{PRUNED}/prune",
                   [("csrf", token), *[("snapshot", f"documents/{i}") for i in ids]])
    assert r.status == 400
    nothing_changed(site)
    # confirming a snapshot the policy keeps does not delete it
    r = admin.post(f"/ui/clients/{PRUNED}/prune",
                   [("csrf", token), ("confirm", "yes"), ("snapshot", f"documents/{ids[-1]}")])
    assert r.status == 303
    nothing_changed(site)


# ---- signing in ---------------------------------------------------------------------------


def test_failed_sign_ins_are_throttled(tmp_path: Path) -> None:
    site = start_site(tmp_path, "[ui]\nmax_login_failures = 2\nlogin_lockout_minutes = 1.0\n")
    try:
        c = Client(site.http.effective_port)
        for _ in range(2):
            assert c.sign_in(ADMIN, "wrong password").status == 401
        r = c.sign_in(ADMIN, ADMIN_PW)  # right, but too late
        assert r.status == 429
        assert "Too many failed sign-ins. Try again in 1 minute." in r.text
        assert 0 < int(r.headers["Retry-After"]) <= 60
        assert "xsbackup_session" not in c.cookies
        # the address is throttled too, whatever the name
        assert c.sign_in(TEACHER, TEACHER_PW).status == 429
        # and the JSON API's login shares the throttle
        r = c.request("POST", "/api/v1/session", headers={"Content-Type": "application/json"},
                      body=orjson.dumps({"user": ADMIN, "password": ADMIN_PW}))
        assert r.status == 429
    finally:
        site.close()


def test_session_cookie_flags_and_logout(site: Site) -> None:
    c = Client(site.http.effective_port)
    page = c.get("/ui/login")
    login_cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in login_cookie
    assert "SameSite=Strict" in login_cookie
    r = c.post("/ui/login", [("csrf", page.csrf()), ("user", ADMIN), ("password", ADMIN_PW),
                             ("next", "//evil.example/")])
    assert r.headers["Location"] == "/ui/"  # never an open redirect
    session = next(v for v in r.headers.get_all("Set-Cookie") or []
                   if v.startswith("xsbackup_session="))
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session
    assert "Secure" not in session  # plain http here
    r = c.post("/ui/logout", [("csrf", c.token())])
    assert (r.status, r.headers["Location"]) == (303, "/ui/login")
    r = c.get("/ui/")
    assert r.status == 303
    assert r.headers["Location"].startswith("/ui/login?next=")


def test_cookies_are_secure_under_tls(site: Site) -> None:
    """Behind TLS (wsgi.url_scheme https) both cookies carry Secure."""
    app = create_app(contexts(site.server))
    got: dict[str, Any] = {}

    headers: list[tuple[str, str]] = []

    def start(status: str, hs: list[tuple[str, str]]) -> None:
        got["status"] = status
        headers[:] = hs

    def run(method: str, body: bytes = b"", cookie: str = "") -> bytes:
        environ = {"REQUEST_METHOD": method, "PATH_INFO": "/ui/login", "QUERY_STRING": "",
                   "wsgi.url_scheme": "https", "wsgi.input": io.BytesIO(body),
                   "CONTENT_LENGTH": str(len(body)), "HTTP_COOKIE": cookie,
                   "REMOTE_ADDR": "127.0.0.1"}
        return b"".join(app(environ, start))  # type: ignore[arg-type]

    page = run("GET")
    pre = next(v for k, v in headers if k == "Set-Cookie")
    assert "Secure" in pre
    token = re.search(rb'name="csrf" value="([^"]+)"', page)
    assert token is not None
    form = urllib.parse.urlencode({"csrf": token.group(1).decode(), "user": ADMIN,
                                   "password": ADMIN_PW}).encode()
    run("POST", form, pre.split(";", 1)[0])
    assert got["status"].startswith("303")
    session = next(v for k, v in headers if k == "Set-Cookie" and
                   v.startswith("xsbackup_session="))
    assert "Secure" in session
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session


# ---- pages and headers --------------------------------------------------------------------


def test_pages_carry_a_strict_content_security_policy(site: Site) -> None:
    c = signed_in(site)
    sid = site.store.snapshot_ids(FRESH, "documents")[0]
    for path in ("/ui/", f"/ui/clients/{FRESH}", f"/ui/clients/{PRUNED}/prune",
                 f"/ui/clients/{FRESH}/volumes/documents/snapshots/{sid}/browse", "/ui/login",
                 "/ui/no-such-page"):
        r = c.get(path)
        assert r.status in (200, 303, 404), path
        if r.status == 303:
            continue
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "style-src 'self'" in csp
        assert "object-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<script>" not in r.text  # no inline script anywhere
        assert " style=" not in r.text
    r = c.get("/ui/?q=%FF%3Cb%3Ex&sort=%FF")  # not UTF-8, markup: shown as text
    assert r.status == 200
    assert 'value="\ufffd&lt;b&gt;x"' in r.text
    css = c.get("/ui/static/ui.css")
    assert (css.status, css.headers["Content-Type"]) == (200, "text/css; charset=utf-8")
    assert c.get("/ui/static/../webui.py").status == 404


def test_signed_out_pages_redirect_and_downloads_refuse(site: Site) -> None:
    c = Client(site.http.effective_port)
    sid = site.store.snapshot_ids(FRESH, "documents")[0]
    file_url = (f"/ui/clients/{FRESH}/volumes/documents/snapshots/{sid}/file"
                "?path=school/notes.txt")
    r = c.get(file_url)
    assert r.status == 303
    assert urllib.parse.unquote(r.headers["Location"]) == f"/ui/login?next={file_url}"
    assert b"crayons" not in r.body
    # HTTP Basic does not open the UI (only the session cookie does)
    basic = base64.b64encode(f"{ADMIN}:{ADMIN_PW}".encode()).decode()
    r = c.get(file_url, headers={"Authorization": f"Basic {basic}"})
    assert r.status == 303
    # a browser asking for / lands on the UI; an XML-RPC client still gets its 405
    r = c.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert (r.status, r.headers["Location"]) == (303, "/ui/")
    assert c.get("/").status == 405


@pytest.mark.parametrize(("path", "status"), [
    ("../../../../etc/passwd", 403),
    ("school/../../client.json", 403),
    ("/etc/passwd", 403),
    ("passwd-link", 403),
    ("passwd-link/x", 403),
    ("school/nothing.txt", 404),
    ("school", 403),
], ids=["dotdot", "dotdot-inside", "absolute", "symlink", "through-symlink", "absent",
        "a-directory"])
def test_paths_outside_the_snapshot_are_never_served(site: Site, path: str,
                                                      status: int) -> None:
    c = signed_in(site, TEACHER, TEACHER_PW)
    sid = site.store.snapshot_ids(FRESH, "documents")[0]
    base = f"/ui/clients/{FRESH}/volumes/documents/snapshots/{sid}"
    q = urllib.parse.quote(path)
    for sub in ("file", "browse", "archive.zip", "archive.tar"):
        r = c.get(f"{base}/{sub}?path={q}")
        if sub != "file" and path == "school":
            assert r.status == 200  # a directory is fine to browse or archive
            continue
        expected = 404 if path.endswith("nothing.txt") else status
        assert r.status == expected, (sub, path, r.status)
        assert b"root:" not in r.body
    for bad in ("NO_SUCH_SERIAL", "bad%2Fserial"):
        assert c.get(f"/ui/clients/{bad}/volumes/documents/snapshots/{sid}/browse").status \
            in (400, 404)
    assert c.get(f"{base.replace(sid, '2001-01-01T000000Z')}/browse").status == 404
    assert c.get(f"{base.replace(sid, 'latest')}/browse").status == 400


def test_downloads_are_attachments_with_exact_bytes(site: Site) -> None:
    c = signed_in(site, TEACHER, TEACHER_PW)
    sid = site.store.snapshot_ids(FRESH, "odd")[0]
    base = f"/ui/clients/{FRESH}/volumes/odd/snapshots/{sid}"
    page = c.get(f"{base}/browse")
    assert "caf\ufffd-latin1.txt" in page.text  # an undecodable byte shown as U+FFFD
    href = re.search(r'href="([^"]*file\?path=caf[^"]*)"', page.text)
    assert href is not None
    r = c.get(href.group(1).replace("&amp;", "&"))
    assert r.status == 200
    assert r.body == b"latin-1 name\n"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="caf_-latin1.txt"')
    assert "filename*=UTF-8''caf%E9-latin1.txt" in r.headers["Content-Disposition"]
    assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = c.get(f"{base}/archive.tar")
    with tarfile.open(fileobj=io.BytesIO(r.body)) as tar:
        assert len([m for m in tar.getmembers() if m.name.startswith("big/")]) == 230
    r = c.get(f"{base}/archive.zip?path=big")
    with zipfile.ZipFile(io.BytesIO(r.body)) as zf:
        assert zf.read("f007.txt") == b"7\n"


def test_big_directories_are_paged(site: Site) -> None:
    c = signed_in(site, TEACHER, TEACHER_PW)
    sid = site.store.snapshot_ids(FRESH, "odd")[0]
    base = f"/ui/clients/{FRESH}/volumes/odd/snapshots/{sid}/browse?path=big"
    names: list[str] = []
    for page in (1, 2, 3):
        r = c.get(f"{base}&page={page}")
        assert r.status == 200
        assert f"page {page} of 3" in r.text
        names += re.findall(r'<span class="fname">(f\d+\.txt)</span>', r.text)
    assert names == [f"f{i:03d}.txt" for i in range(230)]
    assert c.get(f"{base}&page=4").status == 404


def test_preview_must_be_a_png(site: Site, tmp_path: Path) -> None:
    """A "preview" that is HTML (or anything but PNG) is not served as an image."""
    ds = tmp_path / "ds"
    uid = "aa000000-0000-4000-8000-000000000001"
    meta = ds / uid[:2] / uid / "metadata"
    meta.mkdir(parents=True)
    (ds / "version").write_text("6")
    (meta / "title").write_text("evil preview")
    (meta / "preview").write_text("<html><script>alert(1)</script></html>")
    push(site.server, OTHER, ds, "datastore")
    c = signed_in(site, TEACHER, TEACHER_PW)
    sid = site.store.snapshot_ids(OTHER, "datastore")[0]
    base = f"/ui/clients/{OTHER}/volumes/datastore/snapshots/{sid}/journal"
    assert c.get(base).status == 200
    r = c.get(f"{base}/{uid}/preview")
    assert r.status == 404
    assert b"<script>alert" not in r.body
    assert c.get(f"{base}/..%2f..%2fetc/preview").status in (400, 404)
    r = c.get(f"{base}/{uid}.xoj")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/vnd.olpc-journal-entry"

