"""``xsbackup exit-codes`` and ``xsbackup config``: what the program documents about itself."""

from __future__ import annotations

import importlib
import pkgutil

import click

from xsbackup import config as config_mod
from xsbackup.cli._common import Invocation, emit_json, pass_invocation
from xsbackup.errors import ConfigError, all_errors


def import_every_module() -> None:
    """Import every ``xsbackup`` module, so that the error classes defined anywhere are
    subclasses of ``XsbackupError`` that ``all_errors()`` can see, whatever this process
    imported so far. (``__main__`` would run the CLI again.)"""
    import xsbackup

    for info in pkgutil.walk_packages(xsbackup.__path__, "xsbackup."):
        if info.name != "xsbackup.__main__":
            importlib.import_module(info.name)


@click.command("exit-codes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def exit_codes(as_json: bool) -> None:
    """List every exit code and its meaning."""
    import_every_module()
    table = [(0, "OK", "Success."), (2, "UsageError", "The command line is invalid.")]
    table += [(c.exit_code, c.__name__, c.describe()) for c in all_errors()]
    rows = [{"code": code, "name": name, "meaning": meaning}
            for code, name, meaning in sorted(table)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['code']:>3}  {r['name']:<18} {r['meaning']}")


@click.group("config", invoke_without_command=True)
@click.option("--defaults", is_flag=True, help="Print the documented defaults as TOML.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_invocation
def config_cmd(inv: Invocation, defaults: bool, as_json: bool) -> None:
    """Show the effective configuration (or the defaults); `config check` validates it."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    if defaults:
        click.echo(config_mod.example_toml(), nl=False)
        return
    settings = inv.settings()
    values = {"root": str(settings.root), "config_file": str(settings.config_file or ""),
              **settings.flat(), "storage.recorded_backend": _recorded_backend(settings)}
    if as_json:
        emit_json(values)
        return
    for k, v in values.items():
        click.echo(f"{k} = {v!r}")


@config_cmd.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_invocation
def config_check(inv: Invocation, as_json: bool) -> None:
    """Validate the configuration and what it names: every key (at load, naming it), the
    state root, the storage backend, the off-site repository's password, credentials
    and restic, and the fleet inventory. Reads only local files; `offsite init` opens
    the repository itself. Exit 3 when something is wrong."""
    from xsbackup.cli.config_check import run_checks

    rows = run_checks(inv.settings())
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            click.echo(f"{'ok  ' if r['ok'] else 'FAIL'}  {r['check']:<10} {r['detail']}")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise ConfigError(f"config check: {len(bad)} problem"
                                     f"{'s' if len(bad) > 1 else ''} found; first: "
                                     f"{bad[0]['check']}: {bad[0]['detail']}")


def _recorded_backend(settings: config_mod.Settings) -> str:
    """The backend the state root records (``storage.choice``); "" when it is not one."""
    from xsbackup.storage.choice import LEGACY, recorded
    from xsbackup.store import Store

    store = Store(settings.root)
    return (recorded(store) or LEGACY) if store.is_initialised() else ""
