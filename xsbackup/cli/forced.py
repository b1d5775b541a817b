"""``xsbackup ssh-command``'s body, shared by the click command and ``cli.entry``."""

from __future__ import annotations

from xsbackup import config, logs
from xsbackup.context import Context
from xsbackup.ingest import dispatch


def run(root: str | None, config_file: str | None, client: str,
        restore_key: str | None = None) -> int:
    """Load the settings, set up logging, and dispatch ``SSH_ORIGINAL_COMMAND``."""
    settings = config.load(root, config_file, {})
    logs.setup(settings)
    return dispatch.run(Context.open(settings, require=False), client,
                        restore_key=restore_key)
