"""The option parser of the click-free command lines (``cli.entry``'s forced command and
``status --json``, ``cli.diff_json``'s ``diff ... --json``): the one owner of what such a
line's ``--opt VALUE`` / ``--opt=VALUE`` may be. Anything it does not take is left to
click, which answers it with its own messages."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def take_option(words: Sequence[str], i: int, allowed: Sequence[str],
                found: dict[str, str]) -> int | None:
    """Store ``--opt VALUE`` or ``--opt=VALUE`` at ``words[i]`` in ``found``; the index
    after it, or None if it is not one of ``allowed`` given once with a plain value (the
    one parser of the click-free lines: click gives its own messages for the rest)."""
    name, eq, value = words[i].partition("=")
    if name not in allowed or name in found:
        return None
    i += 1
    if not eq:
        if i >= len(words):
            return None
        value = words[i]
        i += 1
    if not value or value.startswith("-"):
        return None
    found[name] = value
    return i
