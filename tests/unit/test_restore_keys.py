"""One-time restore keys in ``authorized_keys``: rendered with their expiry and forced
command, read back by the embedded server's lookup, and left out when they cannot be
used."""

from __future__ import annotations

import time
from pathlib import Path

from xsbackup.clients.keys import (
    AuthorizedLine,
    KeyEntry,
    KeyIndex,
    RestoreKey,
    authorized_keys_text,
    parse_line,
)

SN, OTHER = "SHF00000RK1", "SHF00000RK2"
BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIHbE7m1LzM0b1o1rEwU4sYQ8dQy3v4Xh0Ue4b3iLqJpS"
OWN = "AAAAC3NzaC1lZDI1NTE5AAAAIC0KJ1m7rYQ7c8pP6bX6H7aW1JkGJzE6xT8u1G2uJd0x"


def key(key_id: str = "0123456789abcdef", serial: str = SN,
        expires: float | None = None) -> RestoreKey:
    return RestoreKey(key_id, serial, "ssh-ed25519", BLOB, "documents", "2026-01-01T000000Z",
                      int(time.time() + 300 if expires is None else expires))


def render(*keys: RestoreKey, disabled: bool = False) -> list[str]:
    index = {SN: KeyEntry(disabled, (("ssh-ed25519", OWN),)), OTHER: KeyEntry(False, ())}
    text, _ = authorized_keys_text(index, Path("/srv/xs"), "/usr/bin/xsbackup", keys)
    return [line for line in text.splitlines() if "--restore-key" in line]


def test_a_restore_key_line_reads_back_as_its_grant() -> None:
    k = key()
    (line,) = render(k)
    assert line.startswith('restrict,expiry-time="')
    assert f"--client {SN} --restore-key {k.id}" in line
    assert parse_line(line) == AuthorizedLine("ssh-ed25519", BLOB, SN, k.id, k.expires)


def test_unusable_restore_keys_get_no_line() -> None:
    assert render(key(expires=time.time() - 1)) == []           # expired
    assert render(key(), disabled=True) == []                   # its client is disabled
    assert render(key(serial="SHF0000GONE")) == []              # its client is gone
    assert render(key(key_id="../../etc")) == []                # not an id


def test_the_embedded_lookup_keeps_restore_keys_apart(tmp_path: Path) -> None:
    index = {SN: KeyEntry(False, (("ssh-ed25519", OWN),))}
    live, stale = key(), key("fedcba9876543210", expires=time.time() + 1)
    text, _ = authorized_keys_text(index, Path("/srv/xs"), "/usr/bin/xsbackup", [live])
    path = tmp_path / "authorized_keys"
    path.write_text(text)
    keys = KeyIndex(path)
    assert keys.lookup("ssh-ed25519", OWN) == {SN}
    assert keys.lookup("ssh-ed25519", BLOB) == set()  # never a client's own key
    grant = keys.restore_key("ssh-ed25519", BLOB)
    assert grant is not None
    assert (grant.serial, grant.restore_key) == (SN, live.id)
    # a line whose expiry time has passed is no key, even while it is still in the file
    line = render(stale)[0].replace(BLOB, OWN[:-4] + "AAAA")
    past = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() - 5))
    expired = line.split('expiry-time="')[0] + f'expiry-time="{past}"' + line.split('Z"', 1)[1]
    parsed = parse_line(expired)
    assert parsed is not None
    assert parsed.expires < time.time()
    path.write_text(text + expired + "\n")
    assert keys.restore_key("ssh-ed25519", OWN[:-4] + "AAAA") is None
