"""``pip install .`` (not editable) into a fresh venv: the command runs, and the restore kit
and the example hooks come from the installed package, also over ``serve``'s HTTP.

The fresh venv gets only xsbackup itself (``--no-deps``, built in an isolated build
environment as a user's ``pip install .`` is). Its third-party dependencies come from the
interpreter running the tests, through a ``.pth`` line added after the install; a
directory named in a ``.pth`` file is not a site directory, so the editable finder of the
development venv is not loaded there and ``xsbackup`` resolves to the installed copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_serve import Served, stop

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "xsbackup", "restore", "hooks")
MAPPED = {"xsbackup._kit": "restore", "xsbackup._hooks": "hooks"}

PROBE = """
import json, sys
from importlib import resources
import xsbackup
from xsbackup import resources as shipped
print(json.dumps({
    "xsbackup": xsbackup.__file__,
    "kit_package": str(resources.files(shipped.KIT_PACKAGE)),
    "kit": shipped.KIT.read_bytes().hex(),
    "hooks": {n: t.read_bytes().hex() for n, t in shipped.hook_examples().items()},
}))
"""


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path
    env: dict[str, str]
    cwd: Path

    @property
    def xsbackup(self) -> str:
        return str(self.venv / "bin" / "xsbackup")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")


def _site_packages(venv: Path) -> Path:
    found = list((venv / "lib").glob("python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "--no-deps", str(src)],
                       capture_output=True, text=True, env=env, cwd=base)
    assert r.returncode == 0, r.stdout + r.stderr
    site = _site_packages(venv)
    # Only now, so pip never saw the development venv's xsbackup: the dependencies.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cwd = base / "elsewhere"  # not the repository, so no source tree on sys.path
    cwd.mkdir()
    return Installed(venv, site, env, cwd)


def test_pyproject_lists_every_package() -> None:
    """The explicit package list (needed for the mapped kit and hooks) misses nothing."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "xsbackup").rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk | set(MAPPED)
    assert setup["package-dir"] == MAPPED
    for directory in MAPPED.values():
        assert (REPO / directory / "__init__.py").is_file()


def test_installed_is_a_real_copy(installed: Installed) -> None:
    r = subprocess.run([installed.python, "-c", PROBE], capture_output=True, text=True,
                       env=installed.env, cwd=installed.cwd, check=False)
    assert r.returncode == 0, r.stderr
    probe = json.loads(r.stdout)
    assert Path(probe["xsbackup"]).is_relative_to(installed.site_packages)
    assert Path(probe["kit_package"]).is_relative_to(installed.site_packages)
    assert not list(installed.site_packages.glob("__editable__*"))
    assert bytes.fromhex(probe["kit"]) == (REPO / "restore" / "xsrestore.py").read_bytes()
    examples = {p.name: p.read_bytes() for p in (REPO / "hooks").iterdir()
                if p.is_file() and os.access(p, os.X_OK)}
    assert examples
    assert {n: bytes.fromhex(h) for n, h in probe["hooks"].items()} == examples
    for name in examples:  # still executable, so a copy can be installed as it is
        assert os.access(installed.site_packages / "xsbackup" / "_hooks" / name, os.X_OK)


def test_installed_command_help(installed: Installed) -> None:
    r = subprocess.run([installed.xsbackup, "--help"], capture_output=True, text=True,
                       env=installed.env, cwd=installed.cwd, check=False)
    assert r.returncode == 0, r.stderr
    assert "Usage: xsbackup" in r.stdout
    assert "serve" in r.stdout


def test_installed_serve_hands_out_the_kit(installed: Installed, tmp_path: Path) -> None:
    ssh_port, http_port = free_port(), free_port()
    root = tmp_path / "root"
    proc = subprocess.Popen([installed.xsbackup, "--root", str(root), "serve", "--ssh-port",
                             str(ssh_port), "--http-port", str(http_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=installed.env, cwd=installed.cwd)
    assert proc.stdout is not None
    served = Served(proc, root, ssh_port, http_port, proc.stdout.readline().strip())
    try:
        assert served.banner.startswith("xsbackup serving"), \
            proc.stderr.read() if proc.stderr else ""
        with urllib.request.urlopen(served.url("/restore/kit"), timeout=10) as resp:
            status, body = resp.status, resp.read()
    finally:
        code = stop(served)
    assert status == 200
    assert body == (REPO / "restore" / "xsrestore.py").read_bytes()
    assert code == 0
    kit = tmp_path / "xsrestore.py"
    kit.write_bytes(body)
    r = subprocess.run([sys.executable, str(kit), "--help"], capture_output=True, text=True,
                       cwd=installed.cwd, check=False)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_installed_restore_kit_command(installed: Installed, tmp_path: Path) -> None:
    """``xsbackup restore kit > xsrestore.py`` from the installed copy: no state root,
    no source tree, and the file runs."""
    kit = tmp_path / "xsrestore.py"
    with kit.open("wb") as out:
        r = subprocess.run([installed.xsbackup, "--root", str(tmp_path / "none"), "restore",
                            "kit"], stdout=out, stderr=subprocess.PIPE, text=True,
                           env=installed.env, cwd=installed.cwd, check=False)
    assert r.returncode == 0, r.stderr
    assert kit.read_bytes() == (REPO / "restore" / "xsrestore.py").read_bytes()
    r = subprocess.run([sys.executable, str(kit), "--help"], capture_output=True, text=True,
                       cwd=installed.cwd, check=False)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout
