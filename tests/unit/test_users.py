"""Admin users: scrypt hashes, verification, the file's mode, and the admin CLI commands."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from xsbackup.cli._common import Invocation
from xsbackup.cli.admin_cmd import admin
from xsbackup.errors import InvalidName, InvalidPassword, UserExists, UserNotFound
from xsbackup.store import Store, init_root
from xsbackup.web import users

PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return init_root(tmp_path / "state")


def test_hash_and_verify(store: Store) -> None:
    user = users.add_user(store, "alice", PASSWORD, "admin")
    assert (user.name, user.role, user.disabled) == ("alice", "admin", False)
    record = user.password
    assert (record["algorithm"], record["n"], record["r"], record["p"]) == \
        ("scrypt", 2**14, 8, 1)
    assert len(base64.b64decode(record["salt"])) == 16
    assert PASSWORD.encode() not in Path(users.users_path(store)).read_bytes()
    verified = users.verify(store, "alice", PASSWORD)
    assert verified is not None
    assert verified.name == "alice"
    assert users.verify(store, "alice", PASSWORD + "x") is None
    assert users.verify(store, "alice", "") is None
    assert users.verify(store, "nobody", PASSWORD) is None
    assert users.verify(store, "../../etc", PASSWORD) is None


def test_salts_differ_for_the_same_password(store: Store) -> None:
    a = users.add_user(store, "a", PASSWORD)
    b = users.add_user(store, "b", PASSWORD)
    assert a.password["salt"] != b.password["salt"]
    assert a.password["hash"] != b.password["hash"]


def test_disabled_user_never_verifies(store: Store) -> None:
    users.add_user(store, "bob", PASSWORD, "teacher")
    users.disable(store, "bob")
    assert users.verify(store, "bob", PASSWORD) is None
    assert users.get_user(store, "bob").disabled is True
    users.enable(store, "bob")
    verified = users.verify(store, "bob", PASSWORD)
    assert verified is not None
    assert verified.role == "teacher"


def test_set_password_replaces_the_hash(store: Store) -> None:
    before = users.add_user(store, "carol", PASSWORD)
    users.set_password(store, "carol", "another secret")
    after = users.get_user(store, "carol")
    assert after.password["salt"] != before.password["salt"]
    assert users.verify(store, "carol", PASSWORD) is None
    assert users.verify(store, "carol", "another secret") is not None


def test_file_mode_is_0600(store: Store) -> None:
    old = os.umask(0o022)
    try:
        users.add_user(store, "alice", PASSWORD)
        users.set_password(store, "alice", "second password")
    finally:
        os.umask(old)
    path = Path(users.users_path(store))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = orjson.loads(path.read_bytes())
    assert [u["name"] for u in data["users"]] == ["alice"]
    assert not [p for p in path.parent.iterdir() if p.name != "users.json"]


@pytest.mark.parametrize("name", ["", "a" * 65, "../x", "a/b", "a b", "é", "a:b", "a\n"])
def test_bad_names_refused(store: Store, name: str) -> None:
    with pytest.raises(InvalidName):
        users.add_user(store, name, PASSWORD)
    assert users.list_users(store) == []


def test_good_names_accepted(store: Store) -> None:
    for name in ("a", "A.b-c_9", "x" * 64):
        users.add_user(store, name, PASSWORD)
    assert [u.name for u in users.list_users(store)] == sorted(["a", "A.b-c_9", "x" * 64])


def test_duplicates_roles_and_weak_passwords_refused(store: Store) -> None:
    users.add_user(store, "alice", PASSWORD)
    with pytest.raises(UserExists):
        users.add_user(store, "alice", PASSWORD)
    with pytest.raises(InvalidPassword, match="invalid role"):
        users.add_user(store, "dave", PASSWORD, "root")
    with pytest.raises(InvalidPassword, match="too short"):
        users.add_user(store, "dave", "short")
    with pytest.raises(UserNotFound):
        users.disable(store, "nobody")
    assert [u.name for u in users.list_users(store)] == ["alice"]


def test_tampered_record_does_not_verify(store: Store) -> None:
    users.add_user(store, "alice", PASSWORD)
    path = Path(users.users_path(store))
    data = orjson.loads(path.read_bytes())
    data["users"][0]["password"]["n"] = 2**30  # would need terabytes
    path.write_bytes(orjson.dumps(data))
    assert users.verify(store, "alice", PASSWORD) is None


def test_public_record_has_no_hash(store: Store) -> None:
    user = users.add_user(store, "alice", PASSWORD)
    assert set(user.public()) == {"name", "role", "disabled", "created"}


def test_admin_cli_commands(store: Store) -> None:
    runner = CliRunner()
    obj = Invocation(str(store.root), None)
    r = runner.invoke(admin, ["add-user", "alice", "--password-stdin"], input=PASSWORD + "\n",
                      obj=obj)
    assert r.exit_code == 0, r.output
    assert r.output == "added admin alice\n"
    r = runner.invoke(admin, ["add-user", "bob", "--role", "teacher"],
                      input=f"{PASSWORD}\n{PASSWORD}\n", obj=obj)
    assert r.exit_code == 0, r.output
    assert users.verify(store, "bob", PASSWORD) is not None
    assert PASSWORD not in r.output  # hidden input
    r = runner.invoke(admin, ["disable-user", "bob"], obj=obj)
    assert (r.exit_code, r.output) == (0, "bob disabled\n")
    r = runner.invoke(admin, ["list-users", "--json"], obj=obj)
    rows = orjson.loads(r.output)
    assert [(u["name"], u["role"], u["disabled"]) for u in rows] == \
        [("alice", "admin", False), ("bob", "teacher", True)]
    assert "password" not in r.output
    r = runner.invoke(admin, ["passwd", "alice", "--password-stdin"],
                      input="new password here\n", obj=obj)
    assert r.exit_code == 0, r.output
    assert users.verify(store, "alice", "new password here") is not None
    r = runner.invoke(admin, ["enable-user", "bob"], obj=obj)
    assert (r.exit_code, r.output) == (0, "bob enabled\n")
    r = runner.invoke(admin, ["add-user", "bad/name", "--password-stdin"], input=PASSWORD,
                      obj=obj)
    assert isinstance(r.exception, InvalidName)
