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
    The request waits for the admin (``xsbackup clients approve SN --fingerprint FP``):
    the ``approve`` policy for a new serial (``registration.new_serial``) or for a known
    serial with a different key (``registration.new_key``, a reflashed device or an
    impostor), and always for a serial that has data but no record (a removed client's
    history is never handed to a new key without the admin). Not ``OK`` on purpose: the
    device cannot back up yet, and Sugar retries registration later, which then gets
    ``OK`` once the key is approved.
``DENIED``
    Policy ``closed`` (for a new serial, or for a known serial with a new key), the client
    is disabled, or the key already belongs to another client. Nothing is stored.
``UNSUPPORTED_KEY``
    A DSA (``ssh-dss``) key, as old XOs have. The key *is* stored (active or waiting, as
    the policy says) so the device is known and an admin can see it, but modern OpenSSH
    and paramiko cannot authenticate DSA, so the device could never back up with it.
    Answering ``OK`` would make the device believe it is registered and then fail every
    night without anyone noticing; this answer makes Sugar show the failure, and the
    error says why.
``TRY_LATER``
    A limit was reached: too many new serials from this address or from everywhere in
    the last hour (``max_new_per_address_per_hour``, ``max_new_per_hour``), or too many
    requests of this serial already waiting (``max_pending_per_serial``). Nothing is
    stored.
``ERROR``
    Malformed input (serial, key, over-long nickname) or a server failure.

A key belongs to at most one client (``Transaction.save`` enforces it for every path:
this one, ``clients add``, approval). Re-registering the same serial with its active key
is idempotent: ``OK``, and the nickname and uuid follow the device. A waiting request
changes nothing, neither the client's keys nor its nickname or uuid, until the admin
approves it; asking again with the same key changes nothing either. Every request is
kept (its key and fingerprint, source address, time, nickname and uuid), at most
``max_pending_per_serial`` per serial, so an impostor's request cannot replace the
device's: the admin approves exactly one by fingerprint.

Approval makes that key active and by default retires the client's previously active
keys, since a reflashed device's old key is obsolete (``keep_old`` keeps them); it
applies the request's nickname and uuid. Everything here runs under the registry lock.
"""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any, Protocol

from xsbackup.clients.keys import ClientKey, parse_key
from xsbackup.clients.registry import Client, Registrations, Registry, Request, Transaction
from xsbackup.config import Settings
from xsbackup.errors import InvalidKey, NothingPending, SeveralPending
from xsbackup.logs import LOG
from xsbackup.store import CLIENT_RE

OK = "OK"
PENDING = "PENDING"
DENIED = "DENIED"
UNSUPPORTED_KEY = "UNSUPPORTED_KEY"
TRY_LATER = "TRY_LATER"
ERROR = "ERROR"
MAX_NICKNAME = 256
MAX_UUID = 128
MAX_REMOTE = 64
KNOWN_KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")
RATE_WINDOW = dt.timedelta(hours=1)


class _Key(Protocol):
    type: str
    status: str
    added: str

    @property
    def supported(self) -> bool: ...

    @property
    def fingerprint(self) -> str: ...


def key_summary(key: _Key) -> dict[str, Any]:
    """A key as the admin sees it: type, status, and the ``SHA256:`` fingerprint that
    ``ssh-keygen -lf`` prints for it."""
    return {"type": key.type, "status": key.status, "supported": key.supported,
            "added": key.added, "fingerprint": key.fingerprint}


def request_summary(registry: Registry, request: Request) -> dict[str, Any]:
    """A waiting request as ``clients pending`` shows it: the key, where and when it came
    from, what it asks for, and whether its serial is known or has data (history)."""
    return {"serial": request.serial, **key_summary(request.key), "remote": request.remote,
            "nickname": request.nickname, "uuid": request.uuid,
            "known": registry.exists(request.serial),
            "history": registry.has_data(request.serial)}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
             pubkey: Any, host: str, remote: str,
             now: dt.datetime | None = None) -> dict[str, str]:
    """Handle one OLPC ``register`` call; never raises for bad input (see module doc).

    ``host`` is the server name the device reached (the HTTP Host header without port);
    ``server.public_host`` overrides it. ``remote`` is the caller's address (the HTTP
    ``REMOTE_ADDR``), which the rate limits count and the admin sees.
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
    stamp = (now or _now()).isoformat(timespec="seconds")
    asked = Request(sn, ClientKey(ktype, blob, stamp, "pending"), remote[:MAX_REMOTE],
                    nickname.strip(), uuid.strip())
    server_host = settings.server.public_host or host or socket.gethostname()
    with registry.locked() as txn:
        return _decide(settings, txn, asked, server_host)


