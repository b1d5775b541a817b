"""One disk figure everywhere: ``prune --dry-run --json``, ``status --json``, ``/metrics``
and the dashboard all report ``store.disk_use``, and it is df's ``Use%``.

The state root lives on a small ext4 image with 5% reserved blocks, mounted through a
loop device, so a figure computed over all blocks (reserved ones included) instead of
df's used / (used + available) would be off by about two points and fail here. The image
is filled to the middle of a percent, so the few log lines the running server writes
between two readings cannot move any figure across a whole percent.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, local_push
from tests.integration.test_serve import PASSWORD, start, stop
from tests.integration.test_webui_http import Client

pytestmark = pytest.mark.integration
SN = "SHF00112233"
IMAGE_MB = 64


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[Path]:
    """A fresh 64 MiB ext4 with 5% reserved blocks, loop-mounted; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    with image.open("wb") as fh:
        fh.truncate(IMAGE_MB << 20)
    mnt.mkdir()
    made = run("mkfs.ext4", "-q", "-F", "-m", "5", "-b", "4096", str(image))
    assert made.returncode == 0, made.stderr
    mounted = run("mount", "-o", "loop", str(image), str(mnt))
    if mounted.returncode != 0:
        pytest.skip(f"loop devices are unavailable here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if run("umount", str(mnt)).returncode != 0:
            run("umount", "-l", str(mnt))


def df_bytes(path: Path) -> tuple[int, int, int]:
    """(size, used, available) in bytes, as df reports them."""
    out = run("df", "-B1", "--output=size,used,avail", str(path)).stdout
    size, used, avail = (int(v) for v in out.splitlines()[1].split())
    return size, used, avail


def df_pcent(path: Path) -> int:
    out = run("df", "--output=pcent", str(path)).stdout
    return int(out.splitlines()[1].strip().rstrip("%"))


def fill_to_mid_percent(path: Path, at_least: float) -> float:
    """Write filler until df's used / (used + avail) sits 0.3-0.7 below a whole percent."""
    for n in range(5):
        _, used, avail = df_bytes(path)
        pct = 100 * used / (used + avail)
        if pct >= at_least and 0.3 <= math.ceil(pct) - pct <= 0.7:
            return pct
        target = max(math.floor(pct) + 1.5, math.floor(at_least) + 0.5)
        with (path / f"filler-{n}.bin").open("wb") as fh:
            fh.write(b"\xa5" * int((target / 100 * (used + avail)) - used))
            os.fsync(fh.fileno())
    pytest.fail(f"could not place the disk use mid-percent on {path}")


def test_every_report_shows_dfs_use_percent(ext4_mount: Path, tmp_path: Path) -> None:
    root = ext4_mount / "state"
    assert run(XSBACKUP, "--root", str(root), "init").returncode == 0
    (root / "xsbackup.toml").write_text("[admission]\nmax_load = 1000.0\n")
    added = subprocess.run([XSBACKUP, "--root", str(root), "admin", "add-user", "admin",
                            "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                           text=True, check=False)
    assert added.returncode == 0, added.stderr
    keydir = tmp_path / "keys"
    keydir.mkdir()
    server = Server(root, keydir)
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.odt").write_bytes(os.urandom(2 << 20))
    assert local_push(server, SN, src).returncode == 0
    server.xsbackup("postprocess", "--once")

    served = start(root)
    try:
        pct = fill_to_mid_percent(ext4_mount, at_least=40)
        size, used, _ = df_bytes(ext4_mount)
        expected = df_pcent(ext4_mount)
        assert expected == math.ceil(pct)
        # The test can tell: counting the reserved blocks as usable moves the figure.
        assert math.ceil(100 * used / size) != expected

        dry = orjson.loads(server.xsbackup("prune", "--dry-run", "--json").stdout)
        status = orjson.loads(server.xsbackup("status", "--json").stdout)
        code, body, _ = served.api("/metrics")
        assert code == 200
        (ratio,) = re.findall(rb"^xsbackup_disk_blocks_used_ratio ([0-9.e+-]+)$", body,
                              re.MULTILINE)
        browser = Client(served.http_port)
        assert browser.sign_in("admin", PASSWORD).status == 303
        page = browser.get("/ui/")
        assert page.status == 200
        meter = re.search(r'<meter id="m-blocks"[^>]* value="([0-9.]+)"', page.text)
        assert meter is not None, page.text[:2000]

        figures = {
            "prune --dry-run --json": dry["quota"]["quota"]["df_blocks_pct"],
            "status --json": status["disk"]["df_blocks_pct"],
            "/metrics": math.ceil(float(ratio) * 100),
            "dashboard": math.ceil(float(meter.group(1))),
            "df": df_pcent(ext4_mount),
        }
        assert figures == dict.fromkeys(figures, expected)
        assert status["disk"]["blocks_pct"] == pytest.approx(pct, abs=0.2)
        assert [c["serial"] for c in status["clients"]] == [SN]
        assert status["storage"]["name"] == "hardlink"
    finally:
        stop(served)
