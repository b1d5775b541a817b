"""Admin users of the HTTP API and web UI: ``<root>/admin/users.json``.

Devices authenticate with their SSH keys; people (the admin, a teacher restoring a
document) authenticate to the HTTP side with a name and a password. The file holds one
record per user: name, role (``admin`` may change things, ``teacher`` only reads),
a disabled flag, the creation time and the password as an scrypt hash with its own
random salt and its parameters, so the parameters can be raised later without
invalidating existing hashes, and a session epoch: web sessions carry the epoch they began
in, so raising it (a password change, disabling the user) ends every one of them.

The file is written atomically with mode 0600 inside a 0700 directory, under a flock so
two admin commands never lose each other's change. ``verify`` compares in constant time
and runs scrypt even for an unknown name, so a response time does not tell which names
exist; a disabled user never verifies.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from xsbackup.errors import (
    InvalidName,
    InvalidPassword,
    StateRootError,
    UserExists,
    UserNotFound,
)
from xsbackup.locking import FileLock
from xsbackup.store import Store, atomic_write

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ROLES = ("admin", "teacher")
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


@dataclass
class User:
    name: str
    role: str
    disabled: bool = False
    created: str = ""
    password: dict[str, Any] = field(default_factory=dict)
    session_epoch: int = 0  # raised to end every web session of this user

    def public(self) -> dict[str, Any]:
        """The record without its password hash (for listings and the API)."""
        return {"name": self.name, "role": self.role, "disabled": self.disabled,
                "created": self.created}


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidName(f"invalid user name {name!r}: must match ^[A-Za-z0-9_.-]{{1,64}}$")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidPassword(f"invalid role {role!r}: must be one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidPassword(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidPassword(f"password too long: at most {MAX_PASSWORD} characters")
    return password


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r,
                          p=p, dklen=dklen, maxmem=256 * n * r + (1 << 20))


def hash_password(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
    return {"algorithm": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(), "hash": base64.b64encode(digest).decode()}


# A well-formed record to hash against when the name is unknown, so that path costs the
# same scrypt as a real one.
_DUMMY = {"algorithm": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
          "salt": base64.b64encode(b"\0" * 16).decode(),
          "hash": base64.b64encode(b"\0" * SCRYPT_DKLEN).decode()}


def check_password(record: dict[str, Any], password: str) -> bool:
    """Whether ``password`` matches the stored ``record`` (constant-time compare)."""
    try:
        if record.get("algorithm") != "scrypt":
            return False
        n, r, p = int(record["n"]), int(record["r"]), int(record["p"])
        salt = base64.b64decode(record["salt"], validate=True)
        expected = base64.b64decode(record["hash"], validate=True)
        if not (2 <= n <= 2**17 and 1 <= r <= 16 and 1 <= p <= 16 and 16 <= len(expected) <= 64):
            return False
        actual = _scrypt(password, salt, n, r, p, len(expected))
    except (KeyError, TypeError, ValueError):
        return False
    return hmac.compare_digest(actual, expected)


# ---- the file --------------------------------------------------------------------------


def users_path(store: Store) -> str:
    return str(store.users_file)


def _lock(store: Store) -> FileLock:
    return FileLock(store.locks_dir / "users.lock").acquire(wait=True)


def _read(store: Store) -> dict[str, User]:
    try:
        with open(users_path(store), "rb") as fh:
            raw = orjson.loads(fh.read())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as e:
        raise StateRootError(f"cannot read {users_path(store)}: {e}") from None
    out: dict[str, User] = {}
    known = set(User.__dataclass_fields__)
    for rec in raw.get("users", []) if isinstance(raw, dict) else []:
        if isinstance(rec, dict) and isinstance(rec.get("name"), str):
            user = User(**{k: v for k, v in rec.items() if k in known})
            out[user.name] = user
    return out


def _write(store: Store, users: dict[str, User]) -> None:
    os.makedirs(store.users_file.parent, mode=0o700, exist_ok=True)
    data = {"users": [asdict(u) for _, u in sorted(users.items())]}
    path = users_path(store)
    atomic_write(store.users_file,
                 orjson.dumps(data, option=orjson.OPT_INDENT_2), mode=0o600)
    os.chmod(path, 0o600)  # whatever the umask was


def load(store: Store) -> dict[str, User]:
    """Every user by name (reads the file once; no lock needed: writes are atomic)."""
    return _read(store)


def list_users(store: Store) -> list[User]:
    return [u for _, u in sorted(_read(store).items())]


def get_user(store: Store, name: str) -> User:
    user = _read(store).get(check_name(name))
    if user is None:
        raise UserNotFound(f"no user {name}")
    return user


def add_user(store: Store, name: str, password: str, role: str = "admin",
             now: dt.datetime | None = None) -> User:
    check_name(name)
    _check_role(role)
    record = hash_password(_check_password(password))
    with _lock(store):
        users = _read(store)
        if name in users:
            raise UserExists(f"user {name} already exists")
        stamp = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        user = User(name=name, role=role, created=stamp, password=record)
        users[name] = user
        _write(store, users)
    return user


def _update(store: Store, name: str, end_sessions: bool, **changes: Any) -> User:
    check_name(name)
    with _lock(store):
        users = _read(store)
        user = users.get(name)
        if user is None:
            raise UserNotFound(f"no user {name}")
        for k, v in changes.items():
            setattr(user, k, v)
        if end_sessions:
            user.session_epoch += 1
        _write(store, users)
    return user


def set_password(store: Store, name: str, password: str) -> User:
    """A new password; it ends every web session of the user."""
    return _update(store, name, True, password=hash_password(_check_password(password)))


def disable(store: Store, name: str) -> User:
    """Disable the user; it ends every web session (enabling again does not revive them)."""
    return _update(store, name, True, disabled=True)


def enable(store: Store, name: str) -> User:
    return _update(store, name, False, disabled=False)


def verify_in(users: dict[str, User], name: str, password: str) -> User | None:
    """``verify`` against an already loaded mapping (the HTTP app caches the file)."""
    user = users.get(name) if NAME_RE.fullmatch(name) else None
    ok = check_password(user.password if user is not None else _DUMMY, password)
    if user is None or not ok or user.disabled:
        return None
    return user


def verify(store: Store, name: str, password: str) -> User | None:
    """The user when ``name`` exists, is enabled and ``password`` matches; else None."""
    return verify_in(_read(store), name, password)
