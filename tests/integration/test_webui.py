"""The web UI in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium against a real waitress server on loopback, with
clients and snapshots made by real rsync transfers through the forced command.

One browser serves the whole module. Each test signs in afresh and saves a screenshot of
every page it sees into ``test-artifacts/webui/`` (or ``$XSBACKUP_ARTIFACTS/webui/``).
Every page load is checked for script injection: no JavaScript dialog is open and no
payload set ``window.__xss``.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, local_push
from tests.integration.test_http import contexts
from tests.integration.test_restore import sugar_datastore
from xsbackup.clients import registration
from xsbackup.clients.registry import Registry
from xsbackup.restore import access, journal
from xsbackup.snapshots import postprocess, usage
from xsbackup.store import init_root, set_xattrs
from xsbackup.web import users
from xsbackup.web.app import HttpServer, WebApp, create_app, make_server
from xsbackup.web.pages import human_bytes

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("XSBACKUP_ARTIFACTS") or REPO / "test-artifacts") / "webui"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN, ADMIN_PW = "admin", "admin password 1"
TEACHER, TEACHER_PW = "teacher", "teacher password 1"
BASE_CONFIG = "[admission]\nmax_load = 1000.0\nmax_blocks_pct = 100.0\nmax_inodes_pct = 100.0\n"
FRESH, STALE = "SHF00000001", "SHF00000002"
PENDING = "SHF0000PEND"
PRUNED = "SHF0000PRUN"
EVIL = "SHF0000EVIL"
ESSAY = "Mi ensayo: la fotosíntesis\n".encode() + bytes(range(256)) * 64
PRUNE_POLICY = {"keep_within": "", "keep_first_monthly": 0, "keep_last": 1}
PAYLOAD_IMG = '<img src=x onerror="window.__xss=1">'
PAYLOAD_ALERT = "<img src=x onerror=alert(1)>"
PAYLOAD_SCRIPT = "<script>alert(1)</script>"
EVIL_NICKNAME = PAYLOAD_SCRIPT + PAYLOAD_IMG
EVIL_TITLE = PAYLOAD_IMG + PAYLOAD_SCRIPT + " & <b>bold</b>"
EVIL_ACTIVITY = '"><svg onload="window.__xss=1">'
EVIL_FILES = [PAYLOAD_ALERT + ".txt", '"><svg onload=window.__xss=1>']
EVIL_DIR = "<svg onload=alert(1)>"


# ---- sites: a state root and a real HTTP server -------------------------------------------


@dataclass
class Site:
    server: Server
    app: WebApp
    http: HttpServer
    thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.effective_port}"

    @property
    def store(self) -> Any:
        return self.server.store

    def close(self) -> None:
        self.http.close()
        self.thread.join(timeout=10)

    def restart(self) -> None:
        """What restarting ``serve`` does to the web side: the server stops, and a new
        application (nothing kept in memory) serves the same state root on the same port."""
        port = self.http.effective_port
        self.close()
        assert not self.thread.is_alive()
        self.app = create_app(contexts(self.server))
        self.http = make_server(self.app, "127.0.0.1", port, 8)
        self.thread = threading.Thread(target=self.http.run_forever, name="webui-test",
                                       daemon=True)
        self.thread.start()


def start_site(base: Path, config: str = "") -> Site:
    root = base / "state"
    init_root(root)
    (base / "keys").mkdir()
    server = Server(root, base / "keys")
    server.configure(BASE_CONFIG + config)
    users.add_user(server.store, ADMIN, ADMIN_PW, role="admin")
    users.add_user(server.store, TEACHER, TEACHER_PW, role="teacher")
    app = create_app(contexts(server))
    http = make_server(app, "127.0.0.1", 0, 8)
    thread = threading.Thread(target=http.run_forever, name="webui-test", daemon=True)
    thread.start()
    return Site(server, app, http, thread)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Site]]:
    """A factory of sites; every site it made is closed after the module."""
    made: list[Site] = []

    def make(name: str, config: str = "") -> Site:
        site = start_site(tmp_path_factory.mktemp(name), config)
        made.append(site)
        return site

    yield make
    for site in made:
        site.close()


def push(server: Server, serial: str, src: Path, volume: str = "documents") -> None:
    r = local_push(server, serial, src, volume)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())


def png(width: int = 12, height: int = 9, rgb: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    """A real (tiny) PNG, so thumbnails render in the screenshots."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def datastore(base: Path, entries: int = 4) -> Path:
    src = sugar_datastore(base, entries=entries)
    for i, meta in enumerate(sorted(src.glob("*/*/metadata"))):
        (meta / "preview").write_bytes(png(rgb=(40 + 50 * i, 120, 200 - 40 * i)))
    return src


