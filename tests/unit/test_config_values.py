"""Every configured value is checked when the configuration loads, from the file, the
environment and the command line alike: a bad one names its key and exits 3
(``ConfigError``) before anything runs, instead of a traceback later (a duration in
prune), a silent no-op (a schedule nobody parses) or a bind error (a port)."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server
from xsbackup import config
from xsbackup.errors import ConfigError

BAD_FILE_VALUES = [
    ("retention", "keep_within", '"90 days"', "invalid duration"),
    ("retention", "keep_within", '"1.5d"', "invalid duration"),
    ("retention", "keep_within", '"0d"', "greater than 0"),
    ("retention", "keep_within", "90", "expected str"),
    ("prune", "schedule", '"3am"', "HH:MM"),
    ("prune", "schedule", '"24:00"', "HH:MM"),
    ("prune", "schedule", '"3:00"', "HH:MM"),
    ("prune", "schedule", '"03:60"', "HH:MM"),
    ("prune", "schedule", '" 03:00"', "HH:MM"),
    ("server", "ssh_port", "65536", "at most 65535"),
    ("server", "http_port", "-1", "at least 0"),
    ("admission", "max_blocks_pct", "101", "at most 100"),
    ("admission", "max_inodes_pct", "100.5", "at most 100"),
    ("quota", "soft_quota_pct", "170", "at most 100"),
    ("quota", "soft_quota_pct", "nan", "finite"),
    ("admission", "max_load", "inf", "finite"),
    ("postprocess", "cjson_max_bytes", '"1 megabyte"', "invalid size"),
    ("postprocess", "cjson_max_bytes", '"-1MiB"', "invalid size"),
    ("postprocess", "cjson_max_bytes", "1.5", "invalid size"),
    ("availability", "max_per_address", "-1", "at least 0"),
    ("availability", "new_per_window", "0", "at least 1"),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_FILE_VALUES,
                         ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD_FILE_VALUES])
def test_a_bad_file_value_is_refused_at_load_naming_its_key(
        tmp_path: Path, section: str, key: str, value: str, message: str) -> None:
    (tmp_path / "xsbackup.toml").write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: .*{message}"):
        config.load(tmp_path, environ={})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("XSBACKUP_RETENTION_KEEP_WITHIN", "90 days", "invalid duration"),
    ("XSBACKUP_PRUNE_SCHEDULE", "3am", "HH:MM"),
    ("XSBACKUP_SERVER_SSH_PORT", "70000", "at most 65535"),
    ("XSBACKUP_ADMISSION_MAX_BLOCKS_PCT", "250", "at most 100"),
    ("XSBACKUP_ADMISSION_MAX_LOAD", "nan", "finite"),
    ("XSBACKUP_POSTPROCESS_CJSON_MAX_BYTES", "lots", "invalid size"),
])
def test_a_bad_environment_value_is_refused_naming_the_variable(
        tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: .*{message}"):
        config.load(tmp_path, environ={name: value})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("server.ssh_port", 70000, "at most 65535"),
    ("prune.schedule", "25:00", "HH:MM"),
    ("retention.keep_within", "forever", "invalid duration"),
])
def test_a_bad_override_is_refused(tmp_path: Path, name: str, value: object,
                                   message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: .*{message}"):
        config.load(tmp_path, overrides={name: value}, environ={})
    settings = config.load(tmp_path, environ={})
    with pytest.raises(ConfigError, match=rf"^{name}: .*{message}"):
        settings.replace(**{name.replace(".", "__"): value})


@pytest.mark.parametrize(("text", "expected"), [
    ("1048576", 1048576), ("1MiB", 1 << 20), ("1M", 1 << 20), ("1 MiB", 1 << 20),
    ("1MB", 1_000_000), ("64KiB", 65536), ("64k", 65536), ("64kB", 64_000),
    ("2GiB", 2 << 30), ("2G", 2 << 30), ("3GB", 3_000_000_000), ("1TiB", 1 << 40),
    ("1.5MiB", 3 << 19), ("0", 0), ("512B", 512),
])
def test_sizes_take_iec_and_si_units(tmp_path: Path, text: str, expected: int) -> None:
    from_env = config.load(tmp_path, environ={"XSBACKUP_POSTPROCESS_CJSON_MAX_BYTES": text})
    assert from_env.postprocess.cjson_max_bytes == expected
    assert isinstance(from_env.postprocess.cjson_max_bytes, int)
    (tmp_path / "xsbackup.toml").write_text(f'[postprocess]\ncjson_max_bytes = "{text}"\n')
    assert config.load(tmp_path, environ={}).postprocess.cjson_max_bytes == expected


def test_a_size_may_be_a_plain_integer_in_the_file(tmp_path: Path) -> None:
    (tmp_path / "xsbackup.toml").write_text("[postprocess]\ncjson_max_bytes = 4096\n")
    assert config.load(tmp_path, environ={}).postprocess.cjson_max_bytes == 4096


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("retention", "keep_within", '"12h"', "12h"),
    ("retention", "keep_within", '"2w"', "2w"),
    ("retention", "keep_within", '"1m"', "1m"),
    ("retention", "keep_within", '"1y"', "1y"),
    ("retention", "keep_within", '""', ""),
    ("prune", "schedule", '"00:00"', "00:00"),
    ("prune", "schedule", '"23:59"', "23:59"),
    ("prune", "schedule", '""', ""),
    ("server", "ssh_port", "0", 0),
    ("server", "http_port", "65535", 65535),
    ("quota", "soft_quota_pct", "100", 100.0),
    ("admission", "max_blocks_pct", "0", 0.0),
])
def test_good_values_load_with_their_types(tmp_path: Path, section: str, key: str,
                                           value: str, expected: object) -> None:
    (tmp_path / "xsbackup.toml").write_text(f"[{section}]\n{key} = {value}\n")
    got = getattr(getattr(config.load(tmp_path, environ={}), section), key)
    assert got == expected
    assert type(got) is type(expected)


def test_a_configured_duration_is_what_retention_plans_with(server: Server) -> None:
    """The one duration parser: whatever loads is what the prune policy uses."""
    from xsbackup.clients.registry import Client
    from xsbackup.retention.prune import policy_for

    server.configure('[retention]\nkeep_within = "2w"\n')
    policy = policy_for(server.settings(), Client(serial="SHF00000001"))
    assert policy.keep_within == timedelta(days=14)


def test_the_cli_refuses_a_bad_value_with_one_line_and_exit_3(server: Server) -> None:
    server.configure('[retention]\nkeep_within = "90 days"\n')
    for args in (["config"], ["prune", "--dry-run"], ["status"]):
        r = server.xsbackup(*args, check=False)
        assert r.returncode == 3, (args, r.stderr)
        assert r.stderr.splitlines() == [
            "xsbackup: error: retention.keep_within: invalid duration '90 days': expected "
            "a whole number and a unit, h, d, w, m (31 days) or y (365 days), e.g. 90d"]
        assert r.stdout == ""


def test_serve_refuses_a_bad_port_before_it_binds(server: Server) -> None:
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "serve", "--ssh-port", "70000",
                        "--http-port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert r.stderr.splitlines() == [
        "xsbackup: error: server.ssh_port: must be at most 65535, got 70000"]


def test_the_example_config_documents_the_units() -> None:
    text = config.example_toml()
    for unit in ("KiB", "90d", "HH:MM"):
        assert unit in text
