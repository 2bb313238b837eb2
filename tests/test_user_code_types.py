"""User code type-checks: the README's Python blocks and each docs page's, pasted in order, the files
the docs show, and every example pass `mypy --strict` and `pyright --strict`, with no casts and no
ignores.

A user pastes a page's blocks into one async function (they use top-level `await`), where `mj`,
`api_key`, `base_url` and `redis_url` are the function's parameters, as `tests/functional/test_readme.py`
and `tests/functional/test_docs.py` give them when they run the same blocks; a block fenced
```python title="NAME.py" is a file of its own. Both checkers run in subprocesses on those files as
they are, and on a few lines of wrong user code each must refuse (an unchecked outcome, an
out-of-range index).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").rglob("*.py"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: A docs block that is a file of its own (see tests/functional/test_docs.py).
FILE_BLOCK = re.compile(r'^```python title="([\w.]+\.py)"\n(.*?)^```', re.DOTALL | re.MULTILINE)
#: What the blocks take from around them; the rest they define themselves.
PRELUDE = '''\
"""A page's Python blocks, in order, as a user pastes them into one async function."""

import mjasync


async def page(mj: mjasync.Client, api_key: str, base_url: str, redis_url: str) -> None:
'''
#: Strict, every type rule on. Off: the two reports of names left unused, which a tour of calls has by
#: design (`wide = await mj.imagine(...)` shows the call; the README does not use `wide` again).
PYRIGHT_SETTINGS = {
    "typeCheckingMode": "strict",
    "pythonVersion": "3.10",
    "reportUnusedVariable": "none",
    "reportUnusedImport": "none",
}
#: A checker's own way of silencing itself: none may appear in user code.
ESCAPES = re.compile(r"type:\s*ignore|pyright:\s*ignore|\bcast\(|\bAny\b")


def blocks_module(page: Path) -> str:
    """A page's Python blocks (README.md or a docs page), in order, as one module."""
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    assert blocks, f"{page.name}: no python blocks found"
    body = "\n".join(
        f"    # {page.name} block {n}\n{textwrap.indent(b, '    ')}" for n, b in enumerate(blocks, 1)
    )
    return PRELUDE + body


def docs_pages() -> list[Path]:
    """The docs pages that have Python blocks to paste; the tour, which holds most, among them."""
    pages = [page for page in sorted(DOCS.rglob("*.md")) if BLOCK.search(page.read_text(encoding="utf-8"))]
    tour = DOCS / "guides" / "tour.md"
    assert tour in pages and len(BLOCK.findall(tour.read_text(encoding="utf-8"))) >= 10
    return pages


#: User code the checkers must refuse: each line marked `# refused` is an error, and only those.
REFUSED = """\
import mjasync


async def refused(mj: mjasync.Client) -> None:
    grid = await mj.imagine("a cat")
    async with mj.run_many([mj.imagine("a cat")], concurrency=1) as outcomes:
        async for outcome in outcomes:
            print(outcome.result.image_url)  # refused: a failed outcome has no result
    async with mj.imagine("a cat").stream() as updates:
        async for update in updates:
            url: str = update.image_url  # refused: a progress update may have no image yet
            print(url)
    await mj.upscale(grid, 5)  # refused: a grid has four images
    await mj.zoom_out(grid, 3)  # refused: zoom out is 1.5x or 2x
    mjasync.Client(provider="midjourney")  # refused: no such provider
"""


def refused_lines() -> set[int]:
    return {n for n, line in enumerate(REFUSED.splitlines(), 1) if "# refused" in line}


@pytest.fixture(scope="module")
def user_code(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The README and each docs page as one module, the docs' files, the examples, and the code that
    must be refused (last)."""
    directory = tmp_path_factory.mktemp("user_code")
    readme = directory / "readme_blocks.py"
    readme.write_text(blocks_module(README), encoding="utf-8")
    pages: list[Path] = []
    for page in docs_pages():
        module = directory / (
            "docs_" + re.sub(r"\W", "_", page.relative_to(DOCS).with_suffix("").as_posix()) + ".py"
        )
        module.write_text(blocks_module(page), encoding="utf-8")
        pages.append(module)
        for name, source in FILE_BLOCK.findall(page.read_text(encoding="utf-8")):
            (directory / name).write_text(source, encoding="utf-8")
            pages.append(directory / name)
    (directory / "refused.py").write_text(REFUSED, encoding="utf-8")
    return [readme, *pages, *EXAMPLES, directory / "refused.py"]


def test_user_code_uses_no_escape_hatch(user_code: list[Path]) -> None:
    """No cast, no ignore comment and no Any: what passes, passes on the library's own types."""
    for path in user_code[:-1]:
        found = ESCAPES.findall(path.read_text(encoding="utf-8"))
        assert found == [], f"{path.name}: {found}"


def test_mypy_strict_accepts_user_code(user_code: list[Path], tmp_path: Path) -> None:
    """`mypy --strict` on the README's and the docs' blocks and the examples reports nothing."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *map(str, user_code),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.stderr == ""
    errors = [line for line in done.stdout.splitlines() if ": error: " in line]
    assert_only_refused(errors, [(Path(e.split(":")[0]).name, int(e.split(":")[1])) for e in errors])


def test_pyright_strict_accepts_user_code(user_code: list[Path], tmp_path: Path) -> None:
    """`pyright` in strict mode on the README's and the docs' blocks and the examples reports no error."""
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent))
    assert pyright is not None, "pyright is in the test extra: pip install -e '.[test]'"
    config = tmp_path / "pyrightconfig.json"
    config.write_text(json.dumps(PYRIGHT_SETTINGS), encoding="utf-8")
    done = subprocess.run(
        [
            pyright,
            "--outputjson",
            "--project",
            str(config),
            "--pythonpath",
            sys.executable,
            *map(str, user_code),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    found = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert report["summary"]["filesAnalyzed"] >= len(user_code)
    assert_only_refused(
        [f"{Path(d['file']).name}:{d['range']['start']['line'] + 1}: {d['message']}" for d in found],
        [(Path(d["file"]).name, d["range"]["start"]["line"] + 1) for d in found],
    )


def assert_only_refused(errors: list[str], where: list[tuple[str, int]]) -> None:
    """The checker's errors (`where`: file name and line of each) are exactly the refused lines."""
    unexpected = [error for error, (name, _) in zip(errors, where, strict=True) if name != "refused.py"]
    assert unexpected == [], "\n".join(unexpected)
    missed = refused_lines() - {line for name, line in where if name == "refused.py"}
    wrong = [
        error
        for error, (name, line) in zip(errors, where, strict=True)
        if name == "refused.py" and line not in refused_lines()
    ]
    assert (sorted(missed), wrong) == ([], []), "refused lines not reported: " + ", ".join(
        REFUSED.splitlines()[n - 1].strip() for n in sorted(missed)
    )