def documents(base: Path, essay: bytes = ESSAY) -> Path:
    (base / "school" / "science").mkdir(parents=True)
    (base / "school" / "science" / "essay.odt").write_bytes(essay)
    (base / "school" / "notes.txt").write_text("buy crayons\n")
    (base / "drawing.png").write_bytes(png())
    (base / "passwd-link").symlink_to("/etc/passwd")
    return base


@pytest.fixture(scope="module")
def two_clients(sites: Callable[..., Site], tmp_path_factory: pytest.TempPathFactory) -> Site:
    """FRESH backed up just now (documents and a Sugar datastore); STALE three days ago."""
    site = sites("two")
    src = tmp_path_factory.mktemp("src")
    site.server.add_client(FRESH, "Ana's XO")
    site.server.add_client(STALE, "Beto")
    push(site.server, FRESH, documents(src / "fresh"))
    push(site.server, FRESH, datastore(src / "ds"), "datastore")
    push(site.server, STALE, documents(src / "stale", b"old essay\n"))
    three_days = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    set_xattrs(site.store.client_dir(STALE),
               {"last_success": three_days.isoformat(timespec="seconds")})
    return site


def register_pending(site: Site, serial: str, nickname: str, name: str = "") -> str:
    """A registration waiting for approval, made the way Sugar makes it."""
    key = site.server.keydir / f"id_{name or serial}"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", serial, "-f",
                    str(key)], check=True)
    blob = key.with_suffix(".pub").read_text().split()[1]
    settings = site.server.settings().replace(registration__new_serial="approve")
    reply = registration.register(settings, Registry(site.store), serial, nickname, "", blob,
                                  "xs", "127.0.0.1")
    assert reply["success"] == registration.PENDING, reply
    return blob


def prunable(site: Site, serial: str, tmp: Path, count: int = 3) -> list[str]:
    """A client with ``count`` snapshots whose policy keeps only the newest."""
    site.server.add_client(serial, f"prune me {serial[-4:]}")
    src = tmp / f"src-{serial}"
    src.mkdir()
    (src / "kept.txt").write_text("in every snapshot\n")
    for i in range(count):
        (src / "work.odt").write_bytes(os.urandom(40_000 * (i + 1)))  # a new version each time
        push(site.server, serial, src)
    Registry(site.store).modify(serial, lambda c: setattr(c, "policy", dict(PRUNE_POLICY)))
    ids = site.store.snapshot_ids(serial, "documents")
    assert len(ids) == count
    return ids


# ---- the browser --------------------------------------------------------------------------


