"""The ``xsbackup`` command line: the top-level group, and ``main()``.

Every command lives in a ``*_cmd.py`` module of this package; each only parses, calls the
core and prints. Only the top-level group catches ``XsbackupError``: it prints one line
and exits with the error's code (see ``xsbackup exit-codes``), so a command run in-process
(click's ``CliRunner``) behaves as the installed ``xsbackup`` does. ``main()`` adds what
only a real process needs: Ctrl-C and a closed stdout.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from xsbackup.cli import (
    admin_cmd,
    clients_cmd,
    fleet_cmd,
    info_cmd,
    integrity_cmd,
    migrate_cmd,
    offsite_cmd,
    prune_cmd,
    restore_cmd,
    serve_cmd,
    snapshots_cmd,
)
from xsbackup.cli._common import Invocation
from xsbackup.cli.failure import report
from xsbackup.errors import XsbackupError
from xsbackup.layout import SERVICE_UMASK


class XsbackupGroup(click.Group):
    """The top-level group: an ``XsbackupError`` from any command ends the run with its
    one-line message on stderr and its exit code. An ``OSError`` that reaches here (a
    state root this user may not read or write, a full disk) is the state root being
    unusable: one line naming the file, ``StateRootError``'s code, never a traceback."""

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


for _command in (
    serve_cmd.init, serve_cmd.ssh_command, serve_cmd.serve, serve_cmd.status,
    serve_cmd.maintenance, clients_cmd.clients, clients_cmd.keys, admin_cmd.admin,
    snapshots_cmd.postprocess, snapshots_cmd.snapshots, snapshots_cmd.cjson,
    prune_cmd.prune, prune_cmd.du, restore_cmd.restore, info_cmd.exit_codes,
    info_cmd.config_cmd, integrity_cmd.check, integrity_cmd.diff, integrity_cmd.find,
    migrate_cmd.migrate, offsite_cmd.offsite, serve_cmd.metrics, fleet_cmd.fleet,
):
    cli.add_command(_command)


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
