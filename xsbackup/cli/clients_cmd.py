"""``xsbackup clients`` and ``xsbackup keys``: the registry of client devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xsbackup.cli._common import (
    Invocation,
    emit_json,
    pass_invocation,
    size_option,
    size_text,
    with_context,
)
from xsbackup.context import Context


@click.group()
def clients() -> None:
    """Register, list and remove client devices."""

@clients.command("add")
@click.argument("serial")
@click.option("--pubkey", "pubkey_file", type=click.Path(dir_okay=False, exists=True),
              help="OpenSSH public key file (type blob [comment]).")
@click.option("--pubkey-blob", metavar="BASE64",
              help="Bare base64 key blob (the OLPC registration form).")
@click.option("--nickname", default="", help="A human name for the device.")
@click.option("--uuid", default="", help="The device's uuid.")
@click.option("--system-user", is_flag=True,
              help="Also create a login for SN sharing the service account's uid and gid, "
                   "with no shell (root only; for ds-backup devices that log in as their "
                   "serial).")
@click.option("--service-user", metavar="NAME",
              help="With --system-user: the account xsbackup runs as (default: the owner "
                   "of the state root). Never root.")
@pass_invocation
def clients_add(inv: Invocation, serial: str,
                pubkey_file: str | None, pubkey_blob: str | None, nickname: str, uuid: str,
                system_user: bool, service_user: str | None) -> None:
    """Register client SERIAL with its public key; regenerates authorized_keys.

    Run as root, it writes the state root as the service account (the state root's owner,
    or --service-user), so no file there ends up owned by root."""
    from xsbackup import logs
    from xsbackup.clients import sysuser
    from xsbackup.errors import InvalidKey

    if (pubkey_file is None) == (pubkey_blob is None):
        raise InvalidKey("give exactly one of --pubkey FILE or --pubkey-blob BASE64")
    if service_user and not system_user:
        raise click.UsageError("--service-user goes with --system-user")
    key = Path(pubkey_file).read_text() if pubkey_file else pubkey_blob
    settings = inv.settings()
    ctx = Context.open(settings)  # reads only: the state root must be initialised
    account = sysuser.prepare_login(serial, ctx.store.root, service_user) if system_user \
        else sysuser.owner(ctx.store.root)
    with sysuser.acting_as(account):
        logs.setup(settings)
        client = ctx.registry.add(serial, key, nickname=nickname, uuid=uuid)
    if system_user:
        sysuser.create_login(serial, account)
        with sysuser.acting_as(account):
            client = ctx.registry.modify(serial, lambda c: setattr(c, "system_user", True))
    path = ctx.store.ssh_dir / "authorized_keys"
    key0 = client.keys[0]
    note = "" if key0.supported else \
        f" (warning: {key0.type} keys are stored but cannot authenticate transfers)"
    click.echo(f"added {serial} with a {key0.type} key{note}; updated {path}")

@clients.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def clients_list(ctx: Context, as_json: bool) -> None:
    """List registered clients."""

    rows: list[dict[str, Any]] = [{"serial": c.serial, "nickname": c.nickname, "uuid": c.uuid,
             "keys": [{"type": k.type, "status": k.status, "supported": k.supported}
                      for k in c.keys],
             "disabled": c.disabled, "aliases": c.aliases, "created": c.created,
             "volumes": ctx.store.volumes(c.serial)}
            for c in ctx.registry.all()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no clients")
    for r in rows:
        keys = ",".join(k["type"] for k in r["keys"]) or "-"
        state = " (disabled)" if r["disabled"] else ""
        click.echo(f"{r['serial']:<16} {r['nickname'] or '-':<20} {keys}{state}")

@clients.command("remove")
@click.argument("serial")
@click.option("--purge", is_flag=True, help="Also delete the client's snapshots.")
@with_context
def clients_remove(ctx: Context, serial: str, purge: bool) -> None:
    """Remove a client (its data is kept unless --purge); regenerates authorized_keys."""
    from xsbackup.clients import sysuser

    client = ctx.registry.get(serial)
    if client.system_user:
        sysuser.remove_login(serial)
    with sysuser.acting_as(sysuser.owner(ctx.store.root)):  # as root: keep its ownership
        ctx.registry.remove(serial, purge=purge)
        if purge:
            ctx.storage.purge()
    click.echo(f"removed {serial}" + (" and its data" if purge else "; data kept"))

def _set_disabled(ctx: Context, serial: str, disabled: bool) -> None:
    ctx.registry.modify(serial, lambda c: setattr(c, "disabled", disabled))
    click.echo(f"{serial} {'disabled' if disabled else 'enabled'}")

@clients.command("disable")
@click.argument("serial")
@with_context
def clients_disable(ctx: Context, serial: str) -> None:
    """Refuse every transfer of a client (its keys leave authorized_keys; data is kept)."""
    _set_disabled(ctx, serial, True)

@clients.command("enable")
@click.argument("serial")
@with_context
def clients_enable(ctx: Context, serial: str) -> None:
    """Allow a disabled client to transfer again."""
    _set_disabled(ctx, serial, False)

@clients.command("set-policy")
@click.argument("serial")
@click.option("--keep-last", type=int)
@click.option("--keep-within", help="A duration: 90d, 12h, 2w...; '' to turn it off.")
@click.option("--keep-hourly", type=int)
@click.option("--keep-daily", type=int)
@click.option("--keep-weekly", type=int)
@click.option("--keep-monthly", type=int)
@click.option("--keep-yearly", type=int)
@click.option("--keep-first-monthly", type=int)
@click.option("--quota-bytes", callback=size_option, help="Refuse transfers at or above "
              "this usage: bytes, or a size such as 20GiB (0: none).")
@click.option("--reset", is_flag=True, help="Drop every override first.")
@with_context
def clients_set_policy(ctx: Context, serial: str,
                       reset: bool, **values: Any) -> None:
    """Override the retention policy (and set a quota) for one client."""
    from xsbackup.clients.registry import Client
    from xsbackup.errors import ConfigError
    from xsbackup.retention import prune as core

    def change(client: Client) -> None:
        policy = {} if reset else dict(client.policy)
        policy.update({k: v for k, v in values.items() if v is not None})
        if policy.get("quota_bytes") == 0:
            policy.pop("quota_bytes")
        try:
            core.policy_for(ctx.settings, Client(serial=serial, policy=policy))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"invalid policy for {serial}: {e}") from None
        client.policy = policy

    policy = ctx.registry.modify(serial, change).policy
    shown = {k: size_text(v) if k == "quota_bytes" else v for k, v in policy.items()}
    click.echo(f"{serial}: " + (", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
                                or "the configured policy"))

@clients.command("alias")
@click.argument("new")
@click.argument("old")
@with_context
def clients_alias(ctx: Context, new: str, old: str) -> None:
    """Let replacement device NEW read OLD's snapshots (read-only; never the reverse)."""
    ctx.registry.add_alias(new, old)
    click.echo(f"{new} may now read the snapshots of {old}")

