"""Registration on a fleet member with placement on: the device is registered on the
server rendezvous hashing assigns, the reply carries that server's backupurl, and the
stock ds-backup command lines then back up there."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Sshd
from tests.fleet_kit import fleet_of
from tests.integration.test_http import serving
from xsbackup.clients.placement import assign
from xsbackup.fleet.forward import decode_request, encode_request

pytestmark = pytest.mark.integration

MEMBERS = [("a", 1.0), ("b", 1.0)]


def serial_on(name: str) -> str:
    return next(sn for n in range(1000)
                if assign(sn := f"SHP{n:08d}", MEMBERS) == name)


def test_request_words_round_trip() -> None:
    word = encode_request("SN1", "Ana's XO; rm -rf /", "u", "AAAA key")
    assert word.replace("=", "").replace("-", "").replace("_", "").isalnum()
    assert decode_request(word) == {"serial": "SN1", "nickname": "Ana's XO; rm -rf /",
                                    "uuid": "u", "pubkey": "AAAA key"}
    with pytest.raises(ValueError, match="not a registration request"):
        decode_request("!!!")


def test_registration_is_placed_and_ds_backup_lands_there(tmp_path: Path,
                                                          host_key: Path) -> None:
    with fleet_of(tmp_path / "fleet", host_key, ("a", "b")) as kit:
        a, b = kit.members["a"].server, kit.members["b"].server
        b.configure('[server]\npublic_host = "b.school.lan"\n')
        a.configure(f'[fleet]\ninventory = "{kit.inventory}"\nplace_as = "a"\n')
        away, home = serial_on("b"), serial_on("a")
        key = tmp_path / "xo_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        blob = key.with_suffix(".pub").read_text().split()[1]
        with serving(a) as web:
            reply = web.register(away, "Ana", "uuid-1", blob)
            assert reply == {"success": "OK", "backupurl": f"{away}@b.school.lan:backup",
                             "jabberserver": "b.school.lan"}
            assert not a.store.client_dir(away).exists()
            assert (b.store.client_dir(away) / "client.json").exists()
            # The assigned server's own policy applies: closed there, refused here too.
            b.configure('[registration]\nnew_serial = "closed"\n')
            other = next(sn for n in range(1000, 2000)
                         if assign(sn := f"SHP{n:08d}", MEMBERS) == "b")
            assert web.register(other, "", "", blob)["success"] == "DENIED"
            # A serial placed here registers here, as without a fleet.
            key2 = tmp_path / "xo_key2"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key2)],
                           check=True)
            blob2 = key2.with_suffix(".pub").read_text().split()[1]
            assert web.register(home, "", "", blob2)["backupurl"] == f"{home}@127.0.0.1:backup"
            assert (a.store.client_dir(home) / "client.json").exists()

        # ds-backup's command lines, against the server the backupurl named.
        user = pwd.getpwuid(os.getuid()).pw_name
        ssh = Sshd(kit.members["b"].port, tmp_path / "b.log", user).rsh(key)
        docs = tmp_path / "Documents"
        docs.mkdir()
        (docs / "essay.txt").write_text("my essay\n")
        r = subprocess.run(["rsync", "-z", "-rlt", "--partial", "--delete", "--timeout=160",
                            "-e", ssh, f"{docs}/", "127.0.0.1:documents"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        flag = tmp_path / "flag"
        flag.write_bytes(b"")
        r = subprocess.run(["rsync", "-z", "-rlt", "--timeout", "10", "-T", "/tmp", "-e", ssh,
                            str(flag), f"127.0.0.1:/var/lib/ds-backup/completion/{away}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        b.xsbackup("postprocess")
        assert len(b.store.snapshot_ids(away, "documents")) == 1
