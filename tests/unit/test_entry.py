"""The ``xsbackup`` script's entry (``cli.entry``): the forced command runs without click,
answers exactly as ``xsbackup ssh-command`` did, and every other line is the click CLI's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import XSBACKUP, Server
from xsbackup.cli.entry import forced_args
from xsbackup.clients.registry import Registry
from xsbackup.errors import ClientDisabled, RequestRefused, UnknownClient


@pytest.mark.parametrize(("argv", "expected"), [
    (["--root", "R", "ssh-command", "--client", "SN"], {"--root": "R", "--client": "SN"}),
    (["--root=R", "--config=C", "ssh-command", "--client=SN"],
     {"--root": "R", "--config": "C", "--client": "SN"}),
    (["ssh-command", "--client", "SN"], {"--client": "SN"}),
    (["--root", "R", "ssh-command", "--client", "SN", "--restore-key", "0123456789abcdef"],
     {"--root": "R", "--client": "SN", "--restore-key": "0123456789abcdef"}),
    (["--root", "R", "ssh-command", "--restore-key", "K"], None),
    (["--root", "R", "ssh-command"], None),
    (["--root", "R", "ssh-command", "--client"], None),
    (["--root", "R", "ssh-command", "--client", "SN", "--help"], None),
    (["--root", "R", "--root", "S", "ssh-command", "--client", "SN"], None),
    (["ssh-command", "--root", "R", "--client", "SN"], None),
    (["--client", "SN", "ssh-command"], None),
    (["ssh-command", "--client", "-h"], None),
    (["ssh-command", "--client", ""], None),
    (["status"], None),
    (["--help"], None),
    ([], None),
])
def test_forced_args_take_only_the_forced_command_line(argv: list[str],
                                                       expected: dict[str, str] | None) -> None:
    assert forced_args(argv) == expected


def _forced(server: Server, serial: str, command: str | None,
            *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SSH_CONNECTION": "127.0.0.1 5 127.0.0.1 22"}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    return subprocess.run([XSBACKUP, "--root", str(server.root), *extra, "ssh-command",
                           "--client", serial], capture_output=True, text=True, env=env,
                          check=False)


def test_true_answers_as_the_dispatcher_does(server: Server) -> None:
    server.add_client("SHF00000001")
    server.add_client("SHF00000002")
    Registry(server.store).modify("SHF00000002", lambda c: setattr(c, "disabled", True))
    ok = _forced(server, "SHF00000001", "true")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    disabled = _forced(server, "SHF00000002", "true")
    assert disabled.returncode != 0
    assert disabled.stderr == "xsbackup: client SHF00000002 is disabled\n"
    unknown = _forced(server, "SHF00000009", "true")
    assert unknown.stderr == "xsbackup: unknown client SHF00000009\n"
    bad = _forced(server, "no/such", "true")
    assert bad.stderr == "xsbackup: unknown client 'no/such'\n"
    login = _forced(server, "SHF00000001", None)
    assert "interactive login is not allowed" in login.stderr
    assert (disabled.returncode, unknown.returncode, bad.returncode, login.returncode) == (
        ClientDisabled.exit_code, UnknownClient.exit_code, UnknownClient.exit_code,
        RequestRefused.exit_code)


def test_a_corrupt_record_is_the_dispatchers_to_report(server: Server) -> None:
    server.add_client("SHF00000001")
    (server.store.client_dir("SHF00000001") / "client.json").write_text("[1, 2")
    r = _forced(server, "SHF00000001", "true")
    assert r.returncode != 0
    assert r.stderr.startswith("xsbackup: server error")


def test_errors_before_dispatch_keep_the_cli_form(server: Server) -> None:
    server.add_client("SHF00000001")
    r = _forced(server, "SHF00000001", "rsync --server -x .", "--config", "/nonexistent.toml")
    assert (r.returncode, r.stderr) == (
        3, "xsbackup: error: configuration file /nonexistent.toml does not exist\n")


def test_other_lines_are_the_click_cli(server: Server) -> None:
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "ssh-command", "--help"],
                       capture_output=True, text=True, check=True)
    assert "The forced command" in r.stdout
    r = subprocess.run([XSBACKUP, "ssh-command"], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "Missing option '--client'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "xsbackup", "--version"], capture_output=True,
                       text=True, check=True)
    assert "version" in r.stdout
