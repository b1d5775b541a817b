"""Configuration precedence, validation, and the shipped example files."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from xsbackup import config
from xsbackup.errors import ConfigError

ETC = Path(__file__).resolve().parents[2] / "etc"


def test_defaults(tmp_path: Path) -> None:
    s = config.load(tmp_path, environ={})
    assert s.root == tmp_path
    assert s.admission.slots == 10
    assert s.config_file is None


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    (tmp_path / "xsbackup.toml").write_text("[admission]\nslots = 3\nmax_load = 2.5\n")
    s = config.load(tmp_path, environ={})
    assert (s.admission.slots, s.admission.max_load) == (3, 2.5)
    s = config.load(tmp_path, environ={"XSBACKUP_ADMISSION_SLOTS": "5"})
    assert (s.admission.slots, s.admission.max_load) == (5, 2.5)
    s = config.load(tmp_path, overrides={"admission.slots": 7},
                    environ={"XSBACKUP_ADMISSION_SLOTS": "5"})
    assert s.admission.slots == 7


def test_root_from_environment(tmp_path: Path) -> None:
    s = config.load(environ={"XSBACKUP_ROOT": str(tmp_path / "r")})
    assert s.root == tmp_path / "r"


@pytest.mark.parametrize(("text", "message"), [
    ("[admission]\nslots = -1\n", "at least 0"),
    ("[admission]\nslots = \"many\"\n", "expected int"),
    ("[admission]\nbogus = 1\n", "unknown setting admission.bogus"),
    ("[log]\ntarget = \"stdout\"\n", "must be one of"),
    ("admission = 3\n", "must be a table"),
    ("[admission\n", "xsbackup.toml"),
])
def test_invalid_file_is_refused_at_load(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "xsbackup.toml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        config.load(tmp_path, environ={})


def test_invalid_environment_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="XSBACKUP_ADMISSION_MAX_LOAD"):
        config.load(tmp_path, environ={"XSBACKUP_ADMISSION_MAX_LOAD": "high"})


@pytest.mark.parametrize("path", sorted(ETC.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_in_etc_loads(path: Path, tmp_path: Path) -> None:
    s = config.load(tmp_path, config_file=path, environ={})
    assert s.config_file == path
    assert tomllib.loads(path.read_text())


def test_etc_example_matches_the_schema_defaults() -> None:
    assert (ETC / "xsbackup.toml").read_text() == config.example_toml()


@pytest.mark.parametrize(("text", "expected"), [
    ("10:30:60", (10, 30, 60)), ("10", (10, 100, 10)), ("1:0:1", (1, 0, 1))])
def test_max_startups(tmp_path: Path, text: str, expected: tuple[int, int, int]) -> None:
    (tmp_path / "xsbackup.toml").write_text(f'[server]\nmax_startups = "{text}"\n')
    s = config.load(tmp_path, environ={}).server.startups
    assert (s.start, s.rate, s.full) == expected


@pytest.mark.parametrize("text", ["", "10:30", "60:30:10", "10:130:60", "a:b:c", "0:30:60",
                                  " 10:30:60"])
def test_max_startups_refused_at_load(tmp_path: Path, text: str) -> None:
    (tmp_path / "xsbackup.toml").write_text(f'[server]\nmax_startups = "{text}"\n')
    with pytest.raises(ConfigError, match=r"server\.max_startups"):
        config.load(tmp_path, environ={})


def test_auth_timeout_is_read_as_login_grace_seconds(tmp_path: Path) -> None:
    (tmp_path / "xsbackup.toml").write_text("[server]\nauth_timeout = 20\n")
    assert config.load(tmp_path, environ={}).server.login_grace_seconds == 20
    s = config.load(tmp_path, environ={"XSBACKUP_SERVER_AUTH_TIMEOUT": "7"})
    assert s.server.login_grace_seconds == 7
    (tmp_path / "xsbackup.toml").write_text(
        "[server]\nauth_timeout = 20\nlogin_grace_seconds = 10\n")
    with pytest.raises(ConfigError, match=r"set only server\.login_grace_seconds"):
        config.load(tmp_path, environ={})
