"""The package's layering, checked from the source: each module imports only from its layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mjasync"

#: Bottom to top. A module may import from its own row or rows below, never above.
LAYERS: list[set[str]] = [
    {"_types", "_exceptions", "_config", "_redact"},
    {"_models", "_ndjson", "_retry", "_capacity"},
    {"_providers"},
    {"_transport", "_limiter"},
    # Fan-out (`_batch`) composes jobs and handles; the Client offers it as `run_many`, so they share a row.
    {"_client", "_job", "_stream", "_poller", "_attempts", "_batch", "_callbacks"},
    {"emulator", "testing", "cli", "webhooks", "__init__", "__main__"},
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
    "_providers",
}


def top_module(path: Path) -> str:
    """The first-level name of a module under mjasync/ (a package counts as one module)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


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
                base = package_parts[: len(package_parts) - node.level]
                if path.name == "__init__.py":
                    base = package_parts[: len(package_parts) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
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
    """A module imports mjasync modules of its own layer or below (type-only imports excepted)."""
    own = top_module(path)
    for name, typing_only in imports(path):
        if not name.startswith("mjasync.") or typing_only:
            continue
        target = name.split(".")[1]
        if target == own:
            continue
        assert layer_of(target) <= layer_of(own), f"mjasync.{own} imports {name}, a higher layer"


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
