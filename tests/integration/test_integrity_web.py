"""Integrity on the web: the HTTP manifest with digests, "what changed since" and the
dashboard's damage badge, over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.integration.test_webui import TEACHER, TEACHER_PW, push, start_site
from tests.integration.test_webui_http import Client

pytestmark = pytest.mark.integration
SN = "SHF000WEB01"


def test_manifest_changes_page_and_damage_badge(tmp_path: Path) -> None:
    site = start_site(tmp_path / "site")
    try:
        site.server.add_client(SN)
        src = tmp_path / "src"
        src.mkdir()
        (src / "essay.odt").write_bytes(b"first draft\n")
        (src / "keep.txt").write_bytes(b"same\n")
        push(site.server, SN, src)
        (src / "essay.odt").write_bytes(b"second draft, longer\n")
        (src / "new <b>.txt").write_bytes(b"added\n")
        push(site.server, SN, src)
        first, second = site.store.snapshot_ids(SN, "documents")

        web = Client(site.http.effective_port)
        assert web.sign_in(TEACHER, TEACHER_PW).status == 303
        base = f"/api/v1/clients/{SN}/volumes/documents/snapshots/{second}"
        reply = web.get(f"{base}/manifest")
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/x-ndjson"
        rows = {r["path"]: r for r in map(json.loads, reply.body.splitlines())}
        assert rows["essay.odt"]["blake2b"] == hashlib.blake2b(
            b"second draft, longer\n", digest_size=32).hexdigest()

        page = web.get(f"/ui/clients/{SN}/volumes/documents/snapshots/{second}/changes")
        assert page.status == 200
        assert f"What changed since {first}" in page.text
        assert "new &lt;b&gt;.txt" in page.text
        assert "1 added, 0 removed, 1 modified, 0 metadata" in page.text
        assert "keep.txt" not in page.text
        browse = web.get(f"/ui/clients/{SN}/volumes/documents/snapshots/{second}/browse")
        assert "What changed since the older snapshot" in browse.text

        victim = site.store.snapshots_dir(SN, "documents") / second / "keep.txt"
        st = victim.stat()
        victim.write_bytes(b"SAME\n")
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert site.server.cli("check", SN, "--read-data", check=False).exit_code == 21
        assert "1 damaged" in web.get("/ui/").text
    finally:
        site.close()