@clients.command("unalias")
@click.argument("new")
@click.argument("old")
@with_context
def clients_unalias(ctx: Context, new: str, old: str) -> None:
    """Remove NEW's read access to OLD's snapshots."""
    ctx.registry.remove_alias(new, old)
    click.echo(f"{new} no longer reads the snapshots of {old}")

@click.command()
@with_context
def keys(ctx: Context) -> None:
    """Regenerate <root>/ssh/authorized_keys from the registry and print its path."""
    with ctx.registry.locked() as txn:
        shared = txn.rebuild()
    for fp, serials in shared:
        click.echo(f"warning: key {fp} is registered to {', '.join(serials)}; it "
                   "authenticates none of them until it is removed from all but one",
                   err=True)
    click.echo(str(ctx.store.ssh_dir / "authorized_keys"))


@clients.command("pending")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def clients_pending(ctx: Context, as_json: bool) -> None:
    """List registrations waiting for approval, each with its key's fingerprint."""
    from xsbackup.clients import registration

    rows = [registration.request_summary(ctx.registry, r)
            for r in registration.pending(ctx.registry)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no registration is waiting for approval")
    for r in rows:
        what = ("removed client, has data" if r["history"] and not r["known"] else
                "known client" if r["known"] else "new serial")
        note = "" if r["supported"] else " (unsupported for transfers)"
        click.echo(f"{r['serial']:<16} {r['fingerprint']} {r['type']}{note} from "
                   f"{r['remote'] or '?'} at {r['added']}, nickname {r['nickname']!r} "
                   f"({what})")


@clients.command("approve")
@click.argument("serial")
@click.option("--fingerprint", metavar="SHA256:...",
              help="The key to approve, as `clients pending` shows it (required when "
                   "several registrations of SERIAL are waiting).")
@click.option("--keep-old", is_flag=True,
              help="Keep the client's current keys active too (default: the approved key "
                   "replaces them, as for a reflashed device).")
@with_context
def clients_approve(ctx: Context, serial: str, fingerprint: str | None,
                    keep_old: bool) -> None:
    """Activate one waiting registration of SERIAL (its key, nickname and uuid)."""
    from xsbackup.clients import registration

    client = registration.approve(ctx.registry, serial, fingerprint, keep_old=keep_old)
    active = [k.type for k in client.active_keys()]
    left = sum(r.serial == serial for r in registration.pending(ctx.registry))
    click.echo(f"approved: {serial} now has {len(active)} active key(s) "
               f"({', '.join(active)})" + (f"; {left} other registration(s) still waiting"
                                          if left else ""))


@clients.command("reject")
@click.argument("serial")
@click.option("--fingerprint", metavar="SHA256:...",
              help="Drop only the registration with this key (default: all of SERIAL's).")
@with_context
def clients_reject(ctx: Context, serial: str, fingerprint: str | None) -> None:
    """Drop waiting registrations of SERIAL; its active keys stay."""
    from xsbackup.clients import registration

    n = registration.reject(ctx.registry, serial, fingerprint)
    click.echo(f"rejected {n} pending key(s) of {serial}")


@clients.command("show")
@click.argument("serial")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def clients_show(ctx: Context, serial: str, as_json: bool) -> None:
    """Everything about one client: keys with fingerprints, aliases, the retention policy
    with each value's source, quota, last success and error, snapshots and usage, and
    its last integrity check. Measures its usage when the cache is stale."""
    from xsbackup.clients import registration
    from xsbackup.restore import resolve
    from xsbackup.retention import prune
    from xsbackup.snapshots import usage
    from xsbackup.store import get_xattrs
    from xsbackup.web.pages import policy_rows

    client = ctx.registry.get(serial)
    facts = get_xattrs(ctx.store.client_dir(serial))
    use = usage.cached(ctx, serial)
    volumes: list[dict[str, Any]] = []
    for v in ctx.store.volumes(serial):
        ids = resolve.snapshot_ids(ctx.store, serial, v)
        volumes.append({"volume": v, "snapshots": len(ids), "oldest": ids[0] if ids else None,
                        "latest": resolve.latest(ctx.store, serial, v),
                        "apparent_bytes": sum(s.apparent for s in use.snapshots
                                              if s.volume == v)})
    row: dict[str, Any] = {
        "serial": client.serial, "nickname": client.nickname, "uuid": client.uuid,
        "disabled": client.disabled, "created": client.created,
        "keys": [registration.key_summary(k) for k in client.keys],
        "aliases": client.aliases,
        "aliased_by": sorted(c.serial for c in ctx.registry.all() if serial in c.aliases),
        "policy": [{"key": p["key"], "value": p["value"],
                    "source": "client" if p["override"] else "configuration"}
                   for p in policy_rows(ctx.settings, client)],
        "quota_bytes": prune.quota_bytes(client), "usage_bytes": use.total,
        "last_success": facts.get("last_success"), "last_error": facts.get("last_error"),
        "last_error_at": facts.get("last_error_at"),
        "snapshot_count": sum(vr["snapshots"] for vr in volumes), "volumes": volumes,
        "check": {k: facts.get(f"check_{k}") for k in
                  ("at", "damaged", "problems", "covered_at")},
    }
    if as_json:
        emit_json(row)
        return
    click.echo(f"{client.serial}  {client.nickname or '-'}"
               f"{'  (disabled)' if client.disabled else ''}  uuid {client.uuid or '-'}")
    for k in row["keys"]:
        click.echo(f"  key   {k['fingerprint']} {k['type']} {k['status']}"
                   f"{'' if k['supported'] else ' (unsupported for transfers)'}")
    click.echo(f"  aliases: {', '.join(client.aliases) or '-'}; read by: "
               f"{', '.join(row['aliased_by']) or '-'}")
    for p in row["policy"]:
        click.echo(f"  policy {p['key']:<20} {p['value']!s:<10} ({p['source']})")
    click.echo(f"  quota {size_text(row['quota_bytes']) if row['quota_bytes'] else 'none'}, "
               f"usage {size_text(use.total)}")
    click.echo(f"  last success {row['last_success'] or 'never'}; last error "
               f"{row['last_error'] or 'none'}"
               + (f" at {row['last_error_at']}" if row["last_error_at"] else ""))
    for vr in volumes:
        click.echo(f"  volume {vr['volume']:<12} {vr['snapshots']} snapshots, latest "
                   f"{vr['latest'] or '-'}, {size_text(vr['apparent_bytes'])} apparent")
    chk = row["check"]
    click.echo(f"  check {chk['at'] or 'never'}: {chk['damaged'] or 0} damaged, "
               f"{chk['problems'] or 0} problems; every inode covered "
               f"{chk['covered_at'] or 'not yet'}")
@clients.command("register")
@click.option("--request", "request_word", required=True, metavar="WORD",
              help="The device's request: serial, nickname, uuid and key (base64 of "
                   "JSON, as a fleet member forwards it).")
@click.option("--host", default="", help="Host name for backupurl when server.public_host "
              "is not set.")
@click.option("--remote", default="-", help="The device's address (rate limits, the admin).")
@click.option("--json", "as_json", is_flag=True, help="The reply as JSON.")
@with_context
def clients_register(ctx: Context, request_word: str, host: str, remote: str,
                     as_json: bool) -> None:
    """Register a device as its XML-RPC register call would: this server's policy,
    limits and approval apply, and the reply is the one the device gets (a fleet member
    with placement on forwards registrations here)."""
    from xsbackup.clients import registration
    from xsbackup.fleet.forward import decode_request

    try:
        req = decode_request(request_word)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--request") from None
    reply = registration.register(ctx.settings, ctx.registry, req.get("serial"),
                                  req.get("nickname"), req.get("uuid"), req.get("pubkey"),
                                  host, remote)
    if as_json:
        emit_json(reply)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in reply.items()))
