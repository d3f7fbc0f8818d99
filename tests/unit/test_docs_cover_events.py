"""Every log event the daemon can emit is in docs/operations.md's Logs section, as `event`.

The events are read statically from cdc_daemon/ with ast: the first argument of each
debug/info/warning/error/exception/critical call on a module's structlog logger (`log =
structlog.get_logger(...)`). That argument is a string, a module constant, or a parameter of the
enclosing function whose callers in the module pass strings; anything else fails the test, so no
event escapes it."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cdc_daemon"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def logs_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    return text.split("\n### Logs\n", 1)[1].split("\n## ", 1)[0]


class EventCollector:
    """The log events of one module's source."""

    def __init__(self, source: str, where: str) -> None:
        self.tree = ast.parse(source)
        self.where = where
        self.parents = {child: node for node in ast.walk(self.tree)
                        for child in ast.iter_child_nodes(node)}
        self.loggers = {target.id for node in self.tree.body if isinstance(node, ast.Assign)
                        and _is_get_logger(node.value)
                        for target in node.targets if isinstance(target, ast.Name)}
        self.constants = {target.id: node.value.value for node in self.tree.body
                          if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                          and isinstance(node.value.value, str)
                          for target in node.targets if isinstance(target, ast.Name)}

    def events(self) -> Iterator[str]:
        for node in ast.walk(self.tree):
            if self._is_log_call(node):
                assert isinstance(node, ast.Call)
                yield from self._strings(self._event_argument(node), node)

    def _is_log_call(self, node: ast.AST) -> bool:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS and isinstance(node.func.value, ast.Name)
                and node.func.value.id in self.loggers)

    def _event_argument(self, call: ast.Call) -> ast.expr:
        if call.args:
            return call.args[0]
        named = [k.value for k in call.keywords if k.arg == "event"]
        assert named, self._here(call, "a log call without an event")
        return named[0]

    def _strings(self, node: ast.expr, call: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value
        elif isinstance(node, ast.Name) and node.id in self.constants:
            yield self.constants[node.id]
        elif isinstance(node, ast.Name) and (function := self._defining(node.id, call)):
            yield from self._passed(function, node.id)
        else:
            raise AssertionError(self._here(call, "a log event that is not a plain string"))

    def _defining(self, name: str, node: ast.AST) -> ast.FunctionDef | None:
        """The enclosing function that has `name` as a parameter."""
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef):
                params = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                return node if name in [p.arg for p in params] else None
        return None

    def _passed(self, function: ast.FunctionDef, param: str) -> Iterator[str]:
        """The strings the module's calls of `function` pass as `param`."""
        positional = [p.arg for p in function.args.posonlyargs + function.args.args]
        method = bool(positional) and positional[0] == "self"
        found = False
        for call in ast.walk(self.tree):
            if not (isinstance(call, ast.Call) and _called_name(call) == function.name):
                continue
            index = positional.index(param) - method if param in positional else None
            values = [k.value for k in call.keywords if k.arg == param]
            if index is not None and index < len(call.args):
                values.append(call.args[index])
            for value in values:
                found = True
                yield from self._strings(value, call)
        assert found, self._here(function, f"no caller passes the log event {param!r}")

    def _here(self, node: ast.AST, what: str) -> str:
        return f"{self.where}:{getattr(node, 'lineno', '?')}: {what}"


def _is_get_logger(value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and _called_name(value) == "get_logger"


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


@functools.cache  # parsed once: two tests read the same events (nothing mutates them)
def package_events() -> dict[str, str]:
    """event → the first module that emits it."""
    events: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for event in EventCollector(path.read_text(), where).events():
            events.setdefault(event, where)
    return events


def undocumented(events: dict[str, str], docs: str) -> list[str]:
    return sorted(f"{where}: {event!r}" for event, where in events.items()
                  if f"`{event}`" not in docs)


def test_every_log_event_is_in_operations_md() -> None:
    events = package_events()
    assert len(events) > 40, events  # the collector finds the package's events
    missing = undocumented(events, logs_section())
    assert not missing, "add these events to docs/operations.md's Logs table:\n" + "\n".join(
        missing)


def test_the_logs_table_lists_only_real_events() -> None:
    """An event renamed or removed in the code leaves no stale row behind."""
    rows = re.findall(r"^\| (.+?) \| (?:debug|info|warning|error)", logs_section(), re.MULTILINE)
    # Code spans: `event`, or ``event`` when the event holds a backtick.
    listed = {name for row in rows for _, name in re.findall(r"(`+)(.+?)(?<!`)\1(?!`)", row)}
    assert listed, "the Logs table was not found"
    stale = sorted(listed - package_events().keys())
    assert not stale, f"docs/operations.md lists events the code no longer emits: {stale}"


SOURCE = '''
import structlog
log = structlog.get_logger("x")
EVENT = "from a constant"

class Daemon:
    def swap(self, build, why, **details):
        log.info(why, **details)

    def reload(self):
        self.swap(build, "config reloaded")
        self.swap(build, why="schema changed")

def work():
    log.warning("a brand new event", table="t")
    log.error(EVENT)
    print("not a log call")
    other.info("not our logger")
'''


def test_the_collector_finds_strings_constants_and_passed_events() -> None:
    events = set(EventCollector(SOURCE, "example.py").events())
    assert events == {"config reloaded", "schema changed", "a brand new event", "from a constant"}


def test_a_new_event_without_docs_fails() -> None:
    events = {event: "example.py" for event in EventCollector(SOURCE, "example.py").events()}
    docs = "| `config reloaded` | info |\n| `schema changed` | info |\n| `from a constant` | -"
    assert undocumented(events, docs) == ["example.py: 'a brand new event'"]


@pytest.mark.parametrize("call", ['log.info(f"rows: {n}")', "log.info(message)",
                                  'log.info("a" + "b")'])
def test_an_event_the_collector_cannot_read_fails(call: str) -> None:
    source = f"import structlog\nlog = structlog.get_logger()\ndef f(n, m):\n    {call}\n"
    with pytest.raises(AssertionError, match=r"example\.py:4: a log event that is not"):
        list(EventCollector(source, "example.py").events())
