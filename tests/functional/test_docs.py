"""The documentation site: each page's Python blocks run as written, in order, against the emulator;
the pytest files a page shows pass under pytest; the defaults the reference states are the code's; and
`mkdocs build --strict` builds the site with every page in its navigation.

A page's plain ```python blocks run in one namespace, as a user pastes them into one async function,
with `mj` (a client bound to the emulator), `mjasync`, `api_key`, `base_url` and `redis_url` given (see
`docs/index.md`), exactly as `tests/functional/test_readme.py` runs the README's. A block fenced
```python title="NAME.py" is a file of its own: the page's named files are written into one folder
and run there with pytest.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

import mjasync
from mjasync.testing import EMULATOR_TOKEN

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: A block run in the page's namespace: ```python, with nothing after it on the fence line.
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: A block that is a file of its own: ```python title="NAME.py".
FILE_BLOCK = re.compile(r'^```python title="([\w.]+\.py)"\n(.*?)^```', re.DOTALL | re.MULTILINE)
PAGES = sorted(DOCS.rglob("*.md"))
RUNNABLE = [page for page in PAGES if BLOCK.search(page.read_text(encoding="utf-8"))]


def page_id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def blocks(page: Path) -> list[str]:
    """The page's blocks that run in its namespace, in order."""
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_guides_have_runnable_blocks() -> None:
    """Every guide and the getting-started page show running code (this guards the regex above)."""
    expected = {"getting-started.md", *(f"guides/{p.name}" for p in (DOCS / "guides").glob("*.md"))}
    expected.discard("guides/performance.md")  # figures and a table: no code to run
    assert expected <= {page_id(page) for page in RUNNABLE}
    assert len(blocks(DOCS / "guides" / "tour.md")) >= 10


@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
async def test_page_blocks_run_in_order(
    page: Path, mj: mjasync.Client, mj_emulator: Any, tmp_path: Path, redis_url: str
) -> None:
    """Every ```python block of the page runs against the emulator without error."""
    namespace: dict[str, Any] = {
        "__name__": "__main__",  # as in a user's script (aiohttp's AppKey reads its caller's module)
        "mj": mj,
        "mjasync": mjasync,
        "api_key": EMULATOR_TOKEN,
        "base_url": mj_emulator.url,
        "redis_url": redis_url,  # the scale-out guide's Redis: a real server, started by the fixture
        "print": lambda *args, **kwargs: None,
    }
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the download examples write into ./out
    try:
        for number, source in enumerate(blocks(page), 1):
            name = f"{page_id(page)} block {number}"
            code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            try:
                outcome = eval(code, namespace)
                if outcome is not None:
                    await outcome
            except Exception as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"{name} failed: {exc!r}\n{source}")
    finally:
        os.chdir(cwd)
    if page.name == "tour.md":
        assert (tmp_path / "out" / "upscaled.png").stat().st_size > 0


def file_blocks(page: Path) -> dict[str, str]:
    """The page's blocks that are files of their own, by file name."""
    return dict(FILE_BLOCK.findall(page.read_text(encoding="utf-8")))


