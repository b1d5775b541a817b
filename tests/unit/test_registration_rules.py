"""Registration and key-ownership rules on a real state root, in process: the key index
and authorized_keys kept in step incrementally, the rate-limit window (with a given
clock), approval racing ownership, and state roots written before these rules."""

from __future__ import annotations

import base64
import datetime as dt
import os
import struct
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server
from xsbackup.clients import registration
from xsbackup.clients.keys import fingerprint
from xsbackup.clients.registry import Client, ClientKey, Registry, write_authorized_keys
from xsbackup.config import Settings
from xsbackup.errors import KeyInUse, NothingPending
from xsbackup.store import atomic_write

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


def key(kind: str = "ssh-ed25519") -> str:
    raw = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", 32) + os.urandom(32)
    return base64.b64encode(raw).decode()


def reg(settings: Settings, registry: Registry, serial: str, blob: str, nickname: str = "",
        remote: str = "10.0.0.1", now: dt.datetime = T0) -> str:
    reply = registration.register(settings, registry, serial, nickname, "", blob, "xs",
                                  remote, now=now)
    return reply["success"]


def snapshot_of_keys(server: Server) -> tuple[str, bytes]:
    return ((server.root / "ssh" / "authorized_keys").read_text(),
            (server.root / "ssh" / "keys.json").read_bytes())


def test_incremental_keys_equal_a_full_rebuild(server: Server) -> None:
    settings = server.settings().replace(registration__new_key="open",
                                         registration__max_new_per_address_per_hour=0)
    registry = Registry(server.store)
    blobs = {f"SHF{i:08d}": key() for i in range(12)}
    for serial, blob in blobs.items():
        assert reg(settings, registry, serial, blob) == "OK"
    assert reg(settings, registry, "SHFDSA00001", key("ssh-dss")) == "UNSUPPORTED_KEY"
    assert reg(settings, registry, "SHF00000003", key()) == "OK"  # a second key
    registry.modify("SHF00000004", lambda c: setattr(c, "disabled", True))
    registry.remove("SHF00000005")
    registry.remove("SHF00000006", purge=True)
    registry.add_alias("SHF00000007", "SHF00000008")  # no key change: no rewrite needed
    incremental = snapshot_of_keys(server)
    write_authorized_keys(registry)
    assert snapshot_of_keys(server) == incremental
    text = incremental[0]
    assert blobs["SHF00000001"] in text
    for gone in ("SHF00000004", "SHF00000005", "SHF00000006", "SHFDSA00001"):
        assert f"--client {gone}" not in text
    # Without an index (a state root from before it), the next change rebuilds it.
    (server.root / "ssh" / "keys.json").unlink()
    assert reg(settings, registry, "SHF00000099", key()) == "OK"
    after = snapshot_of_keys(server)
    write_authorized_keys(registry)
    assert snapshot_of_keys(server) == after


def test_rate_limit_window(server: Server) -> None:
    settings = server.settings().replace(registration__max_new_per_address_per_hour=2,
                                         registration__max_new_per_hour=0)
    registry = Registry(server.store)
    minute = dt.timedelta(minutes=1)
    assert reg(settings, registry, "SN1", key(), now=T0) == "OK"
    assert reg(settings, registry, "SN2", key(), now=T0 + minute) == "OK"
    assert reg(settings, registry, "SN3", key(), now=T0 + 2 * minute) == "TRY_LATER"
    assert reg(settings, registry, "SN3", key(), remote="10.0.0.2",
               now=T0 + 2 * minute) == "OK"
    # A new serial waiting for approval counts as well.
    waiting = settings.replace(registration__new_serial="approve")
    assert reg(waiting, registry, "SN4", key(), remote="10.0.0.2",
               now=T0 + 3 * minute) == "PENDING"
    assert reg(waiting, registry, "SN5", key(), remote="10.0.0.2",
               now=T0 + 3 * minute) == "TRY_LATER"
    # An hour after the first, that address may register one more.
    assert reg(settings, registry, "SN6", key(), now=T0 + 59 * minute) == "TRY_LATER"
    assert reg(settings, registry, "SN6", key(), now=T0 + 60 * minute) == "OK"
    # What is older than the hour is forgotten.
    recent = registry.registrations().recent
    assert [a for _, a in recent] == ["10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.1"]
    assert reg(settings, registry, "SN7", key(), now=T0 + 62 * minute) == "OK"
    assert [a for _, a in registry.registrations().recent] == [
        "10.0.0.2", "10.0.0.1", "10.0.0.1"]


