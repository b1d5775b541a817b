"""How a command prints its ``--json`` document (without click, for ``cli.entry``)."""

from __future__ import annotations

import sys
from typing import Any

import orjson


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
