"""Behind a reverse proxy: ``http.trusted_proxies`` makes the per-address limits count the
address the proxy names in ``X-Forwarded-For``, and only a trusted proxy is believed. A
real waitress server on loopback; the test plays the proxy (loopback is the peer)."""

from __future__ import annotations

import base64
import ipaddress
import os
import xmlrpc.client
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.integration.test_http import PASSWORD, Web, rsa_blob
from tests.integration.test_http_hardening import LOCKOUT, web_with
from xsbackup.clients.registry import Registry
from xsbackup.config import load
from xsbackup.errors import ConfigError
from xsbackup.web import users
from xsbackup.web.base import forwarded_for

pytestmark = pytest.mark.integration
TRUST_LOOPBACK = '[http]\ntrusted_proxies = ["127.0.0.0/8", "::1"]\n'


@pytest.fixture
def alice(server: Server) -> None:
    users.add_user(server.store, "alice", PASSWORD, "admin")


def guess(web: Web, name: str, via: str) -> int:
    """One wrong password for ``name``, from ``via`` as the proxy reports it."""
    r = web.get("/metrics", user=name, password="wrong",
                headers={"X-Forwarded-For": via})
    return r.status


@pytest.mark.usefixtures("alice")
def test_failures_count_against_the_address_behind_a_trusted_proxy(server: Server) -> None:
    with web_with(server, LOCKOUT + TRUST_LOOPBACK) as web:
        # Three names, so only the address limit can lock: 10.0.0.1 guesses...
        assert [guess(web, f"nobody{i}", "10.0.0.1") for i in range(3)] == [401] * 3
        ok = web.get("/metrics", user="alice", headers={"X-Forwarded-For": "10.0.0.1"})
        assert ok.status == 429  # ...and is locked out, whatever the name
        # Another pupil behind the same proxy is not.
        assert web.get("/metrics", user="alice",
                       headers={"X-Forwarded-For": "10.0.0.2"}).status == 200
        # A client that prepends a forged hop is still counted by the hop the proxy saw.
        forged = web.get("/metrics", user="alice",
                         headers={"X-Forwarded-For": "10.0.0.2, 10.0.0.1"})
        assert forged.status == 429


@pytest.mark.usefixtures("alice")
def test_an_untrusted_peer_cannot_choose_its_address(server: Server) -> None:
    with web_with(server, LOCKOUT) as web:  # no trusted proxies
        # A guesser rotating X-Forwarded-For is still one address: loopback.
        assert [guess(web, f"nobody{i}", f"10.0.1.{i}") for i in range(3)] == [401] * 3
        r = web.get("/metrics", user="alice", headers={"X-Forwarded-For": "10.9.9.9"})
        assert r.status == 429


def test_registration_limits_count_the_forwarded_address(
        server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = ("[registration]\nmax_new_per_address_per_hour = 1\nnew_serial = \"open\"\n"
              + TRUST_LOOPBACK)
    with web_with(server, config) as web:

        def register(serial: str, via: str) -> str:
            transport = ForwardingTransport(via)
            with xmlrpc.client.ServerProxy(web.url + "/", transport=transport) as proxy:
                blob = rsa_blob(tmp_path, f"{serial}.key")
                return str(proxy.register(serial, serial, "uuid", blob)["success"])

        assert register("SHF00000101", "10.0.0.1") == "OK"
        assert register("SHF00000102", "10.0.0.1") != "OK"  # that address's one is used
        assert register("SHF00000103", "10.0.0.2") == "OK"  # a neighbour's is not
    refused = [r.getMessage() for r in caplog.records if "SHF00000102" in r.getMessage()]
    assert refused
    assert "from 10.0.0.1 refused" in refused[-1]


class ForwardingTransport(xmlrpc.client.Transport):
    def __init__(self, via: str) -> None:
        super().__init__()
        self.via = via

    def send_headers(self, connection: object, headers: list[tuple[str, str]]) -> None:
        super().send_headers(connection, [*headers, ("X-Forwarded-For", self.via)])  # type: ignore[arg-type]


# Distinct, well-formed ed25519 public key blobs (any 32 bytes are a valid encoding).
ED25519_BLOB = {c: base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
                                    + bytes([ord(c)]) * 32).decode() for c in "0123"}

NETS = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.1.0.0/16", "::1/128"))


@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the left is the client's
    ("127.0.0.1", "203.0.113.9, 10.1.2.3", "203.0.113.9"),  # skip a second trusted hop
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "not-an-address", "127.0.0.1"),
    ("127.0.0.1", "10.1.0.5", "10.1.0.5"),  # only proxies: the farthest one
    ("192.0.2.7", "203.0.113.9", "192.0.2.7"),  # an untrusted peer says nothing
    ("::1", "2001:db8::1", "2001:db8::1"),
])
def test_forwarded_for(peer: str, header: str, expected: str) -> None:
    assert forwarded_for(peer, header, NETS) == expected


def test_a_bad_proxy_entry_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "xsbackup.toml").write_text('[http]\ntrusted_proxies = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match=r"^http\.trusted_proxies: not an address"):
        load(tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"^XSBACKUP_HTTP_TRUSTED_PROXIES: not an address"):
        load(tmp_path / "none", environ={"XSBACKUP_HTTP_TRUSTED_PROXIES": "10.0.0.1,proxy"})


def test_availability_bounds_the_device_address_behind_a_proxy(server: Server) -> None:
    """The per-address bound applies to the device's address over HTTP: the proxy's
    (loopback) is never bounded, the one it names is."""
    serials = [f"SHF0000020{i}" for i in range(4)]
    for sn in serials:
        Registry(server.store).add(sn, f"ssh-ed25519 {ED25519_BLOB[sn[-1]]} {sn}", "")
    config = "[availability]\nmax_per_address = 2\n" + TRUST_LOOPBACK
    with web_with(server, config) as web:

        def ask(sn: str, via: str) -> int:
            return web.request("GET", f"/backup/1/available/{sn}",
                               headers={"X-Forwarded-For": via}).status

        assert ask(serials[0], "10.0.0.66") == 200
        assert ask(serials[1], "10.0.0.66") == 200
        assert ask(serials[2], "10.0.0.66") == 503  # that address holds its two places
        assert ask(serials[2], "10.0.0.7") == 200  # a device elsewhere still gets in
        assert ask(serials[3], "::ffff:10.0.0.66") == 503  # mapped v4 is the same device
    grants = sorted(os.listdir(server.root / "admissions"))
    assert grants == serials[:3]
