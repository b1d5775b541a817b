"""The storage layout of the state root (DESIGN.md section 2) and its small primitives.

Everything that names a path under the root lives here, so no other module joins a
client-supplied string onto a path: names are validated first (``check_client``,
``check_volume``, ``check_snapshot_id``) and only then become path components.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from xsbackup import layout
from xsbackup.errors import InvalidName, StateRootError, XattrUnsupported
from xsbackup.layout import LAYOUT_DIRS, is_initialised
from xsbackup.records import record

CLIENT_RE = layout.CLIENT_RE  # owned by ``layout``; importers of store find it here too

VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SNAPSHOT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{6}Z(?:-\d{1,6})?")
XATTR_PREFIX = "user.xsbackup."
PRIVATE_DIRS = ("ssh", "locks")  # never the root group's
HOST_KEYS = ("ssh_host_ed25519_key", "ssh_host_rsa_key")  # the embedded SSH server's, in ssh/
ROOT_MODE = 0o700        # the state root: the service account only
GROUP_ROOT_MODE = 0o750  # ... and, read-only, ``storage.root_group`` when one is set


def check_client(name: str) -> str:
    if not CLIENT_RE.fullmatch(name):
        raise InvalidName(f"invalid client serial {name!r}: must match ^\\w{{1,64}}$")
    return name


def check_volume(name: str) -> str:
    if not VOLUME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"invalid volume name {name!r}")
    return name


def check_snapshot_id(name: str) -> str:
    if not SNAPSHOT_RE.fullmatch(name):
        raise InvalidName(f"invalid snapshot id {name!r}: expected YYYY-MM-DDTHHMMSSZ[-N]")
    return name


def snapshot_id_for(now: dt.datetime) -> str:
    """The id of a snapshot completed at ``now`` (server UTC), without collision suffix."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")


def snapshot_time(snapshot_id: str) -> dt.datetime:
    base = check_snapshot_id(snapshot_id).split("-", 3)
    stamp = "-".join(base[:3])
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def snapshot_sort_key(snapshot_id: str) -> tuple[str, int]:
    head, _, suffix = snapshot_id.partition("Z")
    return (head, int(suffix[1:]) if suffix.startswith("-") and suffix[1:].isdigit() else 0)


@record(frozen=True)
class Store:
    """Paths of one state root. Construct with ``Store(root)``; nothing is touched."""

    root: Path

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def trash_dir(self) -> Path:
        return self.root / "trash"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def users_file(self) -> Path:
        """The HTTP API's and web UI's admin users (``web.users``)."""
        return self.root / "admin" / "users.json"

    def identity_files(self) -> list[Path]:
        """The server's own secrets that are not client data: the embedded SSH server's
        host keys and the HTTP admin users. The off-site registry copy carries them."""
        return [*(self.ssh_dir / name for name in HOST_KEYS), self.users_file]

    @property
    def trash_lock(self) -> Path:
        """Held by whoever empties ``trash/``; made by ``init_root``, so a purge on a disk
        out of inodes needs none."""
        return self.locks_dir / "trash.lock"

    @property
    def maintenance_flag(self) -> Path:
        return self.root / "maintenance"

    def client_dir(self, client: str) -> Path:
        return self.clients_dir / check_client(client)

    def volume_dir(self, client: str, volume: str) -> Path:
        return self.client_dir(client) / "volumes" / check_volume(volume)

    def snapshots_dir(self, client: str, volume: str) -> Path:
        return self.volume_dir(client, volume) / "snapshots"

    def incoming_dir(self, client: str, volume: str) -> Path:
        return self.volume_dir(client, volume) / "incoming"

    def reports_dir(self, client: str) -> Path:
        return self.client_dir(client) / "reports"

    def volumes(self, client: str) -> list[str]:
        base = self.client_dir(client) / "volumes"
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if VOLUME_RE.fullmatch(n))

    def snapshot_ids(self, client: str, volume: str) -> list[str]:
        """Visible snapshots of a volume, oldest first."""
        try:
            names = os.listdir(self.snapshots_dir(client, volume))
        except FileNotFoundError:
            return []
        return sorted((n for n in names if SNAPSHOT_RE.fullmatch(n)), key=snapshot_sort_key)

    def incoming_ids(self, client: str, volume: str) -> list[str]:
        try:
            names = os.listdir(self.incoming_dir(client, volume))
        except FileNotFoundError:
            return []
        return sorted((n for n in names if SNAPSHOT_RE.fullmatch(n)), key=snapshot_sort_key)

    def latest_id(self, client: str, volume: str) -> str | None:
        """The snapshot ``latest`` names, or None. The link is ours; its target is checked."""
        try:
            target = os.readlink(self.volume_dir(client, volume) / "latest")
        except OSError:
            return None
        head, _, name = target.rpartition("/")
        if head != "snapshots" or not SNAPSHOT_RE.fullmatch(name):
            return None
        return name

    def is_initialised(self) -> bool:
        return is_initialised(self.root)

    def require(self) -> Store:
        if not self.is_initialised():
            raise StateRootError(
                f"{self.root} is not an xsbackup state root (run: xsbackup --root {self.root} init)"
            )
        return self


