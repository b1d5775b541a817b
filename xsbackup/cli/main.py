"""The ``xsbackup`` command line: the top-level group, and ``main()``.

Every command lives in a ``*_cmd.py`` module of this package; each only parses, calls the
core and prints. The group imports a command's module only when that command runs (or
``--help`` lists them all), so ``xsbackup diff`` does not pay for Flask, fabric or restic's
wrappers. Only the top-level group catches ``XsbackupError``: it prints one line
and exits with the error's code (see ``xsbackup exit-codes``), so a command run in-process
(click's ``CliRunner``) behaves as the installed ``xsbackup`` does. ``main()`` adds what
only a real process needs: Ctrl-C and a closed stdout.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from xsbackup.cli._common import Invocation
from xsbackup.cli.failure import report
from xsbackup.errors import XsbackupError
from xsbackup.layout import SERVICE_UMASK

# Each top-level command: its name -> (module in this package, attribute).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("serve_cmd", "init"),
    "ssh-command": ("serve_cmd", "ssh_command"),
    "serve": ("serve_cmd", "serve"),
    "status": ("serve_cmd", "status"),
    "maintenance": ("serve_cmd", "maintenance"),
    "clients": ("clients_cmd", "clients"),
    "keys": ("clients_cmd", "keys"),
    "admin": ("admin_cmd", "admin"),
    "postprocess": ("snapshots_cmd", "postprocess"),
    "snapshots": ("snapshots_cmd", "snapshots"),
    "cjson": ("snapshots_cmd", "cjson"),
    "prune": ("prune_cmd", "prune"),
    "du": ("prune_cmd", "du"),
    "restore": ("restore_cmd", "restore"),
    "exit-codes": ("info_cmd", "exit_codes"),
    "config": ("info_cmd", "config_cmd"),
    "check": ("integrity_cmd", "check"),
    "diff": ("integrity_cmd", "diff"),
    "find": ("integrity_cmd", "find"),
    "migrate": ("migrate_cmd", "migrate"),
    "offsite": ("offsite_cmd", "offsite"),
    "metrics": ("serve_cmd", "metrics"),
    "fleet": ("fleet_cmd", "fleet"),
}


class XsbackupGroup(click.Group):
    """The top-level group: an ``XsbackupError`` from any command ends the run with its
    one-line message on stderr and its exit code. An ``OSError`` that reaches here (a
    state root this user may not read or write, a full disk) is the state root being
    unusable: one line naming the file, ``StateRootError``'s code, never a traceback.
    Commands are loaded from ``COMMANDS`` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"xsbackup.cli.{module}"), attr)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (XsbackupError, OSError) as e:
            code = report(e)
            if code is None:
                raise
            sys.exit(code)


@click.group(cls=XsbackupGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="XSBACKUP_ROOT", metavar="DIR",
              help="State root (default ./xsbackup-state; env XSBACKUP_ROOT).")
@click.option("--config", "config_file", envvar="XSBACKUP_CONFIG", metavar="FILE",
              help="Configuration file (default <root>/xsbackup.toml).")
@click.version_option(package_name="xsbackup")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config_file: str | None) -> None:
    """xsbackup: snapshot storage for backups pushed with rsync over SSH."""
    ctx.obj = Invocation(root, config_file)


def main(argv: list[str] | None = None) -> None:
    os.umask(SERVICE_UMASK)  # nothing the service creates is another user's to read
    try:
        cli.main(args=argv, prog_name="xsbackup", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        os._exit(141)
    sys.exit(0)
