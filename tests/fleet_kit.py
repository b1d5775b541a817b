"""A fleet on one machine: state roots, each behind its own loopback OpenSSH sshd, and
an inventory naming them, reached with one admin key (no forced command)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import XSBACKUP, Server, run_cli, running_sshd
from xsbackup.store import init_root


@dataclass
class Member:
    name: str
    server: Server
    port: int
    sshd_dir: Path

    def stop_sshd(self) -> None:
        """Stop this member's sshd (the one the fixture started, by its pid file)."""
        pid = int((self.sshd_dir / "sshd.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


@dataclass
class FleetKit:
    base: Path
    admin_key: Path
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def inventory(self) -> Path:
        return self.base / "fleet.toml"

    def write_inventory(self, overrides: dict[str, dict[str, object]] | None = None,
                        only: tuple[str, ...] = ()) -> Path:
        user = pwd.getpwuid(os.getuid()).pw_name
        out = []
        for name, m in self.members.items():
            if only and name not in only:
                continue
            table: dict[str, object] = {
                "name": name, "host": f"{user}@127.0.0.1", "port": m.port,
                "root": str(m.server.root), "identity": str(self.admin_key),
                "command": XSBACKUP, "weight": 1, "site": f"school-{name}"}
            table.update((overrides or {}).get(name, {}))
            out.append("[[server]]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                 for k, v in table.items()))
        self.inventory.write_text("\n".join(out))
        return self.inventory

    def fleet(self, *args: str, timeout: str = "20") -> tuple[int, str]:
        r = run_cli("fleet", "--inventory", str(self.inventory), "--timeout", timeout, *args)
        return r.exit_code, r.stdout


@contextlib.contextmanager
def fleet_of(base: Path, host_key: Path, names: tuple[str, ...]) -> Iterator[FleetKit]:
    """``names`` state roots under ``base``, each behind its own sshd."""
    admin_dir = base / "admin"
    admin_dir.mkdir(parents=True)
    admin_key = admin_dir / "id_admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin", "-f",
                    str(admin_key)], check=True)
    admin_keys = admin_dir / "authorized_keys"
    admin_keys.write_text(admin_key.with_suffix(".pub").read_text())
    kit = FleetKit(base, admin_key)
    with contextlib.ExitStack() as stack:
        for name in names:
            d = base / name
            root = d / "state"
            init_root(root)
            keydir = d / "keys"
            keydir.mkdir()
            server = Server(root, keydir)
            server.configure("")
            port, _log = stack.enter_context(running_sshd(
                d / "sshd", host_key, root / "ssh" / "authorized_keys",
                ("PermitRootLogin prohibit-password",), more_keys=(admin_keys,)))
            kit.members[name] = Member(name, server, port, d / "sshd")
        kit.write_inventory()
        yield kit
