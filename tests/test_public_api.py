"""The public face: exports are complete and sorted, show as `mjasync.X`, and import nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

import mjasync


def test_all_is_sorted_and_every_name_exists() -> None:
    """__all__ is sorted case-insensitively and each name is importable from mjasync."""
    assert mjasync.__all__ == sorted(mjasync.__all__, key=str.casefold)
    for name in mjasync.__all__:
        assert hasattr(mjasync, name), name


def test_public_classes_show_the_package_name() -> None:
    """Classes print as mjasync.X, not as the private module they live in."""
    for name in mjasync.__all__:
        obj = getattr(mjasync, name)
        if isinstance(obj, type):
            assert obj.__module__ == "mjasync", name


def test_structs_still_decode_after_the_module_rename() -> None:
    """Renaming __module__ does not break msgspec's annotation lookup (generics included)."""
    record = msgspec.json.decode(
        b'{"id": "t", "response": {"progress": 50, "actions": []}}',
        type=mjasync.TaskRecord[mjasync.ImagineResult],
    )
    assert isinstance(record.response, mjasync.ImagineResult) and record.response.progress == 50


def test_every_error_derives_from_the_single_root() -> None:
    """One hierarchy with a single root."""
    errors = [getattr(mjasync, n) for n in mjasync.__all__ if n.endswith("Error")]
    assert len(errors) >= 20
    assert all(issubclass(e, mjasync.MJError) for e in errors)


def test_import_pulls_in_neither_the_cli_nor_the_extras() -> None:
    """`import mjasync` loads no CLI, emulator, Pillow or rich (a subprocess sees a clean interpreter)."""
    code = (
        "import sys, mjasync; "
        "bad = [m for m in ('PIL', 'rich', 'mjasync.cli', 'mjasync.emulator') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_version_comes_from_the_package_metadata() -> None:
    """mjasync.__version__ is the installed version."""
    from importlib.metadata import version

    assert mjasync.__version__ == version("mjasync")


def test_unconfirmed_submit_is_a_frozen_record_of_a_sent_job() -> None:
    """`mjasync.UnconfirmedSubmit` (in `Outcomes.unconfirmed`) holds index, request and sent_at, frozen."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(mjasync.UnconfirmedSubmit)]
    assert fields == ["index", "request", "sent_at"]
    job = mjasync.Client(api_key="k" * 16, base_url="http://127.0.0.1:9").imagine("a cat")
    request = job.request
    job.close()  # built for its request only
    entry = mjasync.UnconfirmedSubmit(index=3, request=request, sent_at=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.index = 4  # type: ignore[misc]
    assert issubclass(mjasync.TaskNotFoundError, mjasync.APIError)
