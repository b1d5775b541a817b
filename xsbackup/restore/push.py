"""``xsbackup restore push``: what goes where, for putting a client's snapshots back onto
freshly reflashed devices; ``device.py`` does the pushing (fabric).

Where a volume lands: ``--dest`` if given (``DEST/<volume>`` when several volumes are
pushed), else the volume's place on an XO below the device user's home: ``datastore``
into the Sugar profile's datastore and ``documents`` into ``Documents``. After a
datastore restore the summary says what the user must do (restart Sugar, so the Journal
re-indexes). A classroom file has one ``SN [user@]host[:port]`` per line.

Nothing here imports fabric, so the command line (and the forced command, which shares
it) starts without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from xsbackup.errors import InvalidName, XsbackupError
from xsbackup.restore.resolve import pick_volume, resolve
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import Store, check_client

if TYPE_CHECKING:
    from xsbackup.restore.pull import Server

XO_PLACES = {"datastore": ".sugar/default/datastore", "documents": "Documents"}
AFTER = {"datastore": "restart Sugar (log out and back in) so the Journal re-indexes the "
                      "restored entries"}
HOST_KEY_POLICIES = ("strict", "accept-new", "ignore")
BLOCK = 4096             # the space one item may take beyond its bytes
_TARGET_RE = re.compile(r"(?:([A-Za-z0-9._][A-Za-z0-9._-]*)@)?([A-Za-z0-9._:-]+?)(?::(\d{1,5}))?")

Progress = Callable[[int], None]


# ---- what goes where -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        return (f"{self.user}@" if self.user else "") + self.host + \
            (f":{self.port}" if self.port else "")


def parse_target(text: str) -> Target:
    """``[user@]host[:port]``."""
    m = _TARGET_RE.fullmatch(text.strip())
    if m is None or (m.group(3) and not 0 < int(m.group(3)) < 65536):
        raise InvalidName(f"{text[:80]!r} is not [user@]host[:port]")
    return Target(m.group(1), m.group(2), int(m.group(3)) if m.group(3) else None)


def read_hosts(path: Path) -> list[tuple[str, Target]]:
    """A classroom file: ``SN [user@]host[:port]`` per line; ``#`` comments, blank lines."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidName(f"cannot read {path}: {e}") from None
    out: list[tuple[str, Target]] = []
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise InvalidName(f"{path}:{n}: expected 'SERIAL HOST', got {line.strip()[:80]!r}")
        try:
            out.append((check_client(words[0]), parse_target(words[1])))
        except InvalidName as e:
            raise InvalidName(f"{path}:{n}: {e.message}") from None
    if not out:
        raise InvalidName(f"{path} names no device")
    return out


@dataclass(frozen=True)
class Piece:
    """One volume's snapshot and where it goes (relative to the device user's home
    unless absolute)."""

    volume: str
    snapshot: str
    dest: str
    bytes: int
    files: int

    @property
    def need(self) -> int:
        return self.bytes + BLOCK * self.files


def plan(store: Store, serial: str, volumes: tuple[str, ...], at: str | None,
         dest: str | None) -> list[Piece]:
    """The snapshots to push and their destinations; refusals before any connection."""
    vols = list(volumes) or store.volumes(serial) or [pick_volume(store, serial, None)]
    if not volumes and not dest:  # every volume that has a place on an XO
        vols = [v for v in vols if v in XO_PLACES] or vols
    pieces = []
    for vol in dict.fromkeys(pick_volume(store, serial, v) for v in vols):
        sid = resolve(store, serial, vol, at)
        if dest:
            where = dest if len(vols) == 1 else str(PurePosixPath(dest) / vol)
        elif vol in XO_PLACES:
            where = XO_PLACES[vol]
        else:
            raise InvalidName(f"volume {vol} has no place on an XO: give --dest")
        facts = read_facts(store.snapshots_dir(serial, vol) / sid)
        pieces.append(Piece(vol, sid, where, _int(facts.get("bytes")),
                            _int(facts.get("files"))))
    return pieces


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


# ---- one device --------------------------------------------------------------------------


@dataclass
class Outcome:
    serial: str
    host: str
    ok: bool = False
    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    error: str = ""
    code: int = 0
    volumes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "host": self.host, "ok": self.ok,
                "bytes": self.bytes, "files": self.files, "seconds": round(self.seconds, 2),
                "error": self.error, "exit_code": self.code, "volumes": self.volumes,
                "notes": self.notes}


@dataclass(frozen=True)
class Options:
    volumes: tuple[str, ...] = ()
    at: str | None = None
    dest: str | None = None
    identity: tuple[str, ...] = ()
    host_keys: str = "accept-new"
    known_hosts: Path | None = None
    parallel: int = 4
    archiver: tuple[str, ...] = ("xsbackup",)  # ``xsbackup --root R``: writes the tar
    archiver_env: dict[str, str] | None = None
    method: str = "auto"  # pull, tar, or auto: pull, and a tar where the device cannot
    server: Server | None = None  # where devices pull from (None: tar only)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ---- the summary -----------------------------------------------------------------------


def total_bytes(store: Store, devices: list[tuple[str, Target]], opts: Options) -> int:
    """What the progress bar counts to: the planned bytes of every device (0 for a
    device whose plan fails; it fails again, with its reason, when it runs)."""
    total = 0
    for serial, _ in devices:
        try:
            total += sum(p.bytes for p in plan(store, serial, opts.volumes, opts.at,
                                               opts.dest))
        except XsbackupError:
            continue
    return total


def rows(outcomes: list[Outcome]) -> Iterator[tuple[str, ...]]:
    """The summary table: one row per device."""
    yield ("SERIAL", "DEVICE", "RESULT", "ITEMS", "SIZE", "SECONDS", "REASON")
    for o in outcomes:
        yield (o.serial, o.host, "ok" if o.ok else "FAILED", str(o.files), mib(o.bytes),
               f"{o.seconds:.1f}", o.error)

