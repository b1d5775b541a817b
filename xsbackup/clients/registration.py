"""OLPC registration (the XS "identity manager") and the admin's approval of new keys.

Sugar calls ``register(serial, nickname, uuid, pubkey)`` over XML-RPC and accepts the
device as registered only when the reply's ``success`` is ``"OK"``; for anything else it
logs the reply's ``error`` and tells the user the server could not complete the request
(ds-backup-protocol.md, Registration). So every reply has ``success``, and every reply
that is not ``OK`` has an ``error`` string. The values:

``OK``
    The key is active and authorised in ``authorized_keys``. Carries ``backupurl``
    (``SN@host:backup``) and ``jabberserver`` (``host``).
``PENDING``
    The key is stored but waits for the admin (``xsbackup clients approve SN``): the
    ``approve`` policy for a new serial (``registration.new_serial``) or for a known serial
    with a different key (``registration.new_key``, a reflashed device or an impostor).
    Not ``OK`` on purpose: the device cannot back up yet, and Sugar retries registration
    later, which then gets ``OK`` once the key is approved.
``DENIED``
    Policy ``closed`` (for a new serial, or for a known serial with a new key), or the
    client is disabled. Nothing is stored.
``UNSUPPORTED_KEY``
    A DSA (``ssh-dss``) key, as old XOs have. The key *is* stored (with the status the
    policy gives it) so the device is known and an admin can see it, but modern OpenSSH
    and paramiko cannot authenticate DSA, so the device could never back up with it.
    Answering ``OK`` would make the device believe it is registered and then fail every
    night without anyone noticing; this answer makes Sugar show the failure, and the
    error says why.
``ERROR``
    Malformed input (serial, key, over-long nickname) or a server failure.

Re-registering the same serial with the same key is idempotent: it answers as the key's
current state does (``OK`` when active, ``PENDING`` while waiting) and updates the
nickname and uuid when given. Under ``approve`` a device keeps at most one pending key:
a newer registration replaces an older pending key, so repeated attempts cannot pile up.

``approve`` makes the pending key active and by default retires the client's previously
active keys, since a reflashed device's old key is obsolete (``keep_old`` keeps them).
Every change regenerates ``authorized_keys``. Registry read-modify-writes here take
``locks/registry.lock`` so concurrent registrations of one serial never lose a key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import socket
from typing import Any

from xsbackup.clients.registry import Client, ClientKey, Registry, parse_key
from xsbackup.config import Settings
from xsbackup.errors import InvalidKey, NothingPending
from xsbackup.logs import LOG
from xsbackup.store import CLIENT_RE

OK = "OK"
PENDING = "PENDING"
DENIED = "DENIED"
UNSUPPORTED_KEY = "UNSUPPORTED_KEY"
ERROR = "ERROR"
MAX_NICKNAME = 256
MAX_UUID = 128
KNOWN_KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")



def key_summary(key: ClientKey) -> dict[str, Any]:
    """A key as the admin sees it: type, status, and the ``SHA256:`` fingerprint that
    ``ssh-keygen -lf`` prints for it."""
    try:
        digest = hashlib.sha256(base64.b64decode(key.blob, validate=True)).digest()
        fingerprint = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    except (binascii.Error, ValueError):
        fingerprint = ""
    return {"type": key.type, "status": key.status, "supported": key.supported,
            "added": key.added, "fingerprint": fingerprint}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def normalize_key(text: str) -> tuple[str, str]:
    """(type, blob) of ``blob [comment]`` (what Sugar sends) or ``type blob [comment]``."""
    parts = text.split()
    if not parts:
        raise InvalidKey("empty public key")
    if parts[0].startswith(KNOWN_KEY_PREFIXES):
        return parse_key(" ".join(parts[:2]))
    return parse_key(parts[0])


def _fail(success: str, error: str) -> dict[str, str]:
    return {"success": success, "error": error}


def _ok(serial: str, host: str) -> dict[str, str]:
    return {"success": OK, "backupurl": f"{serial}@{host}:backup", "jabberserver": host}


def _answer(serial: str, key: ClientKey, host: str) -> dict[str, str]:
    if not key.supported:
        note = " (it also awaits administrator approval)" if key.status == "pending" else ""
        return _fail(UNSUPPORTED_KEY,
                     f"the key was stored{note}, but {key.type} keys cannot authenticate "
                     "transfers on this server; the device needs an RSA or Ed25519 key")
    if key.status == "pending":
        return _fail(PENDING, "key awaiting administrator approval")
    return _ok(serial, host)


def register(settings: Settings, registry: Registry, serial: Any, nickname: Any, uuid: Any,
             pubkey: Any, host: str) -> dict[str, str]:
    """Handle one OLPC ``register`` call; never raises for bad input (see module doc).

    ``host`` is the server name the device reached (the HTTP Host header without port);
    ``server.public_host`` overrides it.
    """
    if not all(isinstance(v, str) for v in (serial, nickname, uuid, pubkey)):
        return _fail(ERROR, "serial, nickname, uuid and pubkey must be strings")
    sn = serial.strip()
    if not CLIENT_RE.fullmatch(sn):
        LOG.warning("registration refused: malformed serial %r", serial[:80])
        return _fail(ERROR, "invalid serial number: it must match ^\\w{1,64}$")
    if len(nickname) > MAX_NICKNAME or len(uuid) > MAX_UUID:
        return _fail(ERROR, "nickname or uuid too long")
    try:
        ktype, blob = normalize_key(pubkey)
    except InvalidKey as e:
        LOG.warning("client=%s registration refused: %s", sn, e.message)
        return _fail(ERROR, e.message)
    server_host = settings.server.public_host or host or socket.gethostname()
    policy_serial = settings.registration.new_serial
    policy_key = settings.registration.new_key
    nickname, uuid = nickname.strip(), uuid.strip()
    answer: dict[str, str] = {}

    def decide(client: Client | None) -> Client | None:
        """Under the registry lock: the record to save (None: nothing), and the answer."""
        stamp = _now()
        if client is None:
            if policy_serial == "closed":
                LOG.warning("client=%s registration refused: new serials are closed", sn)
                answer.update(_fail(DENIED, "this server does not accept new devices; "
                                            "ask the administrator to register it"))
                return None
            status = "active" if policy_serial == "open" else "pending"
            key = ClientKey(type=ktype, blob=blob, added=stamp, status=status)
            LOG.info("client=%s registered with a %s key (%s)", sn, ktype, status)
            answer.update(_answer(sn, key, server_host))
            return Client(serial=sn, nickname=nickname, uuid=uuid, keys=[key], created=stamp)

        if client.disabled:
            LOG.warning("client=%s registration refused: client is disabled", sn)
            answer.update(_fail(DENIED, f"device {sn} is disabled on this server"))
            return None
        same = next((k for k in client.keys if k.type == ktype and k.blob == blob), None)
        if same is not None:
            changed = False
            if nickname and nickname != client.nickname:
                client.nickname, changed = nickname, True
            if uuid and uuid != client.uuid:
                client.uuid, changed = uuid, True
            LOG.info("client=%s registered again with its %s key (%s)", sn, ktype, same.status)
            answer.update(_answer(sn, same, server_host))
            return client if changed else None

        if policy_key == "closed":
            LOG.warning("client=%s registration refused: a different key is registered and "
                        "new keys are closed", sn)
            answer.update(_fail(DENIED, f"a different key is already registered for {sn}; "
                                        "ask the administrator"))
            return None
        status = "active" if policy_key == "open" else "pending"
        key = ClientKey(type=ktype, blob=blob, added=stamp, status=status)
        if status == "pending":
            client.keys = [k for k in client.keys if k.status != "pending"]
        client.keys.append(key)
        if nickname:
            client.nickname = nickname
        if uuid:
            client.uuid = uuid
        LOG.warning("client=%s registered a new %s key (%s)", sn, ktype, status)
        answer.update(_answer(sn, key, server_host))
        return client

    registry.update(sn, decide, rekey=True)
    return answer


def pending(registry: Registry) -> list[tuple[str, ClientKey]]:
    """Every key awaiting approval as (serial, key), by serial."""
    return [(c.serial, k) for c in registry.all() for k in c.keys if k.status == "pending"]


def approve(registry: Registry, serial: str, keep_old: bool = False) -> Client:
    """Activate ``serial``'s pending key; retire its other active keys unless ``keep_old``."""
    waiting: list[ClientKey] = []
    retired: list[ClientKey] = []

    def activate(client: Client) -> None:
        waiting[:] = [k for k in client.keys if k.status == "pending"]
        if not waiting:
            raise NothingPending(f"client {serial} has no key awaiting approval")
        retired[:] = [] if keep_old else [k for k in client.keys if k.status == "active"]
        client.keys = [k for k in client.keys if k not in retired]
        for k in waiting:
            k.status = "active"

    client = registry.modify(serial, activate, rekey=True)
    LOG.warning("client=%s approved %s key(s)%s", serial, ",".join(k.type for k in waiting),
                f"; retired {len(retired)} old key(s)" if retired else "")
    return client


def reject(registry: Registry, serial: str) -> int:
    """Drop ``serial``'s pending keys; returns how many were dropped."""
    dropped: list[ClientKey] = []

    def drop(client: Client) -> None:
        dropped[:] = [k for k in client.keys if k.status == "pending"]
        if not dropped:
            raise NothingPending(f"client {serial} has no key awaiting approval")
        client.keys = [k for k in client.keys if k.status != "pending"]

    registry.modify(serial, drop, rekey=True)
    LOG.warning("client=%s rejected %d pending key(s)", serial, len(dropped))
    return len(dropped)
