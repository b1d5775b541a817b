"""What the command line does with an error that reaches its top (``cli.main``'s group,
and ``cli.entry`` for the forced command)."""

from __future__ import annotations

import sys

from xsbackup.errors import StateRootError, XsbackupError


def report(error: BaseException) -> int | None:
    """An ``XsbackupError`` is its one-line message and its exit code; any other
    ``OSError`` but a broken pipe (a state root this user may not read or write, a full
    disk) is the state root being unusable: one line naming the file, ``StateRootError``'s
    code, never a traceback. Writes the line to stderr and returns the code; None for
    anything else (the caller re-raises it)."""
    if isinstance(error, XsbackupError):
        line, code = error.message, error.exit_code
    elif isinstance(error, OSError) and not isinstance(error, BrokenPipeError):
        where = f": {error.filename}" if error.filename else ""
        line, code = f"{error.strerror or error}{where}", StateRootError.exit_code
    else:
        return None
    sys.stderr.write(f"xsbackup: error: {line}\n")
    sys.stderr.flush()
    return code
