"""A client cannot forge snapshot facts: xattrs it sends (``rsync -X``) in the server's own
``user.xsbackup.*`` namespace are dropped on the way in, on its files and on its top
directory (which becomes the snapshot directory), and only the server's own facts are
ever read back. Its other xattrs are kept, as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import local_pull, local_push
from tests.integration.test_http import Web, people, web  # noqa: F401 - fixtures
from xsbackup.snapshots import postprocess
from xsbackup.snapshots.snapshot import FACT_KEYS

pytestmark = pytest.mark.integration
SN = "SHF00112233"
FORGED = {"user.xsbackup.pinned": b"1", "user.xsbackup.keep": b"forever",
          "user.xsbackup.created": b"1999-01-01T00:00:00+00:00",
          "user.xsbackup.files": b"999999"}
OWN = {"user.note": b"the client's own"}


def xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


def forging_tree(base: Path) -> list[Path]:
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "work.txt").write_text("homework\n")
    (base / "top.txt").write_text("top\n")
    items = [base, base / "sub", base / "sub" / "work.txt", base / "top.txt"]
    for p in items:
        for name, value in {**FORGED, **OWN}.items():
            os.setxattr(p, name, value)
    return items


@pytest.mark.usefixtures("people")
def test_forged_facts_are_dropped_and_never_shown(web: Web,  # noqa: F811
                                                  tmp_path: Path) -> None:
    server = web.server
    server.add_client(SN)
    src = tmp_path / "src"
    forging_tree(src)
    r = local_push(server, SN, src, "documents", "-X")
    assert r.returncode == 0, r.stderr
    assert postprocess.run_once(server.ctx()) == {"promoted": 1}
    (sid,) = server.store.snapshot_ids(SN, "documents")
    snap = server.store.snapshots_dir(SN, "documents") / sid

    # The snapshot directory holds the server's facts and the client's own xattrs only.
    root = xattrs(snap)
    assert {n for n in root if n.startswith("user.xsbackup.")} == \
        {f"user.xsbackup.{k}" for k in FACT_KEYS}
    assert root["user.xsbackup.files"] == b"2"
    assert root["user.note"] == OWN["user.note"]
    for rel in ("sub", "sub/work.txt", "top.txt"):
        got = xattrs(snap / rel)
        assert not [n for n in got if n.startswith("user.xsbackup.")], rel
        assert got["user.note"] == OWN["user.note"], rel

    row = web.get(f"/api/v1/clients/{SN}/volumes/documents/snapshots/{sid}",
                  user="alice").json()
    assert "pinned" not in row
    assert "keep" not in row
    assert row["files"] == 2
    assert not row["created"].startswith("1999")

    # A restore with -X gives the client its own xattrs back, and nothing of ours.
    pulled = tmp_path / "pulled"
    assert local_pull(server, SN, "documents/latest/", pulled, "-X").returncode == 0
    assert xattrs(pulled / "sub" / "work.txt") == OWN


@pytest.mark.usefixtures("people")
def test_only_the_servers_facts_are_read(web: Web, tmp_path: Path) -> None:  # noqa: F811
    """A snapshot stored before the filter (or altered by hand) still shows no forgery."""
    server = web.server
    server.add_client(SN)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "b.txt").write_text("b\n")
    assert local_push(server, SN, src).returncode == 0
    postprocess.run_once(server.ctx())
    (sid,) = server.store.snapshot_ids(SN, "documents")
    snap = server.store.snapshots_dir(SN, "documents") / sid
    os.setxattr(snap, "user.xsbackup.pinned", b"1")
    row = web.get(f"/api/v1/clients/{SN}/volumes/documents/snapshots/{sid}",
                  user="alice").json()
    assert "pinned" not in row
    assert row["files"] == 1
