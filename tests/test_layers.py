"""The package's layering, checked from the source: each module imports only from its layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mjasync"

#: Bottom to top. A module may import from its own row or rows below, never above.
LAYERS: list[set[str]] = [
    {"_types", "_exceptions", "_config", "_redact", "redis._limits_scripts", "redis._queue_scripts"},
    {"_models", "_ndjson", "_retry", "_capacity"},
    {"_providers", "_requests"},
    # The scale-out (`mjasync.redis`) spans floors: its connection and queue beside the transport, its
    # shared limiter beside the one-process limiter, its worker above the client.
    {"_transport", "_limiter", "_lookups", "_inbox", "redis._connect", "redis._limits", "redis._queue"},
    # The client floor, bottom to top: one engine with verbs; a job's send log and polling; following
    # by callback; streams; jobs and handles; the fan-out; the client, which is only the face.
    {"_engine"},
    {"_attempts", "_poller", "_sending"},
    {"_callbacks"},
    {"_stream"},
    {"_job"},
    {"_batch"},
    {"_client"},
    {"redis._worker"},
    {"emulator", "redis", "testing", "cli", "webhooks", "types", "__init__", "__main__"},
]
#: Modules that must stay pure: no sockets, no event loop.
PURE = {
    "_types",
    "_exceptions",
    "_config",
    "_redact",
    "_models",
    "_ndjson",
    "_retry",
    "_capacity",
    "_requests",
    "_providers",
}


#: Packages whose modules sit on different floors: each module is placed on its own (`redis._limits`).
SPLIT = {"redis"}


def top_module(path: Path) -> str:
    """The first-level name of a module under mjasync/ (a package counts as one module, except those
    in `SPLIT`, whose modules count one by one and whose `__init__` is the package's face)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[0] in SPLIT and len(parts) > 1 and parts[1] != "__init__":
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def target_module(name: str) -> str:
    """`top_module` for an imported dotted name (`mjasync.redis._limits.X` → `redis._limits`)."""
    parts = name.split(".")[1:]
    if parts[0] in SPLIT and len(parts) > 1:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def layer_of(name: str) -> int:
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise AssertionError(f"mjasync.{name} is in no layer; add it to LAYERS")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, only for type checking) for each import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: list[tuple[str, bool]] = []
    package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in typing_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `parts` ends with the file's own name (`__init__` for a package): level 1 drops it.
                base = package_parts[: len(package_parts) - node.level]
                if not node.module:
                    # `from . import _scripts` imports the modules it names, not the package's face.
                    found += [
                        (".".join([*base, alias.name]), id(node) in typing_only) for alias in node.names
                    ]
                    continue
                name = ".".join([*base, node.module])
            else:
                name = node.module or ""
            found.append((name, id(node) in typing_only))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    """No module is left out of the layering."""
    for path in SOURCES:
        layer_of(top_module(path))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_imports_go_down_the_layers(path: Path) -> None:
    """A module imports mjasync modules of its own layer or below, type-only imports included."""
    own = top_module(path)
    for name, _ in imports(path):
        if not name.startswith("mjasync."):
            continue
        target = target_module(name)
        if target == own:
            continue
        assert layer_of(target) <= layer_of(own), f"mjasync.{own} imports {name}, a higher layer"


def module_name(path: Path) -> str:
    """The dotted name of a source file (`mjasync.emulator._store`; a package is its `__init__`)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each mjasync module and the mjasync modules it imports, type-only imports included.

    `from .x import name` counts as importing `x.name` when that is a module, else `x`.
    """
    modules = {module_name(path): path for path in SOURCES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package_parts[: len(package_parts) - node.level]) if node.level else ""
                stem = ".".join(part for part in (base, node.module or "") if part)
                for alias in node.names:
                    # `from . import mod` names a module; `from .mod import Name` imports `mod`.
                    submodule = f"{stem}.{alias.name}"
                    targets.add(submodule if submodule in modules else stem)
        targets.discard(name)
        graph[name] = targets & modules.keys()
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_anywhere() -> None:
    """No module of mjasync, the emulator's included, reaches itself through imports (type-only too).

    A package's `__init__` re-exporting its modules is not a cycle of theirs: only a module importing
    its own package back would be, and that shows here too.
    """
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("path", [p for p in SOURCES if top_module(p) in PURE], ids=lambda p: p.name)
def test_pure_layers_never_touch_the_network(path: Path) -> None:
    """Models, the ndjson splitter, retry maths and provider mappings import neither aiohttp nor anyio."""
    for name, _ in imports(path):
        assert name.split(".")[0] not in {"aiohttp", "anyio", "asyncio", "socket"}, (
            f"{path.name} imports {name}"
        )


@pytest.mark.parametrize("path", [p for p in SOURCES if top_module(p) == "emulator"], ids=lambda p: p.name)
def test_the_emulator_shares_no_wire_code_with_the_client(path: Path) -> None:
    """The emulator builds its bodies from the providers' documents, never from the client's mapping."""
    for name, _ in imports(path):
        if name.startswith("mjasync."):
            assert name.startswith("mjasync.emulator"), f"{path.name} imports {name}"
