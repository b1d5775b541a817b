"""The restic engine: one ``Restic`` per configured repository, every call through ``procs``.

The child sees a scrubbed environment: the repository, the password (a file or a
command), the cache under ``<root>/offsite/cache``, ``TZ=UTC`` (``--time`` is read in the
local zone), ``HOME`` (ssh for SFTP repositories reads its configuration there), the
variables ``offsite.credentials_env`` names, and the ``KEY=VALUE`` lines of
``offsite.credentials_file``. A failure becomes one line and one exit code: a wrong
password or refused credentials ``OffsiteAuthFailed``, an unreachable or missing
repository ``OffsiteUnreachable``, anything else ``OffsiteFailed``; a missing program is
``ResticNotFound``. Secrets never reach a message: a repository location is shown without
any ``user:password@``.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from xsbackup import procs
from xsbackup.config.offsite import OffsiteSettings
from xsbackup.errors import (
    ConfigError,
    OffsiteAuthFailed,
    OffsiteFailed,
    OffsiteNotConfigured,
    OffsiteUnreachable,
    ResticNotFound,
    XsbackupError,
)
from xsbackup.store import Store, atomic_write

# restic's own words for refused credentials, and for a repository it cannot reach.
_AUTH = ("wrong password", "no key found", "access denied", "invalidaccesskeyid",
         "signaturedoesnotmatch", "permission denied", "401 unauthorized",
         "403 forbidden")
_UNREACHABLE = ("is there a repository at the following location", "connection refused",
                "no such host", "dial tcp", "unable to open repository",
                "unable to start the sftp session", "ssh command exited",
                "no route to host", "i/o timeout", "connection reset",
                "unable to open config file", "bucket does not exist",
                "nosuchbucket")
_USERINFO = re.compile(r"(//)[^/@]*@")


def redact(location: str) -> str:
    """A repository location without the ``user:password@`` of a URL."""
    return _USERINFO.sub(r"\1", location)


def classify(where: str, result: procs.Result) -> XsbackupError:
    """The error a failed restic call stands for, as one line."""
    text = (result.stderr + "\n" + result.stdout).lower()
    line = _first_fatal(result)
    if result.returncode is None:
        return OffsiteFailed(f"{where}: restic did not finish in time")
    if result.returncode < 0:
        return OffsiteFailed(f"{where}: restic was killed by signal {-result.returncode}")
    if any(k in text for k in _AUTH):
        return OffsiteAuthFailed(f"{where}: the repository refused the password or the "
                                 f"credentials ({line})")
    if any(k in text for k in _UNREACHABLE):
        return OffsiteUnreachable(f"{where}: repository unreachable ({line})")
    return OffsiteFailed(f"{where}: {line}")


def _stale_lock(result: procs.Result) -> bool:
    return result.returncode is not None and result.returncode > 0 and \
        "already locked" in result.stderr.lower()


def _first_fatal(result: procs.Result) -> str:
    for text in (result.stderr, result.stdout):
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("Fatal:"):
                return line[len("Fatal:"):].strip()[:300]
    return result.first_error_line()[:300]


def _private_file(path: Path, key: str) -> None:
    """``path`` must be a regular file no one but its owner may read (``ConfigError``)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{key}: {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key}: {path} is not a regular file")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{key}: {path} is mode {stat.S_IMODE(st.st_mode):04o}; make it "
                          "0600 (it holds a secret)")


