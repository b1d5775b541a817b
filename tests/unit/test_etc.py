"""The files in etc/ must stay usable: unit files verify, examples name real commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP

ETC = Path(__file__).resolve().parents[2] / "etc"
UNITS = sorted((ETC / "systemd").iterdir())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed on this machine")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_files_verify(unit: Path, tmp_path: Path) -> None:
    # The units name the production install path; point it at this install to verify.
    for other in UNITS:
        text = other.read_text().replace("/opt/xsbackup/venv/bin/xsbackup", XSBACKUP)
        (tmp_path / other.name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit.name)],
                       capture_output=True, text=True)
    problems = [line for line in r.stderr.splitlines() if unit.name in line]
    assert problems == [], r.stderr


SECURITY_LIMIT = 4.0  # systemd-analyze security's exposure scale: 0 (safe) to 10


@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"],
                         ids=lambda p: p.name)
def test_services_are_sandboxed(unit: Path) -> None:
    """``systemd-analyze security`` rates each service 4.0 or lower (8.5 before). That the
    service still works inside its sandbox is tests/integration/test_unit_sandbox.py."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: cannot rate the unit's sandbox")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(unit)], capture_output=True, text=True)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (systemd < 252)")
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)",
                      r.stdout)
    assert found is not None, r.stdout + r.stderr
    assert float(found[1]) <= SECURITY_LIMIT, r.stdout


def test_units_and_cron_run_real_commands() -> None:
    texts = [p.read_text() for p in [*UNITS, ETC / "cron.d" / "xsbackup"]]
    for text in texts:
        for line in text.splitlines():
            if "/opt/xsbackup/venv/bin/xsbackup" in line and not line.startswith("#"):
                args = line.split("/opt/xsbackup/venv/bin/xsbackup", 1)[1].split(">")[0].split()
                sub = [a for a in args if not a.startswith("-") and a != "/srv/xsbackup"]
                r = subprocess.run([XSBACKUP, *sub[:1], "--help"], capture_output=True,
                                   text=True)
                assert r.returncode == 0, (line, r.stderr)


def test_nginx_snippet_maps_the_availability_path() -> None:
    text = (ETC / "nginx" / "xsbackup.conf").read_text()
    assert "location /backup/1/" in text
    assert "proxy_pass http://127.0.0.1:8080;" in text

