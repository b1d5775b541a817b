"""The ``xsbackup`` script's entry point: the forced command without the CLI's cost.

Every SSH connection runs ``xsbackup --root R ssh-command --client SN`` (the line
``authorized_keys`` forces, and the embedded server's child), so its start-up is paid per
connection. This module imports only ``os``, ``sys`` and ``json`` at first:

* an argument list of exactly that shape (``--root``/``--config`` before the command,
  ``--client`` and a restore key's ``--restore-key`` after it, each at most once, as
  ``--opt VALUE`` or ``--opt=VALUE``) runs the forced command directly; anything else
  (``--help``, other commands, a malformed line) goes to the click CLI in ``cli.main``,
  unchanged;
* a connectivity check (``SSH_ORIGINAL_COMMAND`` of ``true``) from a known, enabled
  client of an initialised state root is answered 0 from ``layout`` and the client's
  record alone, without loading the configuration, logging or the registry;
* everything else (and any check the quick answer cannot make: an unknown or disabled
  client, an unreadable record) is ``forced.run``, the same call ``ssh-command`` makes,
  with the same error handling as the CLI's top-level group (``failure.report``);
* ``status --json`` (the global options, then exactly those two words: what every
  ``fleet status`` and ``fleet collect`` runs on each server) is ``cli.status.document``,
  the body of the click command, printed the same way; only what it needs is imported;
* so is ``diff SERIAL A B --json`` (``cli.diff_json``: the line it takes, and the
  document the click command prints).
"""

from __future__ import annotations

import os
import sys

from xsbackup import layout
from xsbackup.cli.lines import take_option

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

_GLOBAL: tuple[str, ...] = ("--root", "--config")
_COMMAND = "ssh-command"
_CLIENT = "--client"
_RESTORE_KEY = "--restore-key"  # a one-time restore key's session (restore.pullkey)
_STATUS_JSON = ("status", "--json")


def forced_args(argv: Sequence[str]) -> dict[str, str] | None:
    """``{"--root": R, "--config": F, "--client": SN}`` (the options given) for a forced
    command line, or None for any other line."""
    found: dict[str, str] = {}
    allowed = _GLOBAL
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == _COMMAND and allowed is _GLOBAL:
            allowed = (_CLIENT, _RESTORE_KEY)
            continue
        taken = take_option(words, i - 1, allowed, found)
        if taken is None:
            return None
        i = taken
    if allowed is _GLOBAL or _CLIENT not in found:
        return None
    return found


def status_args(argv: Sequence[str]) -> dict[str, str] | None:
    """``{"--root": R, "--config": F}`` (the options given) for the line
    ``[--root R] [--config F] status --json``, or None for any other line."""
    words = list(argv)
    if len(words) < 2 or tuple(words[-2:]) != _STATUS_JSON:
        return None
    found: dict[str, str] = {}
    i, head = 0, words[:-2]
    while i < len(head):
        taken = take_option(head, i, _GLOBAL, found)
        if taken is None:
            return None
        i = taken
    return found



def _reported(call: Callable[[], int]) -> int:
    """``call()``, with the CLI top-level group's handling of an error (``failure``)."""
    from xsbackup.cli.failure import report
    from xsbackup.errors import XsbackupError

    try:
        return call()
    except (XsbackupError, OSError) as e:
        code = report(e)
        if code is None:
            raise
        return code


def run_status(options: Mapping[str, str]) -> int:
    """``xsbackup status --json``, as the click command runs it, without click."""
    from xsbackup.cli.output import emit_json
    from xsbackup.cli.status import document

    def call() -> int:
        emit_json(document(options.get("--root"), options.get("--config")))
        return 0

    return _reported(call)


def run_diff(line: dict[str, object]) -> int:
    """``xsbackup diff SERIAL A B --json``, as the click command runs it, without click
    (``cli.diff_json``)."""
    from xsbackup.cli import diff_json
    from xsbackup.cli.output import emit_json

    def call() -> int:
        emit_json(diff_json.run(line))
        return 0

    try:
        return _reported(call)
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write("\naborted\n")
        return 130
    except BrokenPipeError:
        os._exit(141)


def quick_true(root: str, client: str, environ: Mapping[str, str]) -> bool:
    """Whether this is a connectivity check that the full dispatcher would answer 0:
    the command is ``true``, the state root is initialised, and the client's record
    exists and says it is enabled. False means "ask the dispatcher", never "refused"."""
    command = environ.get("SSH_ORIGINAL_COMMAND")
    if command is None or command.strip() != "true" or not layout.CLIENT_RE.fullmatch(client):
        return False
    if not layout.is_initialised(root):
        return False
    import json

    try:
        with open(layout.client_record(root, client), "rb") as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("disabled", False) is False \
        and isinstance(record.get("keys", []), list)


def run_forced(options: Mapping[str, str], environ: Mapping[str, str]) -> int:
    """The forced command, as ``xsbackup ssh-command`` runs it, without click (once
    ``main`` has found that the quick ``true`` answer does not apply)."""
    from xsbackup.cli import forced

    # A restore key's every use is checked by the dispatcher.
    return _reported(lambda: forced.run(options.get("--root"), options.get("--config"),
                                        options[_CLIENT], options.get(_RESTORE_KEY)))


def main() -> None:
    argv = sys.argv[1:]
    status = status_args(argv)
    options = forced_args(argv) if status is None else None
    if status is None and options is None:
        from xsbackup.cli import diff_json

        line = diff_json.args(argv)
        if line is not None:
            os.umask(layout.SERVICE_UMASK)
            _exit_now(run_diff(line))
        from xsbackup.cli.main import main as cli_main

        cli_main()
        return
    os.umask(layout.SERVICE_UMASK)  # nothing the service creates is another user's to read
    # A forced command is one short process paid on every connection: no cyclic garbage
    # collection (about 3% of its instructions, spent during imports), and no interpreter
    # teardown at the end (about 7%): the logs and standard streams are flushed, then the
    # process ends (bench/README.md, "The forced command's own cost").
    import gc

    gc.disable()
    if options is not None:
        # Answered here once (the record read once), whichever process runs the rest.
        root = layout.state_root(options.get("--root"), os.environ)
        if options.get(_RESTORE_KEY) is None and \
                quick_true(root, options[_CLIENT], os.environ):
            _exit_now(0)
        # Have ``serve``'s pre-loaded server run it (``cli.forkclient``: it ends this
        # process with the server's exit code); back here when this process must.
        from xsbackup.cli.forkclient import forward

        forward(root, argv)
    os._exit(forced_exit(lambda: run_status(status) if status is not None else
                         run_forced(options or {}, os.environ)))


def forced_exit(call: Callable[[], int]) -> int:
    """``call()``'s exit code once everything written is flushed, as the forced command
    ends with it: 130 when interrupted, 141 on a broken pipe. Shared by this process and
    the child ``cli.forkserver`` forks for a connection."""
    try:
        code = call()
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write("\naborted\n")
        code = 130
    except BrokenPipeError:
        return 141
    return _flushed(code)


def _exit_now(code: int) -> None:
    """End the process with ``code`` once everything written is flushed, without
    unwinding the interpreter (nothing a forced command leaves needs it: the locks are
    descriptors the kernel releases, the files it wrote are already renamed in place)."""
    os._exit(_flushed(code))


def _flushed(code: int) -> int:
    """``code`` once the logs and standard streams are flushed; 141 on a broken pipe."""
    logging = sys.modules.get("logging")  # never imported by a quick ``true``
    try:
        if logging is not None:
            logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        return 141
    return code
