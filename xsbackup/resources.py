"""Files the package ships besides its modules: the restore kit and the example hooks.

Both live once in the source tree, in the top-level ``restore/`` and ``hooks/``
directories. ``pyproject.toml`` maps those directories to the packages ``xsbackup._kit``
and ``xsbackup._hooks`` (``[tool.setuptools.package-dir]``), so a wheel carries them and
an editable install reads them in place. Read them only through this module, never by a
path relative to a source file: an installed server has no source tree.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

KIT_PACKAGE = "xsbackup._kit"
HOOKS_PACKAGE = "xsbackup._hooks"

# The bare-device restore kit that ``GET /restore/kit`` hands out.
KIT: Traversable = resources.files(KIT_PACKAGE).joinpath("xsrestore.py")


def hook_examples() -> dict[str, Traversable]:
    """The example hook scripts by name: every file of the hooks directory that starts
    with a ``#!`` line (so not its README or ``__init__.py``)."""
    out: dict[str, Traversable] = {}
    for entry in resources.files(HOOKS_PACKAGE).iterdir():
        if entry.is_file() and not entry.name.startswith((".", "_")):
            with entry.open("rb") as fh:
                if fh.read(2) == b"#!":
                    out[entry.name] = entry
    return dict(sorted(out.items()))
