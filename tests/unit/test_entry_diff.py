"""``xsbackup [--root R] [--config F] diff SERIAL A B --json [--volume V]`` runs without
click (``cli.entry`` and ``cli.diff_json``) and answers as the click command does: the
same document, the same one-line errors and exit codes; any other line is click's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, local_push
from xsbackup.cli.diff_json import args
from xsbackup.errors import ClientNotFound, InvalidName, SnapshotNotFound
from xsbackup.snapshots import postprocess

SN = "SHF00LEANDF"


@pytest.mark.parametrize(("argv", "expected"), [
    (["diff", "SN", "a", "b", "--json"], {"serial": "SN", "a": "a", "b": "b"}),
    (["--root", "R", "diff", "--json", "SN", "a", "b"],
     {"--root": "R", "serial": "SN", "a": "a", "b": "b"}),
    (["--root=R", "--config=C", "diff", "SN", "--volume=v", "a", "b", "--json"],
     {"--root": "R", "--config": "C", "--volume": "v", "serial": "SN", "a": "a", "b": "b"}),
    (["diff", "SN", "a", "b", "--json", "--volume", "v"],
     {"--volume": "v", "serial": "SN", "a": "a", "b": "b"}),
    (["diff", "SN", "a", "b"], None),                      # text: click's
    (["diff", "SN", "a", "--json"], None),
    (["diff", "SN", "a", "b", "c", "--json"], None),
    (["diff", "SN", "a", "b", "--json", "--json"], None),
    (["diff", "SN", "a", "b", "--json", "--help"], None),
    (["diff", "SN", "a", "b", "--json", "--volume"], None),
    (["diff", "SN", "a", "b", "--json", "--volume", "v", "--volume", "w"], None),
    (["diff", "SN", "a", "b", "--json", "--volume", "-x"], None),
    (["diff", "--", "SN", "a", "b", "--json"], None),
    (["--root", "diff", "SN", "a", "b", "--json"], None),
    (["--volume", "v", "diff", "SN", "a", "b", "--json"], None),
    (["find", "SN", "a", "b", "--json"], None),
    (["--json"], None),
    ([], None),
])
def test_diff_args_take_only_that_line(argv: list[str],
                                       expected: dict[str, str] | None) -> None:
    assert args(argv) == expected


def test_diff_json_is_the_click_commands_document(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"one")
    (src / "b.txt").write_bytes(b"two")
    sids = []
    for body in (b"one", b"three"):
        (src / "d" / "a.txt").write_bytes(body)
        r = local_push(server, SN, src)
        assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
        sids.append(server.store.snapshot_ids(SN, "documents")[-1])
    line = ["diff", SN, sids[0], "latest", "--volume", "documents", "--json"]
    quick = subprocess.run([XSBACKUP, "--root", str(server.root), *line],
                           capture_output=True, check=True)
    clicked = server.cli(*line)
    assert quick.stdout.decode() == clicked.output
    doc = orjson.loads(quick.stdout)
    assert (doc["from"], doc["to"]) == (sids[0], sids[1])
    assert [(c["kind"], c["path"]) for c in doc["changes"]] == [("modified", "d/a.txt")]

    for bad, code in (([SN, sids[0], "2030-01-01T000000Z"], SnapshotNotFound.exit_code),
                      ([SN, sids[0], "nope"], InvalidName.exit_code),
                      (["SHF00NOBODY", sids[0], "latest"], ClientNotFound.exit_code)):
        quick = subprocess.run([XSBACKUP, "--root", str(server.root), "diff", *bad, "--json"],
                               capture_output=True, text=True, check=False)
        clicked = server.cli("diff", *bad, "--json", check=False)
        assert quick.returncode == clicked.exit_code == code
        assert quick.stdout == ""
        assert quick.stderr == clicked.stderr
        assert quick.stderr.count("\n") == 1
        assert quick.stderr.startswith("xsbackup: error: ")
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "--config", "/nonexistent.toml",
                        "diff", SN, sids[0], "latest", "--json"], capture_output=True,
                       text=True, check=False)
    assert (r.returncode, r.stderr) == (
        3, "xsbackup: error: configuration file /nonexistent.toml does not exist\n")
    r = subprocess.run([XSBACKUP, "diff", "--help"], capture_output=True, text=True,
                       check=True)
    assert r.stdout.startswith("Usage: xsbackup diff [OPTIONS] SERIAL A B")