def need_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        why = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@dataclass
class Browser:
    driver: Any
    downloads: Path
    shots: list[Path] = field(default_factory=list)

    # -- pages --

    def get(self, url: str) -> None:
        self.driver.get(url)
        self.check_no_script()

    def check_no_script(self) -> None:
        """No injected script ran: no dialog is open, no payload set window.__xss."""
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            _ = self.driver.switch_to.alert
        assert self.driver.execute_script("return typeof window.__xss") == "undefined"
        assert self.css("[onerror], [onload], img[src='x'], script:not([src])") == []

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def one(self, selector: str) -> Any:
        found = self.css(selector)
        assert len(found) == 1, f"{selector}: {len(found)} elements"
        return found[0]

    def link(self, text: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.LINK_TEXT, text)

    def click(self, element: Any) -> None:
        """Click and wait for the next page to load."""
        self._mark()
        element.click()
        self._wait_new_page()

    def _mark(self) -> None:
        self.driver.execute_script("window.__old_page = true")

    def _wait_new_page(self) -> None:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        def loaded(d: Any) -> bool:
            try:
                return bool(d.execute_script(
                    "return window.__old_page === undefined"
                    " && document.readyState === 'complete'"))
            except WebDriverException:  # between two documents
                return False

        WebDriverWait(self.driver, 20).until(loaded)
        self.check_no_script()

    def text(self) -> str:
        return str(self.driver.find_element("tag name", "body").text)

    def heading(self) -> str:
        return str(self.one("h1").text)

    def shot(self, name: str, width: int = 1280) -> Path:
        """A full-page screenshot at ``width`` CSS pixels."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.driver.set_window_size(width, 900)
        height = int(self.driver.execute_script(
            "return document.documentElement.scrollHeight"))
        self.driver.set_window_size(width, min(max(height + 200, 600), 8000))
        path = ARTIFACTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1280, 900)
        self.shots.append(path)
        return path

    # -- sessions --

    def sign_in(self, site: Site, user: str, password: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.delete_all_cookies()
        self.get(f"{site.url}/ui/")
        assert "/ui/login" in self.driver.current_url
        self.driver.find_element(By.ID, "user").send_keys(user)
        self.driver.find_element(By.ID, "password").send_keys(password)
        self.click(self.one("form.stack button[type=submit]"))
        assert self.driver.current_url == f"{site.url}/ui/", self.text()
        assert f"{user} ({'admin' if user == ADMIN else 'teacher'})" in self.text()

    # -- downloads --

    def download(self, element: Any, timeout: float = 30) -> Path:
        for p in self.downloads.iterdir():
            p.unlink()
        element.click()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = list(self.downloads.iterdir())
            done = [p for p in names if not p.name.endswith((".crdownload", ".tmp"))
                    and not p.name.startswith(".")]
            if done and len(done) == len(names):
                return done[0]
            time.sleep(0.1)
        pytest.fail(f"no download finished within {timeout}s: {list(self.downloads.iterdir())}")

    def post_form(self, action: str, fields: list[tuple[str, str]]) -> None:
        """Submit a form the page did not offer (what a curious user could do with the
        browser's developer tools), and wait for the answer page."""
        self._mark()
        self.driver.execute_script(
            "const f = document.createElement('form');"
            "f.method = 'post'; f.action = arguments[0];"
            "for (const [k, v] of arguments[1]) {"
            "  const i = document.createElement('input');"
            "  i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }"
            "document.body.appendChild(f); f.submit();", action, fields)
        self._wait_new_page()

    def csrf(self) -> str:
        return str(self.one("header form input[name=csrf]").get_attribute("value"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                "--window-size=1280,900", "--lang=en-US"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        yield Browser(driver, downloads)
    finally:
        driver.quit()


# ---- the tests ----------------------------------------------------------------------------


def test_sign_in_and_out(browser: Browser, two_clients: Site) -> None:
    from selenium.webdriver.common.by import By

    site = two_clients
    browser.driver.delete_all_cookies()
    browser.get(f"{site.url}/ui/clients/{FRESH}")
    assert browser.driver.current_url.startswith(f"{site.url}/ui/login?next=")
    assert browser.heading() == "Sign in"
    assert browser.one("label[for=user]").text == "User name"
    assert browser.one("label[for=password]").text == "Password"
    browser.shot("01-sign-in")
    browser.driver.find_element(By.ID, "user").send_keys(ADMIN)
    browser.driver.find_element(By.ID, "password").send_keys("not the password")
    browser.click(browser.one("form.stack button"))
    assert browser.one("#login-error").text == "Wrong user name or password."
    browser.shot("02-sign-in-failed")
    browser.driver.find_element(By.ID, "password").send_keys(ADMIN_PW)
    browser.click(browser.one("form.stack button"))
    # back where the user was going
    assert browser.driver.current_url == f"{site.url}/ui/clients/{FRESH}"
    cookie = browser.driver.get_cookie("xsbackup_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert browser.driver.execute_script("return document.cookie") == ""
    browser.click(browser.one("header form button"))
    assert browser.driver.current_url == f"{site.url}/ui/login"
    browser.get(f"{site.url}/ui/")
    assert "/ui/login" in browser.driver.current_url


def test_signed_in_across_a_restart(browser: Browser, sites: Callable[..., Site]) -> None:
    """Sessions are signed cookies under a key kept in the state root: a restarted server
    knows the browser's session, and its forms' CSRF tokens, without a new sign-in."""
    site = sites("restart")
    site.server.add_client(FRESH, "Ana's XO")
    browser.sign_in(site, ADMIN, ADMIN_PW)
    old_app = site.app
    site.restart()
    assert site.app is not old_app
    browser.get(f"{site.url}/ui/")
    assert browser.driver.current_url == f"{site.url}/ui/", browser.text()
    assert browser.heading() == "Backups"
    assert f"{ADMIN} (admin)" in browser.text()
    browser.get(f"{site.url}/ui/clients/{FRESH}")
    assert browser.heading().startswith(FRESH)
    browser.shot("20-after-restart")
    # A form rendered before a restart is accepted after it (its CSRF token too): signing
    # out works, and the signed-out cookie stays dead, across another restart as well.
    cookie = browser.driver.get_cookie("xsbackup_session")
    assert cookie is not None
    site.restart()
    browser.click(browser.one("header form button"))
    assert browser.driver.current_url == f"{site.url}/ui/login", browser.text()
    site.restart()
    browser.driver.add_cookie({"name": cookie["name"], "value": cookie["value"], "path": "/"})
    browser.get(f"{site.url}/ui/")
    assert "/ui/login" in browser.driver.current_url


def test_dashboard_two_clients_one_overdue(browser: Browser, two_clients: Site) -> None:
    site = two_clients
    browser.sign_in(site, TEACHER, TEACHER_PW)
    assert browser.heading() == "Backups"
    rows = {r.find_element("css selector", "td[data-label=Serial] a").text: r
            for r in browser.css("#clients tbody tr")}
    assert sorted(rows) == [FRESH, STALE]
    assert "overdue" in str(rows[STALE].get_attribute("class"))
    assert "overdue" not in str(rows[FRESH].get_attribute("class"))
    assert "3 d" in rows[STALE].find_element("css selector", "td.age").text
    assert "overdue" in rows[STALE].find_element("css selector", "td.age").text
    assert rows[FRESH].find_element("css selector", "td.nickname").text == "Ana's XO"
    assert rows[FRESH].find_element("css selector", "td[data-label=Snapshots]").text == "2"
    assert "1 overdue" in browser.one("p.summary").text
    # the overdue client sorts first by default (oldest backup first)
    first = browser.css("#clients tbody tr td[data-label=Serial] a")[0].text
    assert first == STALE
    assert browser.one("#m-blocks").get_attribute("value")
    assert "Empty" in browser.text()  # the post-processing queue
    browser.shot("03-dashboard")
    browser.shot("03-dashboard-phone", width=390)

    # filter by nickname, without JavaScript's help (the form submits a query)
    browser.get(f"{site.url}/ui/?q=beto")
    assert [a.text for a in browser.css("#clients tbody tr td[data-label=Serial] a")] == [STALE]
    # sort by serial, descending, through the column heading links
    browser.get(f"{site.url}/ui/?sort=serial&order=asc")
    browser.click(browser.one("th[aria-sort] a"))
    assert [a.text for a in browser.css("#clients tbody tr td[data-label=Serial] a")] == \
        [STALE, FRESH]
    assert browser.one("th[aria-sort]").get_attribute("aria-sort") == "descending"
    # and the progressive enhancement filters as one types
    browser.get(f"{site.url}/ui/")
    browser.one("#filter").send_keys("ana")
    visible = [r for r in browser.css("#clients tbody tr") if r.is_displayed()]
    assert len(visible) == 1
    assert FRESH in visible[0].text


def test_client_page_browse_and_download_a_file(browser: Browser, two_clients: Site) -> None:
    site = two_clients
    browser.sign_in(site, TEACHER, TEACHER_PW)
    browser.click(browser.link(FRESH))
    assert browser.heading().startswith(FRESH)
    charts = browser.css("svg.chart")
    assert len(charts) == 2
    assert len(browser.css("svg.chart rect.bar")) == 2  # one bar per snapshot
    assert browser.css("svg.chart polyline.line")
    assert {v.text for v in browser.css("td[data-label=Volume]")} == {"datastore", "documents"}
    # a teacher sees no admin controls
    assert browser.css("form[action$='/aliases/add']") == []
    browser.shot("04-client")
    browser.shot("04-client-phone", width=390)

    browser.click(browser.css("a[href$='/volumes/documents/latest']")[0])
    assert "/browse" in browser.driver.current_url
    names = [e.text for e in browser.css("td.name .fname")]
    assert names == ["school", "drawing.png", "passwd-link"]  # folders first
    link_row = browser.css("tr.kind-symlink")[0]
    assert "symbolic link to /etc/passwd (not followed)" in link_row.text
    assert link_row.find_elements("css selector", "a") == []
    browser.shot("05-browse")
    browser.click(browser.link("school/"))
    browser.click(browser.link("science/"))
    assert [c.text for c in browser.css(".crumbs li")][-2:] == ["school", "science"]
    row = browser.css("tr.kind-file")[0]
    assert row.find_element("css selector", "td[data-label=Size]").text == \
        f"{len(ESSAY) / 1024:.1f} KiB"
    browser.shot("06-browse-folder")
    got = browser.download(row.find_element("css selector", "td.name a"))
    assert got.name == "essay.odt"
    assert got.read_bytes() == ESSAY
    # the folder as a zip, from the same page
    browser.get(browser.driver.current_url.replace("/browse?path=school/science",
                                                   "/browse?path=school"))
    got = browser.download(browser.css("a[href*='archive.zip?path=school/science']")[0])
    with zipfile.ZipFile(got) as zf:
        assert zf.read("essay.odt") == ESSAY


def test_download_a_journal_entry(browser: Browser, two_clients: Site) -> None:
    site = two_clients
    browser.sign_in(site, TEACHER, TEACHER_PW)
    browser.get(f"{site.url}/ui/clients/{FRESH}/volumes/datastore/latest")
    browser.click(browser.link("Open as Sugar Journal"))
    assert browser.heading().startswith("Journal")
    titles = [t.text for t in browser.css("li.entry .title")]
    assert len(titles) == 4
    assert [t.split(" — ")[0] for t in titles] == [f"Dibujo número {i}" for i in (3, 2, 1, 0)]
    thumbs = browser.css("li.entry img.thumb")
    assert len(thumbs) == 4
    assert all(browser.driver.execute_script("return arguments[0].naturalWidth", t) == 12
               for t in thumbs)  # the PNG previews really load
    assert "Paint" in browser.css("li.entry .activity")[0].text
    browser.shot("07-journal")
    browser.shot("07-journal-phone", width=390)
    # search narrows the list (a plain GET form)
    browser.one("#jq").send_keys("número 2")
    browser.click(browser.one("form.filter button"))
    entry = browser.one("li.entry")
    assert entry.find_element("css selector", ".title").text.startswith("Dibujo número 2")
    got = browser.download(entry.find_element("css selector", "a.button"))
    assert got.suffix == ".xoj"
    uid = "00000002-0000-4000-8000-000000000002"
    (sid,) = site.store.snapshot_ids(FRESH, "datastore")
    expected = io.BytesIO()
    with access.OpenSnapshot(site.store, FRESH, "datastore", sid) as snap:
        journal.write_bundle(snap.fd, uid, expected)
    assert got.read_bytes() == expected.getvalue()
    with zipfile.ZipFile(got) as zf:
        assert sorted(zf.namelist()) == sorted([f"{uid}/_metadata.json", f"{uid}/{uid}",
                                                f"{uid}/preview/{uid}"])


def test_approve_a_pending_registration(browser: Browser, sites: Callable[..., Site]) -> None:
    site = sites("approve")
    blob = register_pending(site, PENDING, "Carla")
    browser.sign_in(site, ADMIN, ADMIN_PW)
    row = browser.one("#pending tbody tr")
    assert PENDING in row.text
    assert "Carla" in row.text
    assert "new device" in row.text
    browser.shot("08-pending")
    browser.click(row.find_element("css selector", f"button[aria-label^='Approve {PENDING} ']"))
    assert browser.driver.current_url.endswith("/ui/#pending")
    assert f"Approved the new key of {PENDING}" in browser.one(".flash-ok").text
    assert "No registration is waiting." in browser.text()
    browser.shot("09-approved")
    client = Registry(site.store).get(PENDING)
    assert [(k.blob, k.status) for k in client.keys] == [(blob, "active")]
    assert blob in (site.store.ssh_dir / "authorized_keys").read_text()


def test_approve_the_device_not_the_impostor(browser: Browser,
                                             sites: Callable[..., Site]) -> None:
    """Two requests wait for one serial; the admin approves the device's by its key's
    fingerprint, and the impostor's key gets nowhere."""
    site = sites("impostor")
    device = register_pending(site, PENDING, "Carla")
    impostor = register_pending(site, PENDING, "Mallory", name="impostor")
    fingerprints = {r.key.blob: r.key.fingerprint
                    for r in registration.pending(Registry(site.store))}
    browser.sign_in(site, ADMIN, ADMIN_PW)
    rows = browser.css("#pending tbody tr")
    assert len(rows) == 2
    button = f"button[aria-label='Approve {PENDING} {fingerprints[device]}']"
    browser.click(browser.one(button))
    assert f"Approved the new key of {PENDING}" in browser.one(".flash-ok").text
    client = Registry(site.store).get(PENDING)
    assert [(k.blob, k.status) for k in client.keys] == [(device, "active")]
    assert client.nickname == "Carla"
    keys = (site.store.ssh_dir / "authorized_keys").read_text()
    assert device in keys
    assert impostor not in keys


def test_prune_after_confirmation(browser: Browser, sites: Callable[..., Site],
                                  tmp_path: Path) -> None:
    site = sites("prune")
    ids = prunable(site, PRUNED, tmp_path)
    browser.sign_in(site, ADMIN, ADMIN_PW)
    browser.click(browser.link(PRUNED))
    plan = browser.one("#prune").text
    assert "would delete 2 snapshots" in plan
    assert len(browser.css("tr.doomed")) == 2
    browser.shot("10-prune-plan")
    browser.click(browser.link("Prune now…"))
    assert browser.heading().startswith(f"Prune snapshots of {PRUNED}?")
    use = usage.cached(site.server.ctx(), PRUNED)  # the two old versions of work.odt, at least
    freed = sum(use.exclusive_of("documents", i) for i in ids[:2])
    assert freed > 120_000
    assert f"freeing about {human_bytes(freed)}" in browser.text()
    assert [c.text for c in browser.css("td[data-label=Snapshot]")] == ids[:2]
    browser.shot("11-prune-confirm")
    assert site.store.snapshot_ids(PRUNED, "documents") == ids  # asking deleted nothing
    browser.click(browser.one("#confirm-prune"))
    assert browser.driver.current_url == f"{site.url}/ui/clients/{PRUNED}"
    assert "Pruned 2 snapshots" in browser.one(".flash-ok").text
    assert "Nothing to prune" in browser.one("#prune").text
    browser.shot("12-pruned")
    assert site.store.snapshot_ids(PRUNED, "documents") == ids[2:]
    deadline = time.monotonic() + 20  # the trees are deleted in the background
    while os.listdir(site.store.trash_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(site.store.trash_dir) == []


def test_teacher_cannot_prune_approve_or_alias(browser: Browser, sites: Callable[..., Site],
                                               tmp_path: Path) -> None:
    site = sites("teacher")
    register_pending(site, PENDING, "Carla")
    ids = prunable(site, PRUNED, tmp_path)
    site.server.add_client(FRESH)
    browser.sign_in(site, TEACHER, TEACHER_PW)
    # the pages offer nothing that changes anything
    assert PENDING in browser.one("#pending").text
    assert browser.css("#pending button") == []
    assert "Only an administrator can approve" in browser.one("#pending").text
    browser.shot("13-teacher-dashboard")
    browser.get(f"{site.url}/ui/clients/{PRUNED}")
    assert browser.css("a[href$='/prune']") == []
    assert browser.css("#aliases form") == []
    assert "Only an administrator can prune." in browser.one("#prune").text
    browser.shot("14-teacher-client")
    browser.get(f"{site.url}/ui/clients/{PRUNED}/prune")
    assert browser.heading() == "Forbidden"
    assert "Only an administrator can prune snapshots" in browser.text()
    browser.shot("15-teacher-prune-refused")
    # forms built by hand in the browser, with the teacher's valid CSRF token
    browser.get(f"{site.url}/ui/clients/{PRUNED}")
    token = browser.csrf()
    attempts = [
        (f"/ui/registrations/{PENDING}/approve", [("csrf", token)], "approve a registration"),
        (f"/ui/registrations/{PENDING}/reject", [("csrf", token)], "reject a registration"),
        (f"/ui/clients/{PRUNED}/prune",
         [("csrf", token), ("confirm", "yes"), *[("snapshot", f"documents/{i}") for i in ids]],
         "prune snapshots"),
        (f"/ui/clients/{PRUNED}/aliases/add", [("csrf", token), ("alias", FRESH)],
         "change aliases"),
    ]
    for action, fields, what in attempts:
        browser.post_form(action, fields)
        assert browser.heading() == "Forbidden", action
        assert f"Only an administrator can {what}" in browser.text()
    assert [r.serial for r in registration.pending(Registry(site.store))] == [PENDING]
    assert site.store.snapshot_ids(PRUNED, "documents") == ids
    assert Registry(site.store).get(PRUNED).aliases == []


def test_client_names_and_titles_are_text(browser: Browser, sites: Callable[..., Site],
                                          tmp_path: Path) -> None:
    site = sites("xss")
    site.server.add_client(EVIL, EVIL_NICKNAME)
    src = tmp_path / "evil"
    (src / EVIL_DIR).mkdir(parents=True)
    (src / EVIL_DIR / "inner.txt").write_text("x\n")
    for name in EVIL_FILES:
        (src / name).write_text("payload\n")
    push(site.server, EVIL, src)
    ds = datastore(tmp_path / "ds", entries=2)
    for meta in ds.glob("*/*/metadata"):
        (meta / "title").write_text(EVIL_TITLE)
        (meta / "activity").write_text(EVIL_ACTIVITY)
    push(site.server, EVIL, ds, "datastore")
    set_xattrs(site.store.client_dir(EVIL), {"last_error": PAYLOAD_ALERT})
    register_pending(site, PENDING, EVIL_NICKNAME)

    browser.sign_in(site, ADMIN, ADMIN_PW)
    nicknames = [n.text for n in browser.css("td.nickname")]
    # the client's row, and the pending registration's (which makes no client before
    # it is approved)
    assert nicknames.count(EVIL_NICKNAME) == 2
    assert PAYLOAD_ALERT in [e.text for e in browser.css("#clients td.error-cell")]
    browser.shot("16-xss-dashboard")
    browser.get(f"{site.url}/ui/clients/{EVIL}")
    assert browser.one("h1 .nickname").text == EVIL_NICKNAME
    assert browser.driver.title == f"{EVIL} · xsbackup"
    browser.shot("17-xss-client")
    browser.get(f"{site.url}/ui/clients/{EVIL}/volumes/documents/latest")
    names = [e.text for e in browser.css("td.name .fname")]
    assert names == [EVIL_DIR, *sorted(EVIL_FILES, key=str.casefold)]
    browser.shot("18-xss-browse")
    browser.click(browser.link(f"{EVIL_DIR}/"))
    assert browser.css(".crumbs li")[-1].text == EVIL_DIR
    assert browser.heading().startswith(EVIL_DIR)
    assert [e.text for e in browser.css("td.name .fname")] == ["inner.txt"]
    browser.get(f"{site.url}/ui/clients/{EVIL}/volumes/datastore/latest")
    browser.click(browser.link("Open as Sugar Journal"))
    titles = [t.text for t in browser.css("li.entry .title")]
    assert titles == [EVIL_TITLE, EVIL_TITLE]
    assert browser.css("li.entry .activity")[0].get_attribute("title") == EVIL_ACTIVITY
    assert browser.css("li.entry img.thumb")[0].get_attribute("alt") == \
        f"Preview of {EVIL_TITLE}"
    browser.shot("19-xss-journal")
    # a search for the payload finds it and shows it as text in the search box too
    browser.one("#jq").send_keys(PAYLOAD_SCRIPT)
    browser.click(browser.one("form.filter button"))
    assert browser.one("#jq").get_attribute("value") == PAYLOAD_SCRIPT
    assert len(browser.css("li.entry")) == 2
    # downloading an evil file name gives its bytes under a harmless name
    browser.get(f"{site.url}/ui/clients/{EVIL}/volumes/documents/latest")
    row = next(r for r in browser.css("tr.kind-file")
               if r.find_element("css selector", ".fname").text == EVIL_FILES[1])
    got = browser.download(row.find_element("css selector", "td.name a"))
    assert got.read_bytes() == b"payload\n"
    assert "<" not in got.name



def test_a_cross_site_form_cannot_sign_the_browser_in(browser: Browser,
                                                      sites: Callable[..., Site]) -> None:
    """Login CSRF: another site's page posts the classic ``text/plain`` form (its field
    name carries JSON) to ``/api/v1/session``; the browser must stay signed out."""
    import http.server

    site = sites("login-csrf")
    name, value = f'{{"user": "{ADMIN}", "password": "{ADMIN_PW}", "x": "', '"}'
    page = (f'<!doctype html><form id="f" method="post" enctype="text/plain" '
            f'action="{site.url}/api/v1/session"><input type="hidden" name=\'{name}\' '
            f'value=\'{value}\'></form><script>document.getElementById("f").submit()'
            '</script>').encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            return None

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.driver.delete_all_cookies()
        browser.get(f"{site.url}/ui/login")  # a first visit, as a real user would have
        browser.driver.delete_all_cookies()
        # localhost and 127.0.0.1 are different sites to the browser
        browser.driver.get(f"http://localhost:{evil.server_address[1]}/")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser.driver, 20).until(
            lambda d: d.current_url.startswith(f"{site.url}/api/v1/session"))
        assert "error" in browser.text()
        assert browser.driver.get_cookie("xsbackup_session") is None
        browser.get(f"{site.url}/ui/")
        assert "/ui/login" in browser.driver.current_url
    finally:
        evil.shutdown()
        evil.server_close()