def test_testing_guide_files_pass_under_pytest(tmp_path: Path) -> None:
    """The conftest and test file the testing guide shows pass as a user's own test suite would."""
    files = file_blocks(DOCS / "guides" / "testing.md")
    assert {"conftest.py", "test_captions.py"} <= set(files)
    for name, source in files.items():
        (tmp_path / name).write_text(source, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # not this project's settings
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,  # a hang detector, not a speed requirement
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


#: A row of docs/reference/defaults.md that names an option the code has: `Owner.field` (a field of an
#: option Struct, read from `Owner()`) or `Owner(param=)` / `Owner.method(param=)` (a parameter's
#: default, from the signature), then the default as a Python expression.
DEFAULT_ROW = re.compile(
    r"^\| `(?P<owner>[A-Za-z][\w.]*?)(?:\((?P<param>\w+)=\))?` \| `(?P<value>[^`]+)`", re.MULTILINE
)
OWNERS: dict[str, object] = {
    "Client": mjasync.Client,
    "Timeouts": mjasync.Timeouts,
    "Limits": mjasync.Limits,
    "PollPolicy": mjasync.PollPolicy,
    "RetryPolicy": mjasync.RetryPolicy,
    "WebhookReceiver": mjasync.WebhookReceiver,
}


def documented_defaults() -> dict[str, tuple[object, object]]:
    """Each row of the defaults page: its option, with the value the page states and the code's."""
    import mjasync.emulator
    import mjasync.redis

    owners = {
        **OWNERS,
        "Emulator": mjasync.emulator.Emulator,
        "SharedLimits": mjasync.redis.SharedLimits,
        "RunQueue": mjasync.redis.RunQueue,
        "Worker": mjasync.redis.Worker,
    }
    rows: dict[str, tuple[object, object]] = {}
    text = (DOCS / "reference" / "defaults.md").read_text(encoding="utf-8")
    for row in DEFAULT_ROW.finditer(text):
        owner, param, value = row["owner"], row["param"], row["value"]
        stated = eval(value, {})  # the page's own literal: a number, a string, a tuple, None
        if param is None:
            struct, field = owner.rsplit(".", 1)
            actual = getattr(owners[struct](), field)
            rows[owner] = (stated, actual)
        else:
            head, *path = owner.split(".")
            target = owners[head]
            for name in path:
                target = getattr(target, name)
            actual = inspect.signature(target).parameters[param].default
            rows[f"{owner}({param}=)"] = (stated, actual)
    return rows


def test_defaults_page_states_the_codes_defaults() -> None:
    """Every default the defaults page states is the code's, and every option Struct field and every
    parameter default of the main classes has its row (so a new option cannot go unwritten)."""
    import mjasync.emulator
    import mjasync.redis
    from mjasync._config import DEFAULT_SERVER_TIMEOUT

    rows = documented_defaults()
    wrong = {name: pair for name, pair in rows.items() if pair[0] != pair[1]}
    assert wrong == {}, "the defaults page and the code disagree (stated, actual)"
    expected = {
        f"{struct.__name__}.{field.name}"
        for struct in (mjasync.Timeouts, mjasync.Limits, mjasync.PollPolicy, mjasync.RetryPolicy)
        for field in msgspec.structs.fields(struct)
    }
    for owner in (
        mjasync.Client,
        mjasync.WebhookReceiver,
        mjasync.emulator.Emulator,
        mjasync.redis.SharedLimits,
        mjasync.redis.RunQueue,
        mjasync.redis.Worker,
    ):
        for name, parameter in inspect.signature(owner).parameters.items():
            default = parameter.default
            # Options with a value to state; None ("not set") and injected callables (clock, sleep)
            # are described beside the class instead.
            if default is not inspect.Parameter.empty and default is not None and not callable(default):
                expected.add(f"{owner.__name__}({name}=)")
    assert expected - set(rows) == set(), "options with a default missing from docs/reference/defaults.md"
    text = (DOCS / "reference" / "defaults.md").read_text(encoding="utf-8")
    assert f"| `server_wait=` (any job) | `{DEFAULT_SERVER_TIMEOUT:g}` seconds |" in text


def test_every_page_is_in_the_navigation() -> None:
    """mkdocs.yml's nav lists every page in docs/ (MkDocs only mentions a page left out, even when strict)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def paths(entry: object) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, list):
            return [path for item in entry for path in paths(item)]
        if isinstance(entry, dict):
            return [path for value in entry.values() for path in paths(value)]
        return []

    assert sorted(paths(config["nav"])) == sorted(page_id(page) for page in PAGES)


def test_site_builds_strict_with_every_public_name(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds offline, and the reference has an entry for every name each
    public module exports."""
    import importlib

    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang detector, not a speed requirement
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    pages = {
        "mjasync": "mjasync",
        "mjasync.types": "types",
        "mjasync.webhooks": "webhooks",
        "mjasync.redis": "redis",
        "mjasync.testing": "testing",
        "mjasync.emulator": "emulator",
    }
    for module, page in pages.items():
        html = (tmp_path / "site" / "reference" / page / "index.html").read_text(encoding="utf-8")
        anchors = set(re.findall(r'id="([^"]+)"', html))
        missing = [
            name for name in importlib.import_module(module).__all__ if f"{module}.{name}" not in anchors
        ]
        assert missing == [], f"{module}: not in the reference"