def check_xattrs(directory: Path) -> None:
    """Refuse a filesystem without user xattrs: snapshots and fake-super depend on them."""
    probe = directory / f".xattr-probe-{os.urandom(4).hex()}"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.xsbackup.probe", b"1")
        if os.getxattr(probe, "user.xsbackup.probe") != b"1":
            raise OSError("xattr read back differs")
    except OSError as e:
        raise XattrUnsupported(
            f"{directory}: the filesystem does not support user extended attributes ({e}); "
            "use ext4, xfs, btrfs or zfs with user xattrs enabled"
        ) from None
    finally:
        probe.unlink()


def init_root(root: Path, group: str | None = None) -> Store:
    """Create the layout (idempotent), verify user xattrs work there, and close the root
    to other local users: mode 0700, or 0750 owned by ``group`` (``storage.root_group``)
    when one is named. With ``group=None`` (``serve``'s start) a new root is 0700 and an
    existing one only loses what no setting allows (world access, group write), so a
    group the administrator configured stays."""
    store = Store(root)
    try:
        root.mkdir(mode=ROOT_MODE, parents=True, exist_ok=True)
        _close_root(root, group)
        check_xattrs(root)
        for d in LAYOUT_DIRS:
            private = d in PRIVATE_DIRS
            (root / d).mkdir(mode=0o700 if private else 0o750, exist_ok=True)
            _chmod_at_most(root / d, 0o700 if private else 0o750)
        os.close(os.open(store.trash_lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    except OSError as e:
        raise StateRootError(f"cannot create state root {root}: {e.strerror or e}") from None
    return store


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StateRootError(f"storage.root_group: there is no group {group!r}") from None


def _chmod_at_most(path: Path, allowed: int) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & ~allowed:
        os.chmod(path, mode & allowed)


def _close_root(root: Path, group: str | None) -> None:
    if group is None:
        _chmod_at_most(root, GROUP_ROOT_MODE)
        return
    if group:
        os.chown(root, -1, _group_id(group))
    os.chmod(root, GROUP_ROOT_MODE if group else ROOT_MODE)


def root_warnings(root: Path, group: str) -> list[str]:
    """What makes the state root readable by more than the service account (and
    ``group``, the configured ``storage.root_group``): ``status`` shows these."""
    allowed = GROUP_ROOT_MODE if group else ROOT_MODE
    try:
        st = os.stat(root)
    except OSError as e:
        return [f"state root {root}: {e.strerror or e}"]
    out = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~allowed:
        what = ("every local user can reach the backups" if mode & 0o007 else
                "its group can write there" if group else "its group can reach the backups")
        out.append(f"state root {root} is mode {mode:04o}: {what}; run xsbackup init to "
                   f"make it {allowed:04o}")
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            out.append(f"storage.root_group: there is no group {group!r}")
        else:
            if st.st_gid != gid:
                out.append(f"state root {root} belongs to group {st.st_gid}, not "
                           f"{group}; run xsbackup init")
    return out


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one.
    ``sync=False`` skips the fsyncs, for data that may be lost in a crash (counters)."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` by renaming a temporary symlink over it."""
    tmp = link.with_name(f".{link.name}.{os.urandom(4).hex()}.tmp")
    os.symlink(target, tmp)
    try:
        os.rename(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def set_xattrs(path: Path | int, facts: dict[str, str]) -> None:
    for k, v in facts.items():
        os.setxattr(path, XATTR_PREFIX + k, v.encode(), follow_symlinks=False)


def get_xattrs(path: Path | int) -> dict[str, str]:
    """Every ``user.xsbackup.*`` xattr of ``path`` (not following a symlink)."""
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith(XATTR_PREFIX):
            with contextlib.suppress(OSError):
                value = os.getxattr(path, name, follow_symlinks=False)
                out[name[len(XATTR_PREFIX):]] = value.decode(errors="replace")
    return out


def iter_clients(store: Store) -> Iterator[str]:
    try:
        names = sorted(os.listdir(store.clients_dir))
    except FileNotFoundError:
        return
    for n in names:
        if CLIENT_RE.fullmatch(n):
            yield n


@record(frozen=True)
class DiskUse:
    """How full the state root's filesystem is, by df's definition: used blocks over
    used plus those available to unprivileged users (reserved blocks are not usable).
    Admission, prune's soft quota, the dashboard, ``status`` and ``/metrics`` all use this
    one figure."""

    blocks_pct: float
    inodes_pct: float
    free_bytes: int
    total_bytes: int

    @property
    def df_blocks_pct(self) -> int:
        """The "Use%" column of ``df`` (rounded up, as df does)."""
        return math.ceil(self.blocks_pct)

    def as_dict(self) -> dict[str, float | int]:
        """The figure as ``status --json`` reports it."""
        return {"blocks_pct": self.blocks_pct, "df_blocks_pct": self.df_blocks_pct,
                "inodes_pct": self.inodes_pct, "free_bytes": self.free_bytes,
                "total_bytes": self.total_bytes}


def disk_use(path: os.PathLike[str] | str) -> DiskUse:
    st = os.statvfs(path)
    blocks = st.f_blocks or 1
    used_blocks = st.f_blocks - st.f_bfree
    # Like df: the share of the blocks an unprivileged user may use.
    usable = used_blocks + st.f_bavail or 1
    inodes_used = st.f_files - st.f_ffree
    return DiskUse(
        blocks_pct=100.0 * used_blocks / usable if usable else 100.0 * used_blocks / blocks,
        inodes_pct=100.0 * inodes_used / st.f_files if st.f_files else 0.0,
        free_bytes=st.f_bavail * st.f_frsize,
        total_bytes=st.f_blocks * st.f_frsize,
    )