def read_credentials(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a credentials file (``#`` comments and blanks skipped)."""
    _private_file(path, "offsite.credentials_file")
    out: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise ConfigError(f"offsite.credentials_file: {path} line {n}: expected "
                              "KEY=VALUE")
        out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Snapshot:
    """One restic snapshot of the repository, as ``restic snapshots --json`` lists it."""

    id: str
    short_id: str
    time: str
    host: str
    tags: tuple[str, ...]

    def tag(self, name: str) -> str | None:
        """The value of the ``name:value`` tag, or None."""
        for t in self.tags:
            key, sep, value = t.partition(":")
            if sep and key == name:
                return value
        return None


class Restic:
    """The configured repository of one state root."""

    def __init__(self, settings: OffsiteSettings, store: Store) -> None:
        if not settings.repository:
            raise OffsiteNotConfigured("no off-site repository is configured: set "
                                       "offsite.repository (see README, Off-site copies)")
        self.settings = settings
        self.store = store
        self.location = redact(settings.repository)
        self.where = f"off-site repository {self.location}"

    @property
    def home(self) -> Path:
        """``<root>/offsite``: the replication state, the cache and the staging links."""
        return self.store.root / "offsite"

    def _under_root(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.store.root / path

    @property
    def password_file(self) -> Path:
        return self._under_root(self.settings.password_file)

    def ensure_password(self) -> bool:
        """Create the password file with a random password when it is missing and no
        password command is set; True when one was created."""
        if self.settings.password_command or self.password_file.exists():
            return False
        self.password_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self.password_file, secrets.token_urlsafe(32).encode() + b"\n",
                     mode=0o600)
        return True

    def environment(self) -> dict[str, str]:
        s = self.settings
        extra = {"RESTIC_REPOSITORY": s.repository, "TZ": "UTC",
                 "RESTIC_CACHE_DIR": str(self.home / "cache")}
        if s.password_command:
            extra["RESTIC_PASSWORD_COMMAND"] = s.password_command
        else:
            _private_file(self.password_file, "offsite.password_file")
            extra["RESTIC_PASSWORD_FILE"] = str(self.password_file)
        if s.credentials_file:
            extra.update(read_credentials(self._under_root(s.credentials_file)))
        return procs.environment(extra, inherit=("PATH", "HOME", *s.credentials_env))

    def _argv(self, args: Sequence[str]) -> list[str]:
        argv = [self.settings.restic, *args]
        for option in self.settings.options:
            argv += ["-o", option]
        if self.settings.upload_limit and args and args[0] == "backup":
            argv.append(f"--limit-upload={max(1, self.settings.upload_limit // 1024)}")
        return argv

    def run(self, args: Sequence[str], *, why: str, cwd: str | None = None,
            pwd: str | None = None, ok: Sequence[int] = (0,)) -> procs.Result:
        """Run ``restic ARGS``; its error (``classify``) unless it exits with one of
        ``ok``. ``pwd``: the working directory restic records (see ``replicate``)."""
        env = self.environment()
        if pwd is not None:
            env["PWD"] = pwd
        try:
            result = procs.run(self._argv(args), why=why, env=env, cwd=cwd)
        except FileNotFoundError:
            raise ResticNotFound(f"restic program {self.settings.restic!r} was not found "
                                 "(install the restic package, or set offsite.restic)") from None
        if result.returncode not in ok and _stale_lock(result) and args[:1] != ["unlock"]:
            # A killed restic's lock: remove it (restic removes only stale ones), retry.
            self.unlock()
            result = procs.run(self._argv(args), why=why, env=env, cwd=cwd)
        if result.returncode not in ok:
            raise classify(self.where, result)
        return result

    def feed(self, args: Sequence[str], data: bytes, *, why: str) -> procs.Result:
        """Run ``restic ARGS`` with ``data`` on its standard input (``backup --stdin``)."""
        try:
            proc = procs.spawn(self._argv(args), why=why, env=self.environment(),
                               stdin=procs.PIPE, stdout=procs.PIPE, stderr=procs.PIPE)
        except FileNotFoundError:
            raise ResticNotFound(f"restic program {self.settings.restic!r} was not found "
                                 "(install the restic package, or set offsite.restic)") from None
        try:
            out, err = proc.communicate(data)
        except BaseException:
            procs.stop(proc)
            raise
        result = procs.Result(tuple(str(a) for a in proc.args),  # type: ignore[union-attr]
                              proc.returncode, out.decode(errors="replace"),
                              err.decode(errors="replace"))
        if not result.ok:
            raise classify(self.where, result)
        return result

    # ---- commands ----------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the repository answers with this password (``OffsiteAuthFailed`` when
        it refuses it); False when there is none at that location yet."""
        try:
            self.run(["cat", "config"], why="open the off-site repository")
        except OffsiteUnreachable as e:
            if "is there a repository" in e.message.lower() or \
                    "unable to open config file" in e.message.lower():
                return False
            raise
        return True

    def init(self) -> None:
        self.run(["init"], why="create the off-site repository")

    def snapshots(self, host: str | None = None) -> list[Snapshot]:
        """The repository's snapshots (of ``host``), oldest first."""
        args = ["snapshots", "--json"] + (["--host", host] if host else [])
        out = self.run(args, why="list off-site snapshots").stdout
        data: Any = orjson.loads(out or b"[]") if out.strip() else []
        snaps = [Snapshot(str(d["id"]), str(d.get("short_id", d["id"][:8])),
                          str(d.get("time", "")), str(d.get("hostname", "")),
                          tuple(str(t) for t in d.get("tags") or ()))
                 for d in (data or []) if isinstance(d, dict) and "id" in d]
        return sorted(snaps, key=lambda s: s.time)

    def forget(self, ids: Sequence[str]) -> None:
        if ids:
            self.run(["forget", *ids], why="forget off-site snapshots")

    def prune(self) -> str:
        return self.run(["prune"], why="prune the off-site repository").stdout

    def unlock(self) -> None:
        """Remove stale locks (a killed restic's); live ones stay."""
        self.run(["unlock"], why="remove stale off-site locks")

    def check(self, read_data_subset: str | None = None) -> str:
        args = ["check"] + ([f"--read-data-subset={read_data_subset}"]
                            if read_data_subset else [])
        return self.run(args, why="check the off-site repository").stdout
