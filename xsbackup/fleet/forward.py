"""Registration on a fleet member with placement on (``[fleet] place_as``): a device
whose serial rendezvous hashing assigns to another server is registered there, and the
reply carries that server's ``backupurl``, as the XML-RPC reply always does. ds-backup
then backs up there with no change on the device.

The member runs ``xsbackup clients register`` on the assigned server over SSH, so that
server's own registration policy, limits and approval apply (the device's address is
passed along for its limits and for the admin); the member stores nothing.
"""

from __future__ import annotations

import base64
import shlex
from typing import Any

import orjson

from xsbackup.config import Settings
from xsbackup.errors import FleetServerFailed
from xsbackup.fleet import inventory
from xsbackup.fleet.remote import XSBACKUP, ServerConnection, reason
from xsbackup.logs import LOG
from xsbackup.store import CLIENT_RE


def encode_request(serial: str, nickname: str, uuid: str, pubkey: str) -> str:
    """The registration request as one shell-safe word (URL-safe base64 of JSON)."""
    doc = {"serial": serial, "nickname": nickname, "uuid": uuid, "pubkey": pubkey}
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode()


def decode_request(text: str) -> dict[str, Any]:
    """``encode_request``'s word back; ``ValueError`` when it is not one."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, orjson.JSONDecodeError) as e:
        raise ValueError(f"not a registration request: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a registration request")
    return doc


def placed_reply(settings: Settings, serial: Any, nickname: Any, uuid: Any, pubkey: Any,
                 remote: str) -> dict[str, str] | None:
    """The assigned server's reply when placement puts ``serial`` elsewhere; None when
    this server is the one (or the request is malformed: the local registration answers
    it with its own error)."""
    me = settings.fleet.place_as
    if not me or not all(isinstance(v, str) for v in (serial, nickname, uuid, pubkey)):
        return None
    sn = serial.strip()
    if not CLIENT_RE.fullmatch(sn):
        return None
    inv = inventory.load(inventory.locate(None, settings.fleet.inventory, settings.root))
    inv.get(me)  # this server must be in the inventory under that name
    target = inv.assign(sn)
    if target.name == me:
        return None
    command = " ".join([f"{XSBACKUP} clients register --json", "--host",
                        shlex.quote(target.address), "--remote", shlex.quote(remote or "-"),
                        "--request", encode_request(sn, nickname, uuid, pubkey)])
    conn = ServerConnection(target, settings.fleet.timeout)
    try:
        result = conn.run(command, hide=True, warn=True, in_stream=False)
    except Exception as e:  # fabric, paramiko and sockets raise many kinds
        raise FleetServerFailed(f"registration of {sn} on {target.name}: "
                                f"{reason(e, settings.fleet.timeout)}") from None
    finally:
        conn.close()
    try:
        reply = orjson.loads(result.stdout) if result.exited == 0 else None
    except orjson.JSONDecodeError:
        reply = None
    if not (isinstance(reply, dict) and isinstance(reply.get("success"), str)
            and all(isinstance(v, str) for v in reply.values())):
        raise FleetServerFailed(f"registration of {sn} on {target.name} failed: exit "
                                f"{result.exited}")
    LOG.info("client=%s registration from %s placed on %s: %s", sn, remote, target.name,
             reply["success"])
    return reply
