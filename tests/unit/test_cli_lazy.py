"""The top-level group loads each command's module only when that command is asked for."""

from __future__ import annotations

import subprocess
import sys

import click

from xsbackup.cli import main


def test_every_listed_command_loads_under_its_own_name() -> None:
    ctx = click.Context(main.cli)
    names = main.cli.list_commands(ctx)
    assert names == sorted(main.COMMANDS)
    for name in names:
        command = main.cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    assert main.cli.get_command(ctx, "no-such-command") is None


def test_one_command_imports_only_its_own_module() -> None:
    code = ("import sys\n"
            "from xsbackup.cli.main import main\n"
            "try:\n"
            "    main(['diff', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('xsbackup.cli.') "
            "and m.endswith('_cmd'))\n"
            "print(loaded, 'flask' in sys.modules, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
    assert r.stderr.strip().splitlines()[-1] == "['xsbackup.cli.integrity_cmd'] False"
