"""``xsbackup [--root R] [--config F] status --json`` runs without click (``cli.entry``,
what every ``fleet status`` runs on each server) and answers as the click command does."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from tests.conftest import XSBACKUP, Server
from xsbackup.cli.entry import status_args


@pytest.mark.parametrize(("argv", "expected"), [
    (["--root", "R", "status", "--json"], {"--root": "R"}),
    (["--root=R", "--config=C", "status", "--json"], {"--root": "R", "--config": "C"}),
    (["status", "--json"], {}),
    (["status"], None),
    (["--json", "status"], None),
    (["status", "--json", "--help"], None),
    (["--root", "R", "--root", "S", "status", "--json"], None),
    (["--root", "status", "--json"], None),
    (["--root", "-x", "status", "--json"], None),
    (["--client", "SN", "status", "--json"], None),
    (["clients", "status", "--json"], None),
])
def test_status_args_take_only_that_line(argv: list[str],
                                         expected: dict[str, str] | None) -> None:
    assert status_args(argv) == expected


def _volatile(doc: dict[str, object]) -> dict[str, object]:
    """The document without what moves between two runs (free space, ages)."""
    doc = dict(doc)
    doc.pop("disk")
    doc["clients"] = [{k: v for k, v in c.items() if not k.startswith("age")}
                      for c in doc["clients"]]  # type: ignore[attr-defined]
    return doc


def test_status_json_is_the_click_commands_document(server: Server) -> None:
    server.add_client("SHF00000001")
    quick = subprocess.run([XSBACKUP, "--root", str(server.root), "status", "--json"],
                           capture_output=True, check=True)
    clicked = server.cli("status", "--json")
    assert _volatile(orjson.loads(quick.stdout)) == _volatile(orjson.loads(clicked.output))
    assert quick.stdout.endswith(b"}\n")


def test_status_json_errors_are_one_line_with_the_cli_code(server: Server) -> None:
    r = subprocess.run([XSBACKUP, "--root", str(server.root / "none"), "status", "--json"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 4
    assert r.stderr == (f"xsbackup: error: {server.root / 'none'} is not an xsbackup state "
                        f"root (run: xsbackup --root {server.root / 'none'} init)\n")
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "--config", "/nonexistent.toml",
                        "status", "--json"], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (
        3, "xsbackup: error: configuration file /nonexistent.toml does not exist\n")