def test_a_waiting_request_changes_nothing(server: Server) -> None:
    settings = server.settings()
    registry = Registry(server.store)
    own, new = key(), key()
    assert reg(settings, registry, "SN1", own, "Ana") == "OK"
    record = (server.root / "clients" / "SN1" / "client.json").read_bytes()
    keys = snapshot_of_keys(server)
    assert reg(settings, registry, "SN1", new, "Mallory") == "PENDING"
    assert reg(settings, registry, "SN1", new, "Mallory again") == "PENDING"
    assert (server.root / "clients" / "SN1" / "client.json").read_bytes() == record
    assert snapshot_of_keys(server) == keys
    (request,) = registration.pending(registry)
    assert (request.nickname, request.remote, request.key.fingerprint) == (
        "Mallory", "10.0.0.1", fingerprint(new))
    # Fingerprints are accepted with or without their SHA256: prefix.
    bare = fingerprint(new).removeprefix("SHA256:")
    assert registration.approve(registry, "SN1", bare).nickname == "Mallory"


def test_approval_respects_ownership(server: Server) -> None:
    settings = server.settings().replace(registration__new_serial="approve")
    registry = Registry(server.store)
    shared, other = key(), key()
    # Two serials may ask for one key; approving one drops the other's request.
    assert reg(settings, registry, "SN1", shared) == "PENDING"
    assert reg(settings, registry, "SN2", shared) == "PENDING"
    assert reg(settings, registry, "SN3", other) == "PENDING"
    registration.approve(registry, "SN1")
    assert [r.serial for r in registration.pending(registry)] == ["SN3"]
    with pytest.raises(NothingPending):
        registration.approve(registry, "SN2")
    # The admin gave SN3's key to another client meanwhile: approval refuses, and the
    # request stays for the admin to reject.
    registry.add("SN4", f"ssh-ed25519 {other}")
    with pytest.raises(KeyInUse, match="this key already belongs to client SN4"):
        registration.approve(registry, "SN3")
    assert [r.serial for r in registration.pending(registry)] == ["SN3"]
    assert not registry.exists("SN3")
    with pytest.raises(KeyInUse):
        registry.modify("SN1", lambda c: c.keys.append(ClientKey("ssh-ed25519", other, "")))


def test_a_state_root_from_before_the_rules(server: Server) -> None:
    """Records written by an older version: two clients holding one key, and a pending
    key kept inside a record. ``xsbackup keys`` authorises the shared key for neither,
    says so, and moves the pending key to the requests."""
    shared, own, waiting = key(), key(), key()
    stamp = T0.isoformat()
    records = {
        "AAATTACKER1": Client("AAATTACKER1", keys=[ClientKey("ssh-ed25519", shared, stamp)]),
        "SHF00112233": Client("SHF00112233", nickname="Ana", keys=[
            ClientKey("ssh-ed25519", shared, stamp), ClientKey("ssh-ed25519", own, stamp),
            ClientKey("ssh-ed25519", waiting, stamp, "pending")]),
    }
    for serial, client in records.items():
        (server.root / "clients" / serial).mkdir()
        atomic_write(server.root / "clients" / serial / "client.json", client.to_json())
    r = server.xsbackup("keys")
    assert r.stderr == (f"warning: key {fingerprint(shared)} is registered to AAATTACKER1, "
                        "SHF00112233; it authenticates none of them until it is removed "
                        "from all but one\n")
    text = (server.root / "ssh" / "authorized_keys").read_text()
    assert shared not in text
    assert own in text
    assert waiting not in text
    rows = orjson.loads(server.xsbackup("clients", "pending", "--json").stdout)
    assert [(r["serial"], r["fingerprint"]) for r in rows] == [
        ("SHF00112233", fingerprint(waiting))]
    registry = Registry(server.store)
    assert [k.blob for k in registry.get("SHF00112233").keys] == [shared, own]
    # The admin can still disable and remove the squatter; then the key is the victim's.
    server.xsbackup("clients", "disable", "AAATTACKER1")
    server.xsbackup("clients", "remove", "AAATTACKER1")
    text = (server.root / "ssh" / "authorized_keys").read_text()
    assert text.count(shared) == 1
    assert f'{XSBACKUP} --root {server.root} ssh-command --client SHF00112233"' in text
    assert server.xsbackup("keys").stderr == ""


def test_pending_cli_output(server: Server, tmp_path: Path) -> None:
    settings = server.settings().replace(registration__new_serial="approve")
    registry = Registry(server.store)
    blob = key()
    assert server.xsbackup("clients", "pending").stdout == \
        "no registration is waiting for approval\n"
    assert reg(settings, registry, "SHF00000001", blob, "Ana's XO") == "PENDING"
    out = server.xsbackup("clients", "pending").stdout
    assert out == (f"SHF00000001      {fingerprint(blob)} ssh-ed25519 from 10.0.0.1 at "
                   f"{T0.isoformat()}, nickname \"Ana's XO\" (new serial)\n")
    bad = server.xsbackup("clients", "approve", "SHF00000001", "--fingerprint", "SHA256:nope",
                          check=False)
    assert bad.returncode == 16
    assert bad.stderr == ("xsbackup: error: no registration of SHF00000001 with key "
                          f"SHA256:nope is waiting (waiting: {fingerprint(blob)})\n")
