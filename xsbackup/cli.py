"""The ``xsbackup`` command line: parse, call the core, translate errors. No logic here.

Only ``main()`` catches ``XsbackupError``; it prints one line and exits with the error's
code (see ``xsbackup exit-codes``).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from . import config as config_mod
from .errors import XsbackupError, all_errors

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, root: str | None, config_file: str | None) -> None:
        self.root = root
        self.config_file = config_file
        self._settings: config_mod.Settings | None = None

    def settings(self, **overrides: Any) -> config_mod.Settings:
        if self._settings is None or overrides:
            self._settings = config_mod.load(self.root, self.config_file, overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Ctx)


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def with_store(fn: F) -> F:
    """Load settings, require an initialised state root, set up logging."""

    @functools.wraps(fn)
    @pass_ctx
    def wrapper(ctx: Ctx, *args: Any, **kwargs: Any) -> Any:
        from . import logs
        from .store import Store

        settings = ctx.settings()
        store = Store(settings.root).require()
        logs.setup(settings)
        return fn(settings, store, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="XSBACKUP_ROOT", metavar="DIR",
              help="State root (default ./xsbackup-state; env XSBACKUP_ROOT).")
@click.option("--config", "config_file", envvar="XSBACKUP_CONFIG", metavar="FILE",
              help="Configuration file (default <root>/xsbackup.toml).")
@click.version_option(package_name="xsbackup")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config_file: str | None) -> None:
    """xsbackup: snapshot storage for backups pushed with rsync over SSH."""
    ctx.obj = Ctx(root, config_file)


@cli.command()
@pass_ctx
def init(ctx: Ctx) -> None:
    """Create the state root layout and check that user xattrs work there."""
    from .store import init_root

    settings = ctx.settings()
    init_root(settings.root)
    click.echo(f"initialised {settings.root}")


@cli.command("ssh-command")
@click.option("--client", required=True, metavar="SN", help="The authenticated client's serial.")
@pass_ctx
def ssh_command(ctx: Ctx, client: str) -> None:
    """The forced command: validate SSH_ORIGINAL_COMMAND, admit, lock and run rsync."""
    from . import dispatch, logs

    settings = ctx.settings()
    logs.setup(settings)
    sys.exit(dispatch.run(settings, client))


# ---- clients ---------------------------------------------------------------------------


@cli.group()
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
@with_store
def clients_add(settings: config_mod.Settings, store: Any, serial: str,
                pubkey_file: str | None, pubkey_blob: str | None, nickname: str, uuid: str,
                system_user: bool) -> None:
    """Register client SERIAL with its public key; regenerates authorized_keys."""
    from .errors import InvalidKey
    from .registry import Registry, write_authorized_keys

    if (pubkey_file is None) == (pubkey_blob is None):
        raise InvalidKey("give exactly one of --pubkey FILE or --pubkey-blob BASE64")
    key = Path(pubkey_file).read_text() if pubkey_file else pubkey_blob
    registry = Registry(store)
    client = registry.add(serial, key, nickname=nickname, uuid=uuid)
    if system_user:
        from .sysuser import create_login

        create_login(serial)
        client.system_user = True
        registry.save(client)
    path = write_authorized_keys(registry)
    key0 = client.keys[0]
    note = "" if key0.supported else \
        f" (warning: {key0.type} keys are stored but cannot authenticate transfers)"
    click.echo(f"added {serial} with a {key0.type} key{note}; updated {path}")


@clients.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def clients_list(settings: config_mod.Settings, store: Any, as_json: bool) -> None:
    """List registered clients."""
    from .registry import Registry

    rows = [{"serial": c.serial, "nickname": c.nickname, "uuid": c.uuid,
             "keys": [{"type": k.type, "status": k.status, "supported": k.supported}
                      for k in c.keys],
             "disabled": c.disabled, "aliases": c.aliases, "created": c.created,
             "volumes": store.volumes(c.serial)}
            for c in Registry(store).all()]
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
@with_store
def clients_remove(settings: config_mod.Settings, store: Any, serial: str, purge: bool) -> None:
    """Remove a client (its data is kept unless --purge); regenerates authorized_keys."""
    from .registry import Registry, write_authorized_keys

    registry = Registry(store)
    client = registry.get(serial)
    if client.system_user:
        from .sysuser import remove_login

        remove_login(serial)
    registry.remove(serial, purge=purge)
    write_authorized_keys(registry)
    click.echo(f"removed {serial}" + (" and its data" if purge else "; data kept"))


def _set_disabled(store: Any, serial: str, disabled: bool) -> None:
    from .registry import Registry, write_authorized_keys

    registry = Registry(store)
    client = registry.get(serial)
    client.disabled = disabled
    registry.save(client)
    write_authorized_keys(registry)
    click.echo(f"{serial} {'disabled' if disabled else 'enabled'}")


@clients.command("disable")
@click.argument("serial")
@with_store
def clients_disable(settings: config_mod.Settings, store: Any, serial: str) -> None:
    """Refuse every transfer of a client (its keys leave authorized_keys; data is kept)."""
    _set_disabled(store, serial, True)


@clients.command("enable")
@click.argument("serial")
@with_store
def clients_enable(settings: config_mod.Settings, store: Any, serial: str) -> None:
    """Allow a disabled client to transfer again."""
    _set_disabled(store, serial, False)


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
@click.option("--quota-bytes", type=int, help="Refuse transfers above this usage (0: none).")
@click.option("--reset", is_flag=True, help="Drop every override first.")
@with_store
def clients_set_policy(settings: config_mod.Settings, store: Any, serial: str,
                       reset: bool, **values: Any) -> None:
    """Override the retention policy (and set a quota) for one client."""
    from . import prune as core
    from .errors import ConfigError
    from .registry import Registry

    registry = Registry(store)
    client = registry.get(serial)
    policy = {} if reset else dict(client.policy)
    policy.update({k: v for k, v in values.items() if v is not None})
    if policy.get("quota_bytes") == 0:
        policy.pop("quota_bytes")
    try:
        core.policy_for(settings, client.__class__(serial=serial, policy=policy))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid policy for {serial}: {e}") from None
    client.policy = policy
    registry.save(client)
    click.echo(f"{serial}: " + (", ".join(f"{k}={v}" for k, v in sorted(policy.items()))
                                or "the configured policy"))


@clients.command("alias")
@click.argument("new")
@click.argument("old")
@with_store
def clients_alias(settings: config_mod.Settings, store: Any, new: str, old: str) -> None:
    """Let replacement device NEW read OLD's snapshots (read-only; never the reverse)."""
    from .registry import Registry

    registry = Registry(store)
    registry.get(old)
    client = registry.get(new)
    if new == old:
        from .errors import InvalidName

        raise InvalidName("a client cannot alias itself")
    if old not in client.aliases:
        client.aliases.append(old)
        registry.save(client)
    click.echo(f"{new} may now read the snapshots of {old}")


