"""``xsbackup clients`` and ``xsbackup keys``: the registry of client devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xsbackup.cli._common import emit_json, size_option, size_text, with_context
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
              help="Also create a login for SN sharing this account's uid, with no shell "
                   "(root only; for ds-backup devices that log in as their serial).")
@with_context
def clients_add(ctx: Context, serial: str,
                pubkey_file: str | None, pubkey_blob: str | None, nickname: str, uuid: str,
                system_user: bool) -> None:
    """Register client SERIAL with its public key; regenerates authorized_keys."""
    from xsbackup.errors import InvalidKey

    if (pubkey_file is None) == (pubkey_blob is None):
        raise InvalidKey("give exactly one of --pubkey FILE or --pubkey-blob BASE64")
    key = Path(pubkey_file).read_text() if pubkey_file else pubkey_blob
    client = ctx.registry.add(serial, key, nickname=nickname, uuid=uuid, rekey=True)
    if system_user:
        from xsbackup.clients.sysuser import create_login

        create_login(serial)
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
    client = ctx.registry.get(serial)
    if client.system_user:
        from xsbackup.clients.sysuser import remove_login

        remove_login(serial)
    ctx.registry.remove(serial, purge=purge)
    click.echo(f"removed {serial}" + (" and its data" if purge else "; data kept"))

def _set_disabled(ctx: Context, serial: str, disabled: bool) -> None:
    ctx.registry.modify(serial, lambda c: setattr(c, "disabled", disabled), rekey=True)
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
    from xsbackup.clients.registry import write_authorized_keys

    click.echo(str(write_authorized_keys(ctx.registry)))


def _pending_rows(ctx: Context) -> list[dict[str, Any]]:
    from xsbackup.clients import registration

    return [{"serial": serial, **registration.key_summary(key)}
            for serial, key in registration.pending(ctx.registry)]


@clients.command("pending")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_context
def clients_pending(ctx: Context, as_json: bool) -> None:
    """List keys registered under the 'approve' policy, waiting for approval."""
    rows = _pending_rows(ctx)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no keys awaiting approval")
    for r in rows:
        note = "" if r["supported"] else " (unsupported for transfers)"
        click.echo(f"{r['serial']:<16} {r['type']:<20} {r['fingerprint']} "
                   f"added {r['added']}{note}")


@clients.command("approve")
@click.argument("serial")
@click.option("--keep-old", is_flag=True,
              help="Keep the client's current keys active too (default: the approved key "
                   "replaces them, as for a reflashed device).")
@with_context
def clients_approve(ctx: Context, serial: str,
                    keep_old: bool) -> None:
    """Activate SERIAL's pending key; regenerates authorized_keys."""
    from xsbackup.clients import registration

    client = registration.approve(ctx.registry, serial, keep_old=keep_old)
    active = [k.type for k in client.active_keys()]
    click.echo(f"approved: {serial} now has {len(active)} active key(s) "
               f"({', '.join(active)})")


@clients.command("reject")
@click.argument("serial")
@with_context
def clients_reject(ctx: Context, serial: str) -> None:
    """Drop SERIAL's pending key(s); its active keys stay."""
    from xsbackup.clients import registration

    n = registration.reject(ctx.registry, serial)
    click.echo(f"rejected {n} pending key(s) of {serial}")
