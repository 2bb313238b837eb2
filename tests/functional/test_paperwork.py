"""The package's paperwork as a user meets it: `mjasync --version`, every command's `--help`, the
licence in what is published, the project URLs in the installed metadata, and the changelog's version.

Help and version are read in-process through `mjasync.cli.main` (fast), and once each through the
installed console script and `python -m mjasync.emulator` in subprocesses (what a user types). The
wheel is built once per module with pip (`pip wheel --no-deps`); every subprocess has a bounded
timeout, a hang detector and not a speed check.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib.metadata import metadata, version
from pathlib import Path

import pytest

from mjasync.cli import DOCS_URL, main

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a build or a command may take before it counts as hung (pip's build fetches hatchling).
TIMEOUT = 600
PROVIDERS_EMULATED = ("AceData", "GoAPI", "midjourney-proxy")

#: Each command as typed after `mjasync`, and the program name its usage must show.
COMMANDS = {
    (): "mjasync",
    ("demo",): "mjasync demo",
    ("batch",): "mjasync batch",
    ("batch", "status"): "mjasync batch status",
    ("batch", "results"): "mjasync batch results",
    ("worker",): "mjasync worker",
    ("emulator",): "mjasync emulator",
}


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `mjasync ARGV` in-process; return its exit status and stdout (`--help` exits via SystemExit)."""
    try:
        status: int | str | None = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    return (0 if status is None else int(status)), captured.out


def console_script() -> str:
    """The `mjasync` console script installed beside this interpreter."""
    script = Path(sysconfig.get_path("scripts")) / "mjasync"
    assert script.exists(), f"{script} is missing: install the project (pip install -e '.[test]')"
    return str(script)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run *command* in the repository's root; killed if it outlives TIMEOUT."""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)


# --- --version ----------------------------------------------------------------------------------


def test_version_prints_the_package_and_python_versions(capsys: pytest.CaptureFixture[str]) -> None:
    """`mjasync --version` prints `mjasync <installed version> (Python <x.y.z>)` and exits 0."""
    status, out = run_main(capsys, "--version")
    assert status == 0
    assert out == f"mjasync {version('mjasync')} (Python {platform.python_version()})\n"


