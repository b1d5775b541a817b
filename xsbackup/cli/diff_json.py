"""``xsbackup diff``'s ``--json`` document, shared by the click command and ``cli.entry``'s
click-free ``diff ... --json`` (a command an admin or a script runs often, whose
start-up is most of its time on a small volume: bench/README.md, issue 12's part D).

``args`` takes only the plainest line: the global ``--root``/``--config`` before
``diff``, then exactly ``SERIAL A B`` with ``--json`` and at most one ``--volume V``
(``--volume=V``) among them; anything else (``--help``, a missing or extra argument, an
unknown option, ``--``) is left to click, which answers it as before. Only ``args`` is
imported for every command line: the rest is imported when the line is taken.
"""

from __future__ import annotations

from typing import Any

from xsbackup.cli.lines import take_option

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from xsbackup.context import Context

_GLOBAL = ("--root", "--config")
_VOLUME = "--volume"
_JSON = "--json"


def args(argv: Sequence[str]) -> dict[str, Any] | None:
    """``{"--root": R, "--config": F, "--volume": V, "serial", "a", "b"}`` (the options
    given) for the line ``[--root R] [--config F] diff SERIAL A B --json [--volume V]``
    (the last three in any order), or None for any other line."""
    words = list(argv)
    found: dict[str, Any] = {}
    i = 0
    while i < len(words) and words[i] != "diff":
        taken = take_option(words, i, _GLOBAL, found)
        if taken is None:
            return None
        i = taken
    if i >= len(words):
        return None
    i += 1
    positional: list[str] = []
    json_flag = False
    while i < len(words):
        word = words[i]
        if word == _JSON and not json_flag:
            json_flag = True
            i += 1
        elif word.startswith("-"):
            taken = take_option(words, i, (_VOLUME,), found)
            if taken is None:
                return None
            i = taken
        else:
            positional.append(word)
            i += 1
    if not json_flag or len(positional) != 3:
        return None
    found["serial"], found["a"], found["b"] = positional
    return found


def document(ctx: Context, serial: str, a: str, b: str, volume: str | None) -> dict[str, Any]:
    """What changed in ``serial``'s volume from ``a`` to ``b``, as ``diff --json``
    prints it."""
    from xsbackup.integrity import diff

    ctx.registry.get(serial)
    vol, sa, sb, changes = diff.diff(ctx, serial, a, b, volume)
    return {"client": serial, "volume": vol, "from": sa, "to": sb,
            "summary": diff.summary(changes), "changes": [c.as_dict() for c in changes]}


def run(found: dict[str, Any]) -> dict[str, Any]:
    """Load the settings, require an initialised state root, set up logging (as
    ``with_context`` does), and return the document."""
    from xsbackup import config, logs
    from xsbackup.context import Context

    settings = config.load(found.get("--root"), found.get("--config"), {})
    ctx = Context.open(settings)
    logs.setup(settings)
    return document(ctx, found["serial"], found["a"], found["b"], found.get(_VOLUME))
