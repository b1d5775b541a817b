"""The device side of ``restore push --method pull``: the device runs ``rsync`` and pulls
one snapshot from this server with a one-time restore key (``pullkey``).

The device gets, in one SSH session of the push's fabric connection:

* the restore key's private half on its stdin (never on a command line, which other users
  of the device could read in ``ps``), written to a mode-0600 file in a mode-0700
  ``mktemp -d`` directory that a shell trap removes when the pull ends (success, failure,
  or the push's connection going away);
* this server's host keys in a known-hosts file beside it, with ``HostKeyAlias`` and
  ``StrictHostKeyChecking=yes``: the device talks to this server or to nobody;
* ``rsync -rlpt`` (``-goD --numeric-ids`` too when the device user is root, so owners come
  back as the snapshot's fake-super records have them) of ``VOLUME/ID/`` into its place.
  The server side is the forced command's ordinary download: ``rsync --server --sender
  --fake-super`` on the snapshot opened through ``restore.access``.

rsync prints one ``%i %l`` line per item, which the push turns into progress. Exit 97
means the device has no ``rsync`` or ``ssh`` (or no ``/tmp``); rsync's "0 bytes received
so far" means the device could not reach or log in to this server: both are ``NoPull``,
on which ``--method auto`` sends the volume as a tar instead.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import paramiko

from xsbackup.errors import InvalidName

ALIAS = "xsbackup-restore"  # the server's name in the device's temporary known_hosts
NO_TOOLS = 97
CONNECT_TIMEOUT = 20
METHODS = ("auto", "pull", "tar")
GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
       "aes128-ctr", "aes256-ctr")


class NoPull(Exception):
    """The device cannot pull from this server (no rsync/ssh, or it cannot connect)."""


@dataclass(frozen=True)
class Server:
    """Where devices pull from: ``host`` "" means this end of each device's connection."""

    login: str
    host: str
    port: int
    known_hosts: tuple[str, ...]  # "type blob" of each host key of this server


def host_keys(files: tuple[Path, ...]) -> tuple[str, ...]:
    """``type blob`` of each key file: an OpenSSH ``.pub`` line or a private key (the
    embedded server's own, read as its public half)."""
    out = []
    for path in files:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidName(f"cannot read the server host key {path}: {e}") from None
        words = text.split()
        if len(words) >= 2 and not text.startswith("-----"):
            out.append(f"{words[0]} {words[1]}")
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except (paramiko.SSHException, OSError, ValueError) as e:
            raise InvalidName(f"{path} is not an SSH host key: {e}") from None
        out.append(f"{key.get_name()} {key.get_base64()}")
    if not out:
        raise InvalidName("no host key of this server to give the devices: "
                          "--server-host-key FILE")
    return tuple(out)


def script(server: Server, host: str, volume: str, snapshot: str, place: str,
           root: bool) -> str:
    """The device's shell command: the key from stdin into a private temp dir, then the
    rsync pull; the temp dir goes whatever happens."""
    known = "".join(f"{ALIAS} {line}\n" for line in server.known_hosts)
    ssh = (f"ssh -F /dev/null $g -i $d/id -o IdentitiesOnly=yes -o IdentityAgent=none "
           f"-o UserKnownHostsFile=$d/known_hosts -o GlobalKnownHostsFile=/dev/null "
           f"-o HostKeyAlias={ALIAS} -o StrictHostKeyChecking=yes -o BatchMode=yes "
           f"-o ConnectTimeout={CONNECT_TIMEOUT} -o LogLevel=ERROR "
           f"-p {server.port} -l {shlex.quote(server.login)}")
    remote = (f"[{host}]" if ":" in host else host) + f":{volume}/{snapshot}/"
    flags = "-rlptgoD --numeric-ids" if root else "-rlpt"
    q = shlex.quote(place)
    return "; ".join([
        "umask 077",
        f"command -v rsync >/dev/null && command -v ssh >/dev/null || "
        f"{{ echo 'no rsync or ssh on the device' >&2; exit {NO_TOOLS}; }}",
        f"d=$(mktemp -d /tmp/xsbrestore.XXXXXX) || exit {NO_TOOLS}",
        # AES-GCM first where the device's ssh has it: one pass per packet, measured
        # 15-30% faster than CTR with HMAC against the embedded (paramiko) server
        f"g=; ssh -Q cipher 2>/dev/null | grep -qx {GCM[0]} && g=-oCiphers={','.join(GCM)}",
        "trap 'rm -rf \"$d\"' EXIT",
        "trap 'exit 129' HUP INT TERM PIPE",
        f"cat > \"$d/id\" || exit {NO_TOOLS}",
        f"printf %s {shlex.quote(known)} > \"$d/known_hosts\"",
        f"mkdir -p -- {q} || exit 1",
        f"rsync {flags} --out-format='%i %l' -e \"{ssh}\" -- {shlex.quote(remote)} {q}/ "
        "</dev/null",
    ])


def failed(status: int, stderr: bytes) -> str | None:
    """Why a pull that ended with ``status`` failed (None: it did not); ``NoPull`` when
    nothing was transferred because the device could not pull at all."""
    if status == 0:
        return None
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    why = next((ln for ln in lines if "rsync error" not in ln and "connection unexpectedly"
                not in ln), lines[-1] if lines else f"exit status {status}")
    if status == NO_TOOLS or (status in (12, 255) and b"(0 bytes received so far)" in stderr):
        raise NoPull(why.removeprefix("xsbackup: "))
    return why