@clients.command("unalias")
@click.argument("new")
@click.argument("old")
@with_store
def clients_unalias(settings: config_mod.Settings, store: Any, new: str, old: str) -> None:
    """Remove NEW's read access to OLD's snapshots."""
    from .registry import Registry

    registry = Registry(store)
    client = registry.get(new)
    if old in client.aliases:
        client.aliases.remove(old)
        registry.save(client)
    click.echo(f"{new} no longer reads the snapshots of {old}")


@cli.command()
@with_store
def keys(settings: config_mod.Settings, store: Any) -> None:
    """Regenerate <root>/ssh/authorized_keys from the registry and print its path."""
    from .registry import Registry, write_authorized_keys

    click.echo(str(write_authorized_keys(Registry(store))))


# ---- post-processing and snapshots ---------------------------------------------------


@cli.command()
@click.option("--once", "mode", flag_value="once", default=True, help="Drain the queue, exit.")
@click.option("--watch", "mode", flag_value="watch", help="Stay up and process as work arrives.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary (--once).")
@with_store
def postprocess(settings: config_mod.Settings, store: Any, mode: str, as_json: bool) -> None:
    """Turn completed transfers into snapshots."""
    import signal
    import threading

    from . import postprocess as pp

    if mode == "watch":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            pp.watch(store, settings, stop)
        except KeyboardInterrupt:
            stop.set()
        return
    counts = pp.run_once(store, settings)
    if as_json:
        emit_json(counts)
    else:
        click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "queue empty")


@cli.group()
def snapshots() -> None:
    """List and inspect snapshots."""


def _snapshot_row(store: Any, client: str, volume: str, sid: str) -> dict[str, Any]:
    from .snapshot import read_facts

    facts = read_facts(store.snapshots_dir(client, volume) / sid)
    return {"client": client, "volume": volume, "id": sid,
            "latest": store.latest_id(client, volume) == sid, **facts}


