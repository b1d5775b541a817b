"""What is off-site: the replication state under ``<root>/offsite/`` (the queue's memory).

* ``offsite/clients/<SN>.json``, one per client: the snapshots replicated
  (``"volume/id"`` to the restic snapshot id), ``last_replicated`` (epoch seconds: the
  client's score in the queue, gitbackup's ZSET done on files), the last success, the
  last error, the consecutive failures and the time a retry is due;
* ``offsite/state.json``: the repository-wide record (the last run, the last restic
  prune, the last repository-wide error, its consecutive failures and back-off).

The queue itself is not stored: it is every visible snapshot of a replicated volume that
its client's record does not name, so a snapshot promoted while nothing ran, or a run
killed at any instant, can never be lost from it. A snapshot enters its client's record
only after restic reported success. Records are written whole and atomically by the one
run holding ``locks/offsite.lock``; readers (status, metrics) need no lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from xsbackup.errors import LockBusy
from xsbackup.locking import FileLock
from xsbackup.store import Store, atomic_write, check_client

MAX_BACKOFF_DOUBLINGS = 6  # retry_seconds * 2**6 at most


def offsite_dir(store: Store) -> Path:
    return store.root / "offsite"


def run_lock(store: Store) -> FileLock:
    """Held by the one replication run (or restore, rebuild, prune of the repository)."""
    return FileLock(store.locks_dir / "offsite.lock")


def acquire(store: Store) -> FileLock:
    """``run_lock`` taken without waiting; ``LockBusy`` names what holds it."""
    try:
        return run_lock(store).acquire()
    except LockBusy:
        raise LockBusy("another off-site run (xsbackup offsite, or serve's scheduler) is "
                       "in progress; try again when it ends") from None


def now_iso(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).isoformat(timespec="seconds")


def backoff_seconds(base: float, failures: int) -> float:
    """The wait after ``failures`` consecutive failures: doubled each time, capped."""
    return float(base * 2 ** min(max(failures - 1, 0), MAX_BACKOFF_DOUBLINGS))


@dataclass
class ClientRecord:
    client: str
    replicated: dict[str, str] = field(default_factory=dict)  # "volume/id" -> restic id
    last_replicated: float = 0.0
    last_success: str = ""
    last_error: str = ""
    last_error_at: str = ""
    failures: int = 0
    retry_at: float = 0.0

    def key(self, volume: str, sid: str) -> str:
        return f"{volume}/{sid}"

    def has(self, volume: str, sid: str) -> bool:
        return self.key(volume, sid) in self.replicated

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepoRecord:
    last_run: str = ""
    last_prune: str = ""
    last_error: str = ""
    last_error_at: str = ""
    failures: int = 0
    retry_at: float = 0.0
    volumes: list[str] = field(default_factory=list)  # offsite.volumes of the last run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    atomic_write(path, orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2),
                 mode=0o640)


def client_path(store: Store, client: str) -> Path:
    return offsite_dir(store) / "clients" / f"{check_client(client)}.json"


def load_client(store: Store, client: str) -> ClientRecord:
    data = _load(client_path(store, client))
    rec = ClientRecord(client)
    with contextlib.suppress(TypeError, ValueError):
        replicated = data.get("replicated", {})
        rec.replicated = {str(k): str(v) for k, v in replicated.items()} \
            if isinstance(replicated, dict) else {}
        rec.last_replicated = float(data.get("last_replicated", 0.0))
        rec.last_success = str(data.get("last_success", ""))
        rec.last_error = str(data.get("last_error", ""))
        rec.last_error_at = str(data.get("last_error_at", ""))
        rec.failures = int(data.get("failures", 0))
        rec.retry_at = float(data.get("retry_at", 0.0))
    return rec


def save_client(store: Store, rec: ClientRecord) -> None:
    _save(client_path(store, rec.client), rec.as_dict())


def load_repo(store: Store) -> RepoRecord:
    data = _load(offsite_dir(store) / "state.json")
    rec = RepoRecord()
    with contextlib.suppress(TypeError, ValueError):
        rec.last_run = str(data.get("last_run", ""))
        rec.last_prune = str(data.get("last_prune", ""))
        rec.last_error = str(data.get("last_error", ""))
        rec.last_error_at = str(data.get("last_error_at", ""))
        rec.failures = int(data.get("failures", 0))
        rec.retry_at = float(data.get("retry_at", 0.0))
        rec.volumes = [str(v) for v in data.get("volumes", [])]
    return rec


def save_repo(store: Store, rec: RepoRecord) -> None:
    _save(offsite_dir(store) / "state.json", rec.as_dict())


def known_clients(store: Store) -> list[str]:
    """Clients with a record (a client removed from the registry keeps its record)."""
    try:
        names = (offsite_dir(store) / "clients").iterdir()
        return sorted(p.stem for p in names if p.suffix == ".json")
    except FileNotFoundError:
        return []


def _inflight_path(store: Store) -> Path:
    return offsite_dir(store) / "inflight"


def set_inflight(store: Store, what: str) -> None:
    """Name the snapshot being backed up (until its client's record names it)."""
    path = _inflight_path(store)
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    atomic_write(path, what.encode() + b"\n", mode=0o640)


def inflight(store: Store) -> str:
    """The snapshot a killed pass was backing up, or ""."""
    try:
        return _inflight_path(store).read_text().strip()
    except FileNotFoundError:
        return ""


def clear_inflight(store: Store) -> None:
    _inflight_path(store).unlink(missing_ok=True)
