"""One-time restore keys: how a device may pull one snapshot from this server.

``xsbackup restore push --method pull`` (``device.py``) makes one key per volume it
pushes: a fresh Ed25519 pair whose private half exists only in this process's memory and,
for the length of the pull, in a mode-0600 file on the device. Its public half goes into
the registry's restore keys (``ssh/restore-keys.json``) and from there into
``authorized_keys`` as::

    restrict,expiry-time="YYYYMMDDHHMMSSZ",command="xsbackup ... --client SN --restore-key ID"

so that it

* authenticates only as client SN (OpenSSH forces the command; the embedded server's key
  lookup reads the same line and also refuses it after its expiry time);
* allows exactly one request (``check``, in the forced command): an rsync download of the
  whole snapshot it names, of SN's own volume (no alias, no path below it, no upload,
  no verb), once: the first session that uses it takes it off the record;
* expires ``LIFETIME`` seconds after it was made (a login after that is refused by
  OpenSSH's ``expiry-time``, by the embedded server, and by ``check``);
* is dropped by the push when the pull ends, whatever happened (``issued`` is a context
  manager); one left behind by a killed push is harmless (expired, and used at most once)
  and every publish of ``authorized_keys`` sweeps it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from xsbackup.clients.keys import RestoreKey
from xsbackup.clients.registry import Registry
from xsbackup.errors import RequestRefused

LIFETIME = 300  # seconds from the key's making to the device's login
_MINE: set[str] = set()  # the keys this process issued and has not dropped yet
_MINE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Issued:
    key: RestoreKey
    private: bytes  # OpenSSH private key file text


def _pair() -> tuple[bytes, str, str]:
    private = ed25519.Ed25519PrivateKey.generate()
    text = private.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    ktype, blob = public.split()[:2]
    return text, ktype, blob


@contextlib.contextmanager
def issued(registry: Registry, serial: str, volume: str, snapshot: str,
           lifetime: int = LIFETIME) -> Iterator[Issued]:
    """A restore key for one download of ``serial``'s ``volume``/``snapshot``, on record
    (and in ``authorized_keys``) while the block runs, dropped after it."""
    text, ktype, blob = _pair()
    key = RestoreKey(secrets.token_hex(8), serial, ktype, blob, volume, snapshot,
                     int(time.time()) + lifetime)
    with _MINE_LOCK:
        _MINE.add(key.id)
    with registry.locked() as txn:
        txn.set_restore_keys({**txn.restore_keys(), key.id: key})
    try:
        yield Issued(key, text)
    finally:
        drop(registry, key.id)


def drop_mine(registry: Registry) -> None:
    """Drop every key this process issued and still holds: the push's last word when it
    is interrupted while device threads are pulling."""
    with _MINE_LOCK:
        mine = set(_MINE)
    for key_id in mine:
        drop(registry, key_id)


def drop(registry: Registry, key_id: str) -> None:
    """Take ``key_id`` off the record (if still there) and sweep expired keys."""
    with _MINE_LOCK:
        _MINE.discard(key_id)
    with registry.locked() as txn:
        keys = txn.restore_keys()
        if key_id in keys or any(not k.live() for k in keys.values()):
            txn.set_restore_keys({k: v for k, v in keys.items() if k != key_id})


def check(registry: Registry, serial: str, key_id: str, kind: str, source: str,
          path: tuple[str, ...], volume: str, snapshot: str) -> None:
    """The forced command's rule for a session that logged in with restore key
    ``key_id``: the request must be the download that key names, of ``serial``'s own
    snapshot (``kind``, ``source``: an aliased client, ``path`` below the snapshot, as the
    request parser found them), and the key live and unused. Any attempt uses the key up,
    before anything is read. ``RequestRefused`` otherwise."""
    with registry.locked() as txn:
        keys = txn.restore_keys()
        key = keys.get(key_id)
        if key is None or key.serial != serial or not key.live():
            raise RequestRefused("this restore key is used up, expired or unknown")
        txn.set_restore_keys({k: v for k, v in keys.items() if k != key_id})
    if kind != "download" or source or path:
        raise RequestRefused("a restore key only downloads the whole snapshot it was made for")
    if (volume, snapshot) != (key.volume, key.snapshot):
        raise RequestRefused(f"this restore key is for {key.volume}/{key.snapshot}, "
                             f"not {volume}/{snapshot}")
