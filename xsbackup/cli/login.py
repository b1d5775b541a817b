"""``xsbackup-login``: the login "shell" of per-serial system accounts.

sshd runs a forced command as ``<shell> -c '<command>'``. This program accepts exactly
one form, ``-c '<anything>/xsbackup --root ROOT ssh-command --client SN'`` as written by
``xsbackup keys``, and runs that dispatcher in-process. Anything else (an interactive
login, another command) is refused with one line and exit 40.
"""

from __future__ import annotations

import shlex
import sys


def main() -> None:
    args = sys.argv[1:]
    words: list[str] = []
    if len(args) == 2 and args[0] == "-c":
        try:
            words = shlex.split(args[1])
        except ValueError:
            words = []
    ok = (len(words) == 6 and words[0].endswith("/xsbackup") and words[1] == "--root"
          and words[3:5] == ["ssh-command", "--client"])
    if not ok:
        sys.stderr.write("xsbackup: this account only accepts backups over rsync\n")
        sys.exit(40)
    from xsbackup.cli.main import main as cli_main

    cli_main(words[1:])
