"""The package's import graph: no cycles (imports at any level, inside functions and behind
`if TYPE_CHECKING` included), and only the composition root reads the config."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cdc_daemon"
ROOT = {"cdc_daemon.cli", "cdc_daemon.wiring", "cdc_daemon.config", "cdc_daemon.database_files"}
# Core modules that still read the config. Empty when issue 14 is done; an entry here is a
# known exception with the reason, not a place to add new ones.
CONFIG_ALLOWED: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, package: str) -> set[str]:
    """Every cdc_daemon module `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package upwards
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import mod`
    return found


@functools.cache  # parsed once: three tests read the same graph (nothing mutates it)
def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = {m for m in imported(path, package) if m in paths}
        # Importing a.b.c runs package a.b's __init__ first: an edge to it too, unless the
        # importer is inside a.b (Python has begun that package before its modules run).
        parents = {p for m in found for p in _parents(m) if not name.startswith(p + ".")}
        graph[name] = (found | (parents & paths.keys())) - {name}
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]  # not the top package itself


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_sees_a_cycle_behind_type_checking(tmp_path: Path) -> None:
    """The checks below would pass vacuously if imports were missed: a cycle made of an import
    inside a function and one behind `if TYPE_CHECKING` is found."""
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
    )
    graph = {
        "pkg.a": {m for m in imported(tmp_path / "a.py", "pkg") if m in {"pkg.b"}},
        "pkg.b": {m for m in imported(tmp_path / "b.py", "pkg") if m in {"pkg.a"}},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "cdc_daemon.daemon" in graph and graph["cdc_daemon.cli"]  # the package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Each module's layer; a module may import its own layer and those below it, never above.
LAYERS = {
    "root": {
        "cli", "cli_parser", "cli_progress", "wiring", "config", "config_template", "__main__",
        "database_files",
    },
    "service": {
        "daemon", "runtime", "resync", "replaced_file", "admin", "control", "signals",
        "metrics", "notify", "heartbeat", "wake", "drain", "startup_checks", "status",
        "localserver", "fleet", "fleet_member",
    },
    "typesense": {"typesense"},
    "core": {
        "sync", "changelog", "dead_letters", "log_status", "log_schema", "triggers",
        "trigger_watch", "database", "table_rows", "row_keys", "schema", "documents",
        "document_sql", "evolution", "ownership", "backfill", "sweep", "reconfigure", "verify",
        "preflight", "kms", "auth", "dependencies", "batching",
    },
    "base": {"errors", "logs", "retry", "sink", "secret_files", "permissions", "turns"},
}
ORDER = list(LAYERS)


def layer_of(module: str) -> str:
    first = module.split(".")[1] if "." in module else module
    for layer, members in LAYERS.items():
        if first in members:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the module map)")


def test_imports_point_down_the_layers() -> None:
    """docs/architecture.md's layers: root > service > typesense > core > base."""
    upward = sorted(
        f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
        for name, imports in import_graph().items()
        if name != "cdc_daemon"
        for target in imports
        if target != "cdc_daemon" and ORDER.index(layer_of(target)) < ORDER.index(layer_of(name))
    )
    assert upward == []


def test_only_the_root_imports_the_config() -> None:
    readers = sorted(
        name
        for name, imports in import_graph().items()
        if "cdc_daemon.config" in imports and name not in ROOT and name not in CONFIG_ALLOWED
    )
    assert readers == [], f"core modules importing cdc_daemon.config: {readers}"


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md's module map is how a newcomer finds their way: a module missing
    from it (or one it names that is gone) fails here."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Module map") :]
    named = set(re.findall(r"`((?:typesense/)?[a-z_]+\.py)`", section))
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }
    assert sorted(modules - named) == [], "modules missing from the module map"
    assert sorted(named - modules) == [], "the module map names modules that don't exist"
