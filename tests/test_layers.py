"""The layers hold: infra, graph_engine, flyte_agent, workflows, bottom to top, each importing only the
ones below it; the names they share live in infra/contract.py.

Every import statement of every module is read with `ast` (inside functions and under TYPE_CHECKING
too, where the layer rules apply); the DSL and cycle checks follow module-level imports only (not
inside functions: what runs when the module is imported). A package's `__init__` that an import
runs on the way is not followed: each `__init__` is a module of its own here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("infra", "graph_engine", "flyte_agent", "workflows")  # bottom to top
# What each layer's modules may import of the project, by module prefix.
ALLOWED = {
    "infra": ("infra",),
    "graph_engine": ("graph_engine", "infra.contract"),
    "flyte_agent": ("flyte_agent", "graph_engine", "infra"),
    "workflows": ("workflows", "flyte_agent", "graph_engine", "infra"),
}
# The task DSL is imported wherever a workflow is defined (and flytekit loads the connector in every
# process anyway): it must not need the connector's server or provisioners.
DSL = ("flyte_agent", "flyte_agent.task")
SERVER_SIDE = ("flyte_agent.connector", "flyte_agent.grpc_server", "flyte_agent.serve",
               "flyte_agent.pulumi_provisioner", "flyte_agent.local_provisioner")


@dataclass(frozen=True)
class Import:
    module: str       # the importing module
    target: str       # the module imported: `from pkg import sub` names the submodule where there is one
    where: str        # file:line of the statement
    top_level: bool   # not inside a function: runs when the module is imported
    type_checking: bool

    def __str__(self) -> str:
        typing_only = " (TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.where}: {self.module} imports {self.target}{typing_only}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def layer_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in LAYERS else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, in_function, type_checking
        nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for part in child.body:
                yield part, nested, True
                yield from _walk(part, nested, True)
            for part in child.orelse:
                yield part, nested, type_checking
                yield from _walk(part, nested, type_checking)
            continue
        yield from _walk(child, nested, type_checking)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    known = modules()
    named = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return list(dict.fromkeys(named))  # `from m import a, b`: one import of m


@cache
def imports() -> tuple[Import, ...]:
    found = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, in_function, type_checking in _walk(tree, False, False):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found += [Import(module, target, where, not in_function, type_checking)
                          for target in _targets(module, path, node)]
    return tuple(found)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    bad = [str(i) for i in imports()
           if layer_of(i.module) == layer and layer_of(i.target) and not _within(i.target, ALLOWED[layer])]
    assert not bad, (f"{layer} may import only {', '.join(ALLOWED[layer])} of the project "
                     f"(move a shared name to infra/contract.py):\n" + "\n".join(bad))


def test_the_contract_imports_only_the_standard_library() -> None:
    """Every layer imports it, and the graph-engine image carries it without the rest of infra."""
    bad = [str(i) for i in imports() if i.module == "infra.contract"
           and i.target.split(".")[0] not in (*sys.stdlib_module_names, "__future__")]
    assert not bad, "infra/contract.py must import only the standard library:\n" + "\n".join(bad)


def module_graph() -> dict[str, list[Import]]:
    """Module-level imports among the project's modules, by importing module."""
    graph: dict[str, list[Import]] = {m: [] for m in modules()}
    for i in imports():
        if i.top_level and i.target in graph and i.target != i.module:
            graph[i.module].append(i)
    return graph


@pytest.mark.parametrize("entry", DSL)
def test_the_task_dsl_does_not_import_the_connector_server(entry: str) -> None:
    graph = module_graph()
    path: dict[str, list[Import]] = {entry: []}
    todo = [entry]
    while todo:
        module = todo.pop()
        for i in graph[module]:
            if i.target not in path:
                path[i.target] = [*path[module], i]
                todo.append(i.target)
    reached = [m for m in SERVER_SIDE if m in path]
    chains = ["\n".join(f"  {i}" for i in path[m]) for m in reached]
    assert not reached, (f"{entry} reaches the connector's server side at import:\n" + "\n".join(chains))


def import_cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph = {m: sorted({i.target for i in edges}) for m, edges in module_graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_there_is_no_import_cycle() -> None:
    graph = module_graph()
    reports = []
    for cycle in import_cycles():
        members = set(cycle)
        edges = [f"    {i}" for m in cycle for i in graph[m] if i.target in members]
        reports.append(f"  cycle among {', '.join(cycle)}:\n" + "\n".join(edges))
    assert not reports, "module-level import cycles (import one side inside a function, or move the " \
                        "shared piece down):\n" + "\n".join(reports)


# Run in a fresh interpreter: records every environment read the project's own code makes while the
# modules are imported, and every thread started. Reads inside a library are the library's (flytekit
# reads its FLYTE_* settings at import, pydantic PYDANTIC_DISABLE_PLUGINS for each model class).
_IMPORT_PROBE = r"""
import json, os, sys, threading

ROOTS = tuple(os.path.join(sys.argv[1], layer) + os.sep for layer in sys.argv[2].split(","))
# os.getenv -> Mapping.get -> __getitem__ (_collections_abc names itself collections.abc)
PLUMBING = ("os", "_collections_abc", "collections.abc")
reads = []

def _reader():
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") in PLUMBING:
        frame = frame.f_back
    if frame is None or not os.path.abspath(frame.f_code.co_filename).startswith(ROOTS):
        return None
    where = f"{os.path.relpath(frame.f_code.co_filename, sys.argv[1])}:{frame.f_lineno}"
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    if frame is not None:  # the module-level statement that called it
        where += f" (importing {os.path.relpath(frame.f_code.co_filename, sys.argv[1])}:{frame.f_lineno})"
    return where

class Recording(type(os.environ)):
    def __getitem__(self, key):
        where = _reader()
        if where:
            reads.append([key, where])
        return super().__getitem__(key)

    def __iter__(self):
        where = _reader()
        if where:
            reads.append(["<every variable>", where])
        return super().__iter__()

recording = Recording.__new__(Recording)
recording.__dict__.update(os.environ.__dict__)
os.environ = recording  # os.getenv reads os.environ too
threads = {t.ident for t in threading.enumerate()}
count = threading.active_count()

import flyte_agent
from flyte_agent import DataServiceTask
import flyte_agent.connector

started = [t.name for t in threading.enumerate() if t.ident not in threads]
print(json.dumps({"before": count, "after": threading.active_count(), "started": started,
                  "reads": reads, "connector": "flyte_agent.connector" in sys.modules}))
"""


def probe_import(probe: str = _IMPORT_PROBE) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", probe, str(ROOT), ",".join(LAYERS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_importing_the_dsl_and_connector_starts_no_thread_and_reads_no_environment() -> None:
    found = probe_import()
    assert found["connector"]
    reads = found["reads"]
    assert isinstance(reads, list)
    problems = [f"  {where}: reads {key}" for key, where in reads]
    if found["after"] != found["before"]:
        problems.append(f"  started threads {found['started']}")
    assert not problems, ("importing flyte_agent and flyte_agent.connector (flytekit imports the connector "
                          "in every process) must read no environment and start no thread; do it on first "
                          "use:\n" + "\n".join(problems))
