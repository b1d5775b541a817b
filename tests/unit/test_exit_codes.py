"""One exception tree, one exit-code table: ``xsbackup exit-codes`` lists every code that
any module defines, each once, and the README documents exactly that table."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
from pathlib import Path
from types import ModuleType

import orjson

import xsbackup
from tests.conftest import XSBACKUP
from xsbackup.errors import XsbackupError

PACKAGE = Path(xsbackup.__file__).parent
README = PACKAGE.parent / "README.md"
NOT_CLASSES = {0: "OK", 2: "UsageError"}  # success, and click's own usage error


def every_module() -> list[ModuleType]:
    """Every module of the package, found as files on disk (not through the CLI's own
    import helper, so that a module it misses shows up here)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return [importlib.import_module(name) for name in names]


def subclasses(cls: type[XsbackupError]) -> set[type[XsbackupError]]:
    found: set[type[XsbackupError]] = set()
    todo = [cls]
    while todo:
        c = todo.pop()
        if c not in found:
            found.add(c)
            todo.extend(c.__subclasses__())
    return found


def listed() -> list[dict[str, object]]:
    """``xsbackup exit-codes --json`` in a fresh process, which imported only the CLI."""
    r = subprocess.run([XSBACKUP, "exit-codes", "--json"], capture_output=True, text=True,
                       check=True)
    rows: list[dict[str, object]] = orjson.loads(r.stdout)
    return rows


def test_exit_codes_list_every_code_of_every_module_once() -> None:
    rows = listed()
    codes = [row["code"] for row in rows]
    assert len(codes) == len(set(codes)), f"an exit code is listed twice: {codes}"
    assert all(isinstance(row["meaning"], str) and row["meaning"].strip() for row in rows)
    every_module()
    defined = {c.exit_code for c in subclasses(XsbackupError)}
    assert set(codes) == defined | set(NOT_CLASSES)
    by_code = {row["code"]: row["name"] for row in rows}
    assert {code: by_code[code] for code in NOT_CLASSES} == NOT_CLASSES
    # Each listed name is a real class carrying that code.
    classes = {c.__name__: c for c in subclasses(XsbackupError)}
    for code, name in by_code.items():
        if code not in NOT_CLASSES:
            assert classes[str(name)].exit_code == code


def test_every_class_with_an_exit_code_is_an_xsbackup_error() -> None:
    strays = []
    for module in every_module():
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and hasattr(obj, "exit_code") and not issubclass(obj, XsbackupError)):
                strays.append(f"{module.__name__}.{name}")
    assert strays == []


def test_readme_table_is_the_exit_codes_table() -> None:
    text = README.read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    documented = [m.groups() for m in re.finditer(r"^\| (\d+) \| (\w+) \| (.+?) \|$", section,
                                                  re.MULTILINE)]
    assert documented, "no exit-code table under '## Exit codes' in README.md"
    table = [(str(row["code"]), str(row["name"]), str(row["meaning"]).rstrip("."))
             for row in listed()]
    assert documented == table