def _decide(settings: Settings, txn: Transaction, asked: Request,
            host: str) -> dict[str, str]:
    """Under the registry lock: store what the policy allows, and answer."""
    sn, key = asked.serial, asked.key
    fp = key.fingerprint
    others = [o for o in txn.holders(key.type, key.blob) if o != sn]
    if others:
        LOG.warning("client=%s registration from %s refused: key %s belongs to client %s",
                    sn, asked.remote, fp, ", ".join(others))
        return _fail(DENIED, "this key is already registered to another device")
    client = txn.get(sn)
    if client is not None and client.disabled:
        LOG.warning("client=%s registration refused: client is disabled", sn)
        return _fail(DENIED, f"device {sn} is disabled on this server")
    same = None if client is None else next(
        (k for k in client.active_keys() if (k.type, k.blob) == (key.type, key.blob)), None)
    if client is not None and same is not None:
        named = (asked.nickname or client.nickname, asked.uuid or client.uuid)
        if named != (client.nickname, client.uuid):
            client.nickname, client.uuid = named
            txn.save(client)
        LOG.info("client=%s registered again with its %s key", sn, key.type)
        return _answer(sn, same, host)
    regs = txn.registrations()
    waiting = [r for r in regs.pending if r.serial == sn]
    if any((r.key.type, r.key.blob) == (key.type, key.blob) for r in waiting):
        LOG.info("client=%s asked again for its waiting %s key %s", sn, key.type, fp)
        return _answer(sn, key, host)

    policy = settings.registration.new_key if client else settings.registration.new_serial
    if policy == "closed":
        LOG.warning("client=%s registration from %s refused: %s are closed", sn, asked.remote,
                    "new keys" if client else "new serials")
        if client:
            return _fail(DENIED, f"a different key is already registered for {sn}; "
                                 "ask the administrator")
        return _fail(DENIED, "this server does not accept new devices; "
                             "ask the administrator to register it")
    # A serial without a record but with data is a removed client's history.
    approve = policy == "approve" or (client is None and txn.registry.has_data(sn))
    if approve and len(waiting) >= settings.registration.max_pending_per_serial:
        LOG.warning("client=%s registration from %s refused: %d requests already waiting",
                    sn, asked.remote, len(waiting))
        return _fail(TRY_LATER, f"too many registrations of {sn} are waiting for approval; "
                                "ask the administrator")
    if client is None:
        limited = _count_new_serial(settings, regs, asked)
        if limited:
            LOG.warning("client=%s registration from %s refused: %s", sn, asked.remote,
                        limited)
            return _fail(TRY_LATER, limited)
    if approve:
        regs.pending.append(asked)
        LOG.warning("client=%s: registration of a %s key %s from %s waits for approval", sn,
                    key.type, fp, asked.remote)
        return _answer(sn, key, host)

    active = ClientKey(key.type, key.blob, key.added)
    if client is None:
        client = Client(serial=sn, created=key.added)
    client.keys.append(active)
    client.nickname = asked.nickname or client.nickname
    client.uuid = asked.uuid or client.uuid
    txn.save(client)
    LOG.info("client=%s registered a %s key %s from %s", sn, key.type, fp, asked.remote)
    return _answer(sn, active, host)