@snapshots.command("list")
@click.argument("serial")
@click.option("--volume", help="Only this volume.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def snapshots_list(settings: config_mod.Settings, store: Any, serial: str,
                   volume: str | None, as_json: bool) -> None:
    """List a client's snapshots, oldest first."""
    from .registry import Registry

    Registry(store).get(serial)
    vols = [volume] if volume else store.volumes(serial)
    rows = [_snapshot_row(store, serial, v, s) for v in vols for s in store.snapshot_ids(serial, v)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no snapshots")
    for r in rows:
        flag = " flagged" if isinstance(r.get("cjson"), dict) and \
            r["cjson"].get("status") == "flagged" else ""
        click.echo(f"{r['volume']:<12} {r['id']:<22} files={r.get('files', '?'):<7} "
                   f"bytes={r.get('bytes', '?'):<12} new={r.get('new_bytes', '?')}"
                   f"{' latest' if r['latest'] else ''}{flag}")


@snapshots.command("show")
@click.argument("serial")
@click.argument("snapshot_id")
@click.option("--volume", help="The volume (needed when several have this id).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def snapshots_show(settings: config_mod.Settings, store: Any, serial: str, snapshot_id: str,
                   volume: str | None, as_json: bool) -> None:
    """Show one snapshot's facts."""
    from .errors import SnapshotNotFound
    from .store import check_snapshot_id

    check_snapshot_id(snapshot_id)
    vols = [volume] if volume else store.volumes(serial)
    rows = [_snapshot_row(store, serial, v, snapshot_id) for v in vols
            if snapshot_id in store.snapshot_ids(serial, v)]
    if not rows:
        raise SnapshotNotFound(f"no snapshot {snapshot_id} for {serial}")
    if as_json:
        emit_json(rows[0] if len(rows) == 1 else rows)
        return
    for r in rows:
        for k, v in r.items():
            text = v if isinstance(v, str) else orjson.dumps(v).decode()
            click.echo(f"{k:<13} {text}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def status(settings: config_mod.Settings, store: Any, as_json: bool) -> None:
    """One row per client from its status xattrs, without walking snapshot trees."""
    from .status import client_rows

    rows = client_rows(store, dt.datetime.now(dt.UTC))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no clients")
    for r in rows:
        click.echo(f"{r['serial']:<16} last={r['last_success'] or 'never':<26} "
                   f"age={r['age'] or '-':<10} snapshots={r['snapshot_count']:<5} "
                   f"flagged={len(r['flagged'])} error={r['last_error'] or '-'}")


@cli.command()
@click.argument("state", type=click.Choice(["on", "off", "status"]), default="status")
@with_store
def maintenance(settings: config_mod.Settings, store: Any, state: str) -> None:
    """Turn maintenance mode on or off (refuses every transfer while on)."""
    from .admission import maintenance_on

    if state == "on":
        store.maintenance_flag.write_text("on\n")
    elif state == "off":
        store.maintenance_flag.unlink(missing_ok=True)
    click.echo("maintenance " + ("on" if maintenance_on(settings, store) else "off"))


# ---- pruning and usage -----------------------------------------------------------------


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@cli.command()
@click.option("--client", "client", metavar="SN", help="Only this client.")
@click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
@click.option("--policy-only", "mode", flag_value="policy", help="Only the retention policy.")
@click.option("--quota-only", "mode", flag_value="quota", help="Only the soft-quota trim.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def prune(settings: config_mod.Settings, store: Any, client: str | None, dry_run: bool,
          mode: str | None, as_json: bool) -> None:
    """Apply the retention policy, then the fair-share soft quota.

    Never deletes a client's newest snapshot, a snapshot being read, or anything of a
    client whose transfer is running. Snapshots are renamed into trash/ first, then
    deleted (with a progress bar on a terminal); an interrupted run is finished by the
    next one.
    """
    from . import prune as core

    now = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {}
    if mode in (None, "policy"):
        report = core.policy_prune(store, settings, now, client, dry_run)
        out["policy"] = report.as_dict()
    if not dry_run:
        out["deleted"] = _delete_trash(store, as_json)
    if mode in (None, "quota"):
        out["quota"] = core.quota_trim(store, settings, client, dry_run).as_dict()
    if as_json:
        emit_json(out)
        return
    for section in ("policy", "quota"):
        if section not in out:
            continue
        items = out[section]["items"]
        click.echo(f"{section}: {len(items)} snapshots considered" if section == "policy"
                   else f"quota: {out['quota']['quota'].get('result', '')} "
                        f"(blocks {out['quota']['quota'].get('blocks_pct', 0):.1f}%, "
                        f"limit {out['quota']['quota'].get('limit_pct')}%)")
        for it in items:
            verdict = "keep " if it["keep"] else ("prune" if not it["outcome"].startswith(
                "skipped") else "skip ")
            click.echo(f"  {verdict} {it['client']:<14} {it['volume']:<12} {it['id']:<22} "
                       f"frees {_bytes(it['exclusive']):>10}  {', '.join(it['reasons'])}"
                       f"{'  (' + it['outcome'] + ')' if it['outcome'].startswith('skip') else ''}")
    if dry_run:
        click.echo("dry run: nothing was deleted")


def _delete_trash(store: Any, quiet: bool) -> int:
    from . import prune as core

    pending = len(os.listdir(store.trash_dir))
    if pending and sys.stderr.isatty() and not quiet:
        with click.progressbar(length=pending, label="deleting", file=sys.stderr) as bar:
            done = [0]

            def step(n: int) -> None:
                bar.update(max(0, min(n, pending) - done[0]))
                done[0] = min(n, pending)

            return core.delete_trash(store, step)
    return core.delete_trash(store)


@cli.command()
@click.argument("serial", required=False)
@click.option("--volume", help="Only this volume.")
@click.option("--refresh", is_flag=True, help="Ignore the cached figures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def du(settings: config_mod.Settings, store: Any, serial: str | None, volume: str | None,
       refresh: bool, as_json: bool) -> None:
    """Hardlink-aware usage: apparent, exclusive and shared bytes per snapshot."""
    from . import usage
    from .registry import Registry

    registry = Registry(store)
    serials = [registry.get(serial).serial] if serial else [c.serial for c in registry.all()]
    show = sys.stderr.isatty() and not as_json
    results = []
    for sn in serials:
        if show:
            n = sum(len(store.snapshot_ids(sn, v)) for v in store.volumes(sn))
            with click.progressbar(length=n, label=f"measuring {sn}", file=sys.stderr) as bar:
                res = usage.cached(store, sn, lambda v, s: bar.update(1), refresh=refresh)
        else:
            res = usage.cached(store, sn, refresh=refresh)
        if volume:
            res.snapshots = [s for s in res.snapshots if s.volume == volume]
        results.append(res)
    if as_json:
        emit_json([r.as_dict() for r in results])
        return
    for r in results:
        click.echo(f"{r.client}: {_bytes(r.total)} on disk, {_bytes(r.apparent)} apparent")
        for s in r.snapshots:
            click.echo(f"  {s.volume:<12} {s.id:<22} apparent {_bytes(s.apparent):>10}  "
                       f"exclusive {_bytes(s.exclusive):>10}  shared {_bytes(s.shared):>10}")


# ---- restore --------------------------------------------------------------------------


@cli.group()
def restore() -> None:
    """Plan a restore, or stream a snapshot as an archive."""


@restore.command("plan")
@click.argument("serial")
@click.option("--volume", help="The volume (needed when the client has several).")
@click.option("--at", help="A snapshot id, or an ISO time: the newest snapshot at or before.")
@click.option("--from", "source", metavar="SN", help="Restore an aliased client's snapshot.")
@click.option("--host", default=None, help="Server name the client uses (default: public_host "
              "or this machine's name).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_store
def restore_plan(settings: config_mod.Settings, store: Any, serial: str, volume: str | None,
                 at: str | None, source: str | None, host: str | None, as_json: bool) -> None:
    """Which snapshot SERIAL gets back, and the rsync command that fetches it."""
    import socket

    from . import restore as core

    host = host or str(settings["server.public_host"]) or socket.getfqdn()
    plan = core.plan(store, serial, volume, at, host, int(settings["server.ssh_port"]), source)
    if as_json:
        emit_json(plan.as_dict())
        return
    click.echo(f"snapshot {plan.volume}/{plan.snapshot} of {plan.client}")
    click.echo(f"files={plan.facts.get('files', '?')} bytes={plan.facts.get('bytes', '?')}")
    click.echo(plan.command)


@restore.command("archive")
@click.argument("serial")
@click.argument("path", default="")
@click.option("--volume", help="The volume (needed when the client has several).")
@click.option("--at", help="A snapshot id, or an ISO time: the newest snapshot at or before.")
@click.option("--format", "fmt", type=click.Choice(["tar", "zip"]), default="tar",
              help="Archive format (default tar).")
@with_store
def restore_archive(settings: config_mod.Settings, store: Any, serial: str, path: str,
                    volume: str | None, at: str | None, fmt: str) -> None:
    """Stream SERIAL's snapshot (or PATH inside it) to stdout: ... | tar x"""
    from . import restore as core

    vol = core.pick_volume(store, serial, volume)
    sid = core.resolve(store, serial, vol, at)
    out = sys.stdout.buffer
    core.write_archive(store, serial, vol, sid, path, fmt, out)
    out.flush()


# ---- the service ----------------------------------------------------------------------


@cli.command()
@click.option("--bind", default=None, help="Address for the SSH and HTTP servers "
              "(server.bind; default 127.0.0.1).")
@click.option("--ssh-port", type=int, default=None, help="Embedded SSH port (default 2222).")
@click.option("--http-port", type=int, default=None, help="HTTP port (default 8080).")
@pass_ctx
def serve(ctx: Ctx, bind: str | None, ssh_port: int | None, http_port: int | None) -> None:
    """Run everything in one process: embedded SSH, HTTP, post-processing, scheduler.

    Creates the state root and host keys on first start. SIGTERM/SIGINT stop gracefully;
    SIGHUP reloads the configuration and keys.
    """
    from .serve import Service

    service = Service(ctx.root, ctx.config_file, {
        "server.bind": bind, "server.ssh_port": ssh_port, "server.http_port": http_port})
    sys.exit(service.run(ready=click.echo))


# ---- Canonical JSON --------------------------------------------------------------------


@cli.group()
def cjson() -> None:
    """OLPC Canonical JSON tools."""


@cjson.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--max-bytes", type=int, default=None, help="Report larger files unread.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def cjson_check(ctx: Ctx, files: tuple[str, ...], max_bytes: int | None, as_json: bool) -> None:
    """Validate FILES as Canonical JSON; exit 1 when any is not canonical."""
    from . import cjson as cj

    limit = max_bytes if max_bytes is not None else \
        int(ctx.settings()["postprocess.cjson_max_bytes"])
    results = [cj.check_file(Path(f), limit) for f in files]
    if as_json:
        emit_json(results)
    else:
        for r in results:
            where = f" at line {r['line']}, column {r['column']} (byte {r['offset']})" \
                if r.get("offset") is not None else ""
            reason = f": {r['reason']}" if r.get("reason") else ""
            click.echo(f"{r['path']}: {r['status']}{where}{reason}")
    if any(r["status"] != "canonical" for r in results):
        sys.exit(1)


# ---- documentation ---------------------------------------------------------------------


@cli.command("exit-codes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def exit_codes(as_json: bool) -> None:
    """List every exit code and its meaning."""
    table = [(0, "OK", "Success."), (2, "UsageError", "The command line is invalid.")]
    table += [(c.exit_code, c.__name__, c.describe()) for c in all_errors()]
    rows = [{"code": code, "name": name, "meaning": meaning}
            for code, name, meaning in sorted(table)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['code']:>3}  {r['name']:<18} {r['meaning']}")


@cli.command("config")
@click.option("--defaults", is_flag=True, help="Print the documented defaults as TOML.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def config_cmd(ctx: Ctx, defaults: bool, as_json: bool) -> None:
    """Show the effective configuration (or the defaults)."""
    if defaults:
        click.echo(config_mod.example_toml(), nl=False)
        return
    settings = ctx.settings()
    values = {"root": str(settings.root), "config_file": str(settings.config_file or ""),
              **dict(settings.values)}
    if as_json:
        emit_json(values)
        return
    for k, v in values.items():
        click.echo(f"{k} = {v!r}")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="xsbackup", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except XsbackupError as e:
        click.echo(f"xsbackup: error: {e.message}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        os._exit(141)
    sys.exit(0)


# The HTTP-side admin commands live in cli_http (users, pending registrations); they use
# this module's helpers, so they are attached last.
from .cli_http import (  # noqa: E402
    admin,
    clients_approve,
    clients_pending,
    clients_reject,
)

cli.add_command(admin)
clients.add_command(clients_pending)
clients.add_command(clients_approve)
clients.add_command(clients_reject)
