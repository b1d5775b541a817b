"""The package's shape: layered imports without cycles, small modules, one owner for
processes and for the settings' schema.

Imports are read with ``ast`` from every module under ``xsbackup/``, including imports
inside functions and under ``if TYPE_CHECKING:`` (a type-only import is still a
dependency on the other layer). ``xsbackup/__init__.py`` and ``__main__.py`` are exempt,
as importer and as target.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "xsbackup"
MAX_LINES = 500
EXEMPT = frozenset({"xsbackup", "xsbackup.__main__"})

# Lowest first; a module may import only from its own layer or a lower one. An entry is a
# top-level module or a whole package of xsbackup/. ``resources`` (the shipped restore kit
# and example hooks; standard library only) and ``units`` (text forms of durations and
# sizes) sit with config.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer.split()) for layer in (
    "errors layout records",
    "config procs logs locking resources crashpoints units",
    "store counters hooks",
    "storage",
    "clients",
    "context",
    "snapshots",
    "retention",
    "restore",
    "integrity",
    "offsite",
    "ingest",
    "monitor",
    "fleet",
    "web",
    "server",
    "cli",
))
LAYER_OF = {entry: i for i, layer in enumerate(LAYERS) for entry in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def resolve(name: str) -> str | None:
    """The module of ours that importing ``name`` runs: ``name`` itself, or the package
    holding it when ``name`` is an attribute of a package (``from xsbackup import x``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module of ours that ``module`` imports, with the line of the import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name) if name.startswith("xsbackup") else None
            if target is not None and target != module and target not in EXEMPT:
                yield target, node.lineno


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, for every module that is not exempt."""
    out: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        if module in EXEMPT:
            continue
        edges: dict[str, int] = {}
        for target, line in imported(module, path):
            edges.setdefault(target, line)
        out[module] = edges
    return out


def entry(module: str) -> str:
    return module.split(".")[1]


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_checks_can_see_what_they_look_for(tmp_path: Path) -> None:
    """The reader counts an import inside a function and a relative one; the cycle
    finder and the layer check report what they are given."""
    probe = tmp_path / "probe.py"
    probe.write_text("from __future__ import annotations\n"
                     "def f() -> None:\n"
                     "    from xsbackup.web import app\n"
                     "    from ..store import Store\n")
    assert {t for t, _ in imported("xsbackup.ingest.probe", probe)} == \
        {"xsbackup.web.app", "xsbackup.store"}
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == \
        [["a", "b", "c"]]
    assert layer_violations({"xsbackup.store": {"xsbackup.web.app": 7, "xsbackup.errors": 8},
                             "xsbackup.web.app": {"xsbackup.web.ui": 9}}) == \
        ["xsbackup.store:7 imports xsbackup.web.app"]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({entry(m) for m in MODULES if m not in EXEMPT} - set(LAYER_OF))
    assert unplaced == [], f"add these to LAYERS: {unplaced}"


def test_no_import_cycles() -> None:
    edges = graph()
    found = ["; ".join(f"{a}:{edges[a][b]} imports {b}" for a in group for b in group
                       if b in edges[a])
             for group in cycles(edges)]
    assert found == []


def layer_violations(edges: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for module, targets in edges.items():
        mine = LAYER_OF.get(entry(module))
        for target, line in targets.items():
            theirs = LAYER_OF.get(entry(target))
            if mine is not None and theirs is not None and theirs > mine:
                out.append(f"{module}:{line} imports {target}")
    return sorted(out)


def test_no_import_from_a_higher_layer() -> None:
    assert layer_violations(graph()) == []


def test_modules_are_small() -> None:
    big = {str(p.relative_to(PACKAGE.parent)): n for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def _is_subprocess_use(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "subprocess" for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return not node.level and (node.module or "").split(".")[0] == "subprocess"
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
        and node.value.id == "subprocess"


def test_subprocess_only_in_procs() -> None:
    """Every child process is started by ``xsbackup/procs.py``."""
    users = {}
    for module, path in MODULES.items():
        if module == "xsbackup.procs":
            continue
        lines = sorted({node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
                        if _is_subprocess_use(node)})
        if lines:
            users[str(path.relative_to(PACKAGE.parent))] = lines
    assert users == {}
    assert "xsbackup.procs" in MODULES, "xsbackup/procs.py does not exist"


SETTINGS_INDEX = re.compile(r"\bsettings\[")


def test_settings_are_not_indexed_outside_config() -> None:
    """Settings are typed attributes (``settings.admission.slots``); only config.py may
    index a mapping called settings (while it builds them)."""
    found = []
    for module, path in MODULES.items():
        if module == "xsbackup.config":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SETTINGS_INDEX.search(line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert found == []