def test_version_from_the_console_script() -> None:
    """The same line from the installed `mjasync` script, as a user runs it."""
    done = run(console_script(), "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"mjasync {version('mjasync')} (Python {platform.python_version()})\n"


# --- --help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: " ".join(c) or "mjasync")
def test_every_command_helps_under_its_own_name(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    """`mjasync ... --help` exits 0, shows the command's real program name in its usage, and describes
    the command in a paragraph of its own before the options."""
    status, out = run_main(capsys, *command, "--help")
    assert status == 0
    prog = COMMANDS[command]
    assert out.startswith(f"usage: {prog} ["), out.splitlines()[0]
    assert "python -m" not in out
    paragraphs = out.split("\n\n")
    assert not paragraphs[1].startswith(("options:", "positional arguments:")), (
        f"`{prog} --help` has no description"
    )


def test_the_top_level_help_lists_every_command_and_the_docs(capsys: pytest.CaptureFixture[str]) -> None:
    """`mjasync --help` names each subcommand and the documentation site named in the metadata."""
    _, out = run_main(capsys, "--help")
    for command in ("demo", "batch", "worker", "emulator", "--version"):
        assert re.search(rf"^\s+{re.escape(command)}\s", out, re.MULTILINE), command
    assert f"Documentation: {DOCS_URL}" in out
    assert f"Documentation, {DOCS_URL}" in (metadata("mjasync").get_all("Project-URL") or [])


def test_the_emulator_help_names_every_provider_it_emulates(capsys: pytest.CaptureFixture[str]) -> None:
    """`mjasync emulator --help` says it stands in for all three providers, and which token it accepts."""
    from mjasync.emulator import DEFAULT_TOKEN

    _, out = run_main(capsys, "emulator", "--help")
    description = " ".join(out.split("\n\n")[1].split())
    for provider in PROVIDERS_EMULATED:
        assert provider in description, provider
    assert f"the token {DEFAULT_TOKEN}" in description


def test_the_emulator_module_keeps_its_own_name() -> None:
    """`python -m mjasync.emulator --help` still works, under the name it was run by."""
    done = run(sys.executable, "-m", "mjasync.emulator", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m mjasync.emulator [")


def test_a_usage_error_names_the_command_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option to `mjasync emulator` is reported under `mjasync emulator`, with exit status 2."""
    with pytest.raises(SystemExit) as exited:
        main(["emulator", "--no-such-option"])
    assert exited.value.code == 2
    assert "mjasync emulator: error: unrecognized arguments: --no-such-option" in capsys.readouterr().err


# --- the licence in what is published -------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel --no-deps .` builds from this tree (once per module)."""
    out = tmp_path_factory.mktemp("wheel")
    done = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-w",
        str(out),
        ".",
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("mjasync-*.whl")
    return built


def test_the_license_is_mit() -> None:
    """The repository's LICENSE is the MIT licence the metadata names."""
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert metadata("mjasync").get("License-Expression", metadata("mjasync").get("License")) == "MIT"


def test_the_wheel_carries_the_license(wheel: Path) -> None:
    """The wheel holds LICENSE, word for word, where its METADATA's License-File points."""
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist() if ".dist-info/" in n)
        fields = archive.read(f"{dist_info}/METADATA").decode()
        assert "License-Expression: MIT" in fields.splitlines()
        assert "License-File: LICENSE" in fields.splitlines()
        carried = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert carried == (ROOT / "LICENSE").read_text(encoding="utf-8")


def test_the_sdist_is_told_to_carry_the_paperwork() -> None:
    """pyproject.toml puts LICENSE (and the changelog and contributing guide) into the sdist."""
    # Read as text: tomllib is 3.11+, and the project supports 3.10.
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license-files = \["LICENSE"\]$', text, re.MULTILINE)
    found = re.search(r"^\[tool\.hatch\.build\.targets\.sdist\]\ninclude = (\[.*\])$", text, re.MULTILINE)
    assert found, "no one-line include list under [tool.hatch.build.targets.sdist]"
    include = json.loads(found.group(1))  # a TOML array of basic strings reads as JSON
    for name in ("LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "README.md"):
        assert name in include, name


@pytest.mark.skipif(
    importlib.util.find_spec("hatchling") is None,
    reason="hatchling is not installed in this environment, so the sdist is not built here "
    "(test_the_sdist_is_told_to_carry_the_paperwork checks its configuration)",
)
def test_the_sdist_carries_the_license(tmp_path: Path) -> None:
    """The sdist hatchling builds holds LICENSE, the changelog and the contributing guide."""
    done = run(sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (built,) = tmp_path.glob("mjasync-*.tar.gz")
    top = built.name.removesuffix(".tar.gz")  # every member sits under mjasync-<version>/
    with tarfile.open(built) as archive:
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
        member = archive.extractfile(f"{top}/LICENSE")
        assert member is not None
        carried = member.read().decode()
    assert {"LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", "pyproject.toml"} <= names
    assert carried == (ROOT / "LICENSE").read_text(encoding="utf-8")


# --- metadata and changelog ---------------------------------------------------------------------


def test_the_installed_metadata_names_every_project_url() -> None:
    """Documentation, Source, Issues and Changelog, each an https address."""
    urls = dict(entry.split(", ", 1) for entry in metadata("mjasync").get_all("Project-URL") or [])
    assert {"Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    for label in ("Documentation", "Source", "Issues", "Changelog"):
        assert urls[label].startswith("https://"), (label, urls[label])
    assert urls["Changelog"].endswith("/CHANGELOG.md")


def test_the_changelog_is_at_the_package_version() -> None:
    """CHANGELOG.md (Keep a Changelog): `[Unreleased]` first, then the newest release, which is the
    package's version, dated; every version heading has its link reference."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert headings[0] == ("Unreleased", "")
    newest, date = headings[1]
    assert newest == version("mjasync")
    assert date, "the newest release has no date"
    assert "### Added" in text
    for name, _ in headings:
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.MULTILINE), name


def test_contributing_names_the_commands_ci_runs() -> None:
    """CONTRIBUTING.md gives the lint, type and test commands `.ci/run` runs, word for word."""
    guide = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r'^"\$venv/bin/python" -m ((?:ruff|mypy|pytest) .+)$', ci, re.MULTILINE)
    assert len(commands) >= 4, commands
    for command in commands:
        assert command in guide, command