def _count_new_serial(settings: Settings, regs: Registrations, asked: Request) -> str:
    """Count one more new serial from ``asked.remote``, or say why the hour's limits
    refuse it ('' when counted). Forgets what is older than the window."""
    per_address = settings.registration.max_new_per_address_per_hour
    overall = settings.registration.max_new_per_hour
    if not (per_address or overall):
        return ""
    since = (dt.datetime.fromisoformat(asked.key.added) - RATE_WINDOW).isoformat(
        timespec="seconds")
    regs.recent = [(t, a) for t, a in regs.recent if t > since]
    if per_address and sum(a == asked.remote for _, a in regs.recent) >= per_address:
        return "too many new devices registered from this address in the last hour; " \
               "try again later"
    if overall and len(regs.recent) >= overall:
        return "too many new devices registered in the last hour; try again later"
    regs.recent.append((asked.key.added, asked.remote))
    return ""


def pending(registry: Registry) -> list[Request]:
    """Every request waiting for approval, by serial, oldest first within a serial."""
    return sorted(registry.registrations().pending, key=lambda r: r.serial)


def _choose(waiting: list[Request], serial: str, fingerprint: str | None) -> list[Request]:
    """The requests of ``serial`` that ``fingerprint`` names (all of them without one)."""
    mine = [r for r in waiting if r.serial == serial]
    if not mine:
        raise NothingPending(f"client {serial} has no registration awaiting approval")
    if fingerprint is None:
        return mine
    wanted = fingerprint if fingerprint.startswith("SHA256:") else f"SHA256:{fingerprint}"
    chosen = [r for r in mine if r.key.fingerprint == wanted]
    if not chosen:
        raise NothingPending(f"no registration of {serial} with key {wanted} is waiting "
                             f"(waiting: {', '.join(r.key.fingerprint for r in mine)})")
    return chosen


def approve(registry: Registry, serial: str, fingerprint: str | None = None,
            keep_old: bool = False, now: dt.datetime | None = None) -> Client:
    """Activate the waiting request of ``serial`` with this key ``fingerprint`` (without
    one: the only waiting request, else ``SeveralPending``), and apply its nickname and
    uuid; retire the client's other active keys unless ``keep_old``. ``KeyInUse`` if
    another client has that key by now."""
    stamp = (now or _now()).isoformat(timespec="seconds")
    with registry.locked() as txn:
        regs = txn.registrations()
        chosen = _choose(regs.pending, serial, fingerprint)
        if len(chosen) > 1:
            raise SeveralPending(f"{len(chosen)} registrations of {serial} are waiting; "
                                 "choose one by fingerprint: "
                                 + ", ".join(r.key.fingerprint for r in chosen))
        (request,) = chosen
        want = (request.key.type, request.key.blob)
        key = ClientKey(request.key.type, request.key.blob, stamp)
        client = txn.get(serial)
        retired: list[ClientKey] = []
        if client is None:
            client = Client(serial=serial, created=stamp)
        elif not keep_old:
            retired = client.active_keys()
        client.keys = [k for k in client.keys if k not in retired and (k.type, k.blob) != want]
        client.keys.append(key)
        client.nickname = request.nickname or client.nickname
        client.uuid = request.uuid or client.uuid
        txn.save(client)
        # That key is this client's now: other serials' requests for it can never succeed.
        dropped = [r for r in regs.pending if (r.key.type, r.key.blob) == want]
        regs.pending = [r for r in regs.pending if r not in dropped]
    LOG.warning("client=%s approved the %s key %s (asked from %s)%s", serial, key.type,
                key.fingerprint, request.remote or "?",
                f"; retired {len(retired)} old key(s)" if retired else "")
    for other in dropped:
        if other.serial != serial:
            LOG.warning("client=%s: dropped its request for key %s, now approved for %s",
                        other.serial, key.fingerprint, serial)
    return client


def reject(registry: Registry, serial: str, fingerprint: str | None = None) -> int:
    """Drop ``serial``'s waiting request with this key ``fingerprint`` (without one: all
    of them); returns how many were dropped."""
    with registry.locked() as txn:
        regs = txn.registrations()
        dropped = _choose(regs.pending, serial, fingerprint)
        regs.pending = [r for r in regs.pending if r not in dropped]
    LOG.warning("client=%s rejected %d waiting registration(s): %s", serial, len(dropped),
                ", ".join(r.key.fingerprint for r in dropped))
    return len(dropped)
