"""Registry, key parsing and the admin CLI (in-process: parsing, output, exit codes)."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, run_cli
from xsbackup.clients.registry import parse_key
from xsbackup.errors import InvalidKey


def blob(kind: str) -> str:
    raw = struct.pack(">I", len(kind)) + kind.encode() + b"\x00\x00\x00\x01\x01"
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("kind", ["ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256"])
def test_bare_blob_type_is_read_from_the_blob(kind: str) -> None:
    assert parse_key(blob(kind)) == (kind, blob(kind))


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("not base64!", "not a valid base64"),
    (blob("ssh-foo"), "unsupported public key type"),
    (f"ssh-rsa {blob('ssh-ed25519')}", "key says 'ssh-rsa' but its blob is 'ssh-ed25519'"),
])
def test_bad_keys_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        parse_key(text)


def test_clients_lifecycle(server: Server, tmp_path: Path) -> None:
    r = server.cli("clients", "add", "SHF00000042", "--pubkey-blob", blob("ssh-dss"),
                   "--nickname", "old xo")
    assert "ssh-dss keys are stored but cannot authenticate transfers" in r.stdout
    key = server.add_client("SHF00000043")
    rows = orjson.loads(server.cli("clients", "list", "--json").stdout)
    assert [(c["serial"], c["nickname"]) for c in rows] == [("SHF00000042", "old xo"),
                                                            ("SHF00000043", "")]
    keys_file = Path(server.cli("keys").stdout.strip())
    text = keys_file.read_text()
    assert f'command="{XSBACKUP} --root {server.root} ssh-command --client SHF00000043"' in text
    assert text.count("restrict,command=") == 1  # the DSA key is not usable for transfers
    assert key.with_suffix(".pub").read_text().split()[1] in text
    dup = server.cli("clients", "add", "SHF00000043", "--pubkey-blob", blob("ssh-rsa"),
                     check=False)
    assert dup.exit_code == 7
    bad = server.cli("clients", "add", "../evil", "--pubkey-blob", blob("ssh-rsa"),
                     check=False)
    assert bad.exit_code == 9
    server.cli("clients", "remove", "SHF00000043")
    assert (server.root / "clients" / "SHF00000043").is_dir()  # data kept
    assert "SHF00000043" not in keys_file.read_text()
    server.cli("clients", "remove", "SHF00000042", "--purge")
    assert not (server.root / "clients" / "SHF00000042").exists()
    assert os.listdir(server.root / "trash") == []  # emptied by the backend, not left over
    gone = server.cli("clients", "remove", "SHF00000042", check=False)
    assert gone.exit_code == 6
    assert gone.stderr == "xsbackup: error: unknown client SHF00000042\n"
    assert gone.stdout == ""


def test_init_refuses_without_xattrs_support() -> None:
    # /proc does not support user xattrs: init must refuse with a clear message.
    r = run_cli("--root", "/proc/xsbackup-test", "init")
    assert r.exit_code in (4, 5)
    assert r.stderr.startswith("xsbackup: error: ")
    assert len(r.stderr.splitlines()) == 1


def test_uninitialised_root_is_reported(tmp_path: Path) -> None:
    r = run_cli("--root", str(tmp_path / "nothing"), "status")
    assert r.exit_code == 4
    assert "is not an xsbackup state root" in r.stderr


def test_cjson_check_cli(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.cjson", tmp_path / "bad.cjson"
    good.write_bytes(b'{"a":1}')
    bad.write_bytes(b'{"b":1,"a":2}')
    ok = run_cli("cjson", "check", str(good))
    assert ok.exit_code == 0
    assert ok.stdout.strip() == f"{good}: canonical"
    r = run_cli("cjson", "check", "--json", str(good), str(bad))
    assert r.exit_code == 1
    rows = orjson.loads(r.stdout)
    assert [row["status"] for row in rows] == ["canonical", "noncanonical"]
    assert rows[1]["offset"] == 7
