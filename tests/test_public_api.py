"""The public face: exports are pinned, show their public path, and import nothing heavy."""

from __future__ import annotations

import subprocess
import sys
import types

import msgspec
import pytest

import mjasync
import mjasync.redis
import mjasync.types

#: What user code writes most: the client, its settings, the jobs it returns, the receiver, the
#: errors, and the result of the most common call. A change here is a change of the public API.
TOP_LEVEL = {
    "ActionNotAvailableError",
    "AmbiguousSubmitError",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BannedPromptError",
    "Client",
    "GatewayTimeoutError",
    "ImagineResult",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "Limits",
    "LineTooLongError",
    "MalformedLineError",
    "MJError",
    "ModerationError",
    "NOT_GIVEN",
    "NotFoundError",
    "NotGiven",
    "PermissionDeniedError",
    "PollPolicy",
    "PromptParams",
    "QuotaExceededError",
    "RateLimitError",
    "ResponseDecodeError",
    "RetryPolicy",
    "ServerError",
    "StreamError",
    "StreamInterruptedError",
    "TaskHandle",
    "TaskNotFoundError",
    "Timeouts",
    "UnsupportedFeatureError",
    "WaitTimeoutError",
    "WebhookReceiver",
}
#: The Literal aliases arguments take, and the data the client hands back.
TYPES = {
    "BlendDimension",
    "ClientStatistics",
    "DescribeResult",
    "EditsJob",
    "EditsResult",
    "EditsUpdate",
    "ErrorDetail",
    "Failed",
    "GridIndex",
    "ImagineHandle",
    "ImagineJob",
    "ImagineResult",
    "ImagineUpdate",
    "JobStream",
    "Limiter",
    "LimiterStatistics",
    "Mode",
    "Outcome",
    "Outcomes",
    "PanDirection",
    "ProviderName",
    "ReceiverStatistics",
    "SeedResult",
    "ShortenResult",
    "Succeeded",
    "TaskRecord",
    "TaskState",
    "TranslateResult",
    "UnconfirmedSubmit",
    "VideoIndex",
    "VideoJob",
    "VideoMode",
    "VideoResolution",
    "VideoResult",
    "VideoUpdate",
    "WaitVia",
    "ZoomFactor",
}


#: `mjasync.redis` (the `redis` extra): scale-out on Redis.
REDIS = {
    "CoordinatorError",
    "CoordinatorUnavailableError",
    "ErrorInfo",
    "QueuedJob",
    "RunDataLostError",
    "RunOutcome",
    "RunQueue",
    "RunStatus",
    "SharedLimits",
    "SharedStatistics",
    "Worker",
    "WorkerEvent",
    "WorkerStatistics",
}


@pytest.mark.parametrize(
    ("module", "names"),
    [(mjasync, TOP_LEVEL), (mjasync.types, TYPES), (mjasync.redis, REDIS)],
    ids=["top", "types", "redis"],
)
def test_exports_are_exactly_the_pinned_names(module: types.ModuleType, names: set[str]) -> None:
    """`__all__` is sorted case-insensitively, holds exactly the pinned names, and each resolves."""
    exported: list[str] = module.__all__
    assert exported == sorted(exported, key=str.casefold)
    assert set(exported) == names
    for name in exported:
        assert hasattr(module, name), name


def test_the_face_is_about_forty_names() -> None:
    """The top level stays small: the rest is in `mjasync.types`, and internals are in neither."""
    assert 30 <= len(mjasync.__all__) <= 45
    internals = {"JobLimiter", "TaskUpdates", "DEFAULT_MAX_DOWNLOAD_BYTES", "TaskBatch", "Result"}
    assert internals.isdisjoint(mjasync.__all__)
    assert internals.isdisjoint(mjasync.types.__all__)


def test_public_classes_show_their_public_path() -> None:
    """Classes print as mjasync.X or mjasync.types.X, never as the private module they live in, and
    a name in both places is one class."""
    for module in (mjasync, mjasync.types):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type):
                home = "mjasync.types" if name in TYPES else "mjasync"
                assert obj.__module__ == home, name
                assert getattr(sys.modules[home], name) is obj
    assert mjasync.ImagineResult is mjasync.types.ImagineResult


def test_structs_still_decode_after_the_module_rename() -> None:
    """Renaming __module__ does not break msgspec's annotation lookup (generics included)."""
    record = msgspec.json.decode(
        b'{"id": "t", "response": {"progress": 50, "actions": []}}',
        type=mjasync.types.TaskRecord[mjasync.types.ImagineUpdate],
    )
    assert isinstance(record.response, mjasync.types.ImagineUpdate) and record.response.progress == 50


def test_every_error_derives_from_the_single_root() -> None:
    """One hierarchy with a single root."""
    errors = [getattr(mjasync, n) for n in mjasync.__all__ if n.endswith("Error")]
    assert len(errors) >= 20
    assert all(issubclass(e, mjasync.MJError) for e in errors)


def test_import_pulls_in_neither_the_cli_nor_the_extras() -> None:
    """`import mjasync` loads no CLI, emulator, Redis client, Pillow or rich (a subprocess sees a clean interpreter)."""
    code = (
        "import sys, mjasync; "
        "bad = [m for m in ('PIL', 'rich', 'redis', 'mjasync.cli', 'mjasync.emulator', 'mjasync.redis') "
        "if m in sys.modules]; "
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
    """`mjasync.types.UnconfirmedSubmit` (in `Outcomes.unconfirmed`) holds index, request and sent_at, frozen."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(mjasync.types.UnconfirmedSubmit)]
    assert fields == ["index", "request", "sent_at"]
    job = mjasync.Client(api_key="k" * 16, base_url="http://127.0.0.1:9").imagine("a cat")
    request = job.request
    job.close()  # built for its request only
    entry = mjasync.types.UnconfirmedSubmit(index=3, request=request, sent_at=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.index = 4  # type: ignore[misc]
    assert issubclass(mjasync.TaskNotFoundError, mjasync.APIError)
