"""The few names of the state root that the forced command needs before anything else.

Standard library ``os`` and ``re`` only, nothing of xsbackup: ``cli.entry`` answers an
SSH connectivity check (``true``) from these alone, in less start-up time than rrsync
(bench/README.md, "forced command start-up"). ``store`` and ``config`` take them from
here, so each rule has one owner.
"""

from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_ROOT = "./xsbackup-state"
CLIENT_RE = re.compile(r"\w{1,64}", re.ASCII)
LAYOUT_DIRS = ("clients", "queue", "locks", "trash", "ssh", "log")
CLIENT_RECORD = "client.json"  # clients/<SN>/client.json: the registry's record
# The service's processes (serve, ssh-command, postprocess: ``cli.main``) create nothing
# another user may read, nor their group write.
SERVICE_UMASK = 0o027
# serve's pre-loaded forced command server (cli.forkserver) listens here, in a directory
# only the service user may enter; without it the forced command runs alone.
FORKED_SOCKET = os.path.join("run", "forced.sock")


def state_root(root: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> str:
    """The absolute state root: ``--root``, else ``XSBACKUP_ROOT``, else the default."""
    text = root if root is not None else environ.get("XSBACKUP_ROOT", DEFAULT_ROOT)
    return os.path.abspath(os.fspath(text))


def is_initialised(root: str | os.PathLike[str]) -> bool:
    """Every directory ``init`` makes is there."""
    return all(os.path.isdir(os.path.join(root, d)) for d in LAYOUT_DIRS)


def client_record(root: str | os.PathLike[str], serial: str) -> str:
    """The path of a client's registry record; ``serial`` must match ``CLIENT_RE``."""
    if not CLIENT_RE.fullmatch(serial):
        raise ValueError(f"invalid client serial {serial!r}")
    return os.path.join(root, "clients", serial, CLIENT_RECORD)


def forked_socket(root: str | os.PathLike[str]) -> str:
    """The unix socket of ``serve``'s forced command server for the state root ``root``."""
    return os.path.join(root, FORKED_SOCKET)
