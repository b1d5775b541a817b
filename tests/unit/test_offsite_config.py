"""The [offsite] section is checked at load: every bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from xsbackup import config
from xsbackup.errors import ConfigError
from xsbackup.offsite.restic import read_credentials, redact


@pytest.mark.parametrize(("overrides", "key"), [
    ({"offsite.repository": "ftp://host/x"}, "offsite.repository"),
    ({"offsite.repository": "relative/path"}, "offsite.repository"),
    ({"offsite.repository": "/r", "offsite.password_file": ""}, "offsite.password_file"),
    ({"offsite.window_start": "22:00"}, "offsite.window_end"),
    ({"offsite.window_start": "25:00", "offsite.window_end": "06:00"},
     "offsite.window_start"),
    ({"offsite.upload_limit": "fast"}, "offsite.upload_limit"),
    ({"offsite.options": "novalue"}, "offsite.options"),
    ({"offsite.volumes": "../etc"}, "offsite.volumes"),
    ({"offsite.keep_monthly": -2}, "offsite.keep_monthly"),
    ({"offsite.keep_within": "soon"}, "offsite.keep_within"),
])
def test_bad_values_name_their_key(tmp_path: Path, overrides: dict[str, object],
                                   key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(tmp_path, overrides=overrides, environ={})


def test_good_values_load(tmp_path: Path) -> None:
    s = config.load(tmp_path, environ={}, overrides={
        "offsite.repository": "s3:http://127.0.0.1:9000/bucket",
        "offsite.upload_limit": "2MiB", "offsite.window_start": "22:00",
        "offsite.window_end": "06:00", "offsite.options": "sftp.command=ssh -p 2 h -s sftp",
        "offsite.keep_monthly": 12})
    assert s.offsite.upload_limit == 2 * 1024 * 1024
    assert s.offsite.options == ["sftp.command=ssh -p 2 h -s sftp"]
    assert config.load(tmp_path, environ={}).offsite.repository == ""


def test_credentials_file_must_be_private_and_well_formed(tmp_path: Path) -> None:
    creds = tmp_path / "s3.env"
    creds.write_text("# comment\nAWS_ACCESS_KEY_ID=abc\n\nAWS_SECRET_ACCESS_KEY = x=y\n")
    creds.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        read_credentials(creds)
    creds.chmod(0o600)
    assert read_credentials(creds) == {"AWS_ACCESS_KEY_ID": "abc",
                                       "AWS_SECRET_ACCESS_KEY": "x=y"}
    creds.write_text("not a pair\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_credentials(creds)


def test_messages_never_show_a_url_password() -> None:
    assert redact("rest:https://user:secret@host:8000/repo") == "rest:https://host:8000/repo"
    assert redact("sftp:user@host:/srv/repo") == "sftp:user@host:/srv/repo"
