"""The batch CLI's pure parts: which errors end a job, how an ending is written, the prompt limit on input."""

from __future__ import annotations

from pathlib import Path

import pytest

from mjasync import (
    AmbiguousSubmitError,
    APIConnectionError,
    AuthenticationError,
    JobFailedError,
    ModerationError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    WaitTimeoutError,
)
from mjasync._exceptions import TaskNotFoundError
from mjasync._redact import hold
from mjasync.cli._batch_input import InputError, load_jobs
from mjasync.cli._batch_run import _error_info, ends_job


@pytest.mark.parametrize(
    "error",
    [
        JobFailedError("failed"),
        AmbiguousSubmitError("2 match"),
        ModerationError("banned", status=403),
        ResponseDecodeError("undecodable receipt: nested too deeply", status=200),
        TaskNotFoundError("no record of task t", task_id="t"),
    ],
    ids=type,
)
def test_errors_a_rerun_cannot_change_end_the_job(error: Exception) -> None:
    """A failure, an ambiguous submit, a 4xx, an undecodable answer, an unknown task id: the job ends."""
    assert ends_job(error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        APIConnectionError("reset", may_have_reached_server=True),
        ServerError("down", status=503),
        AuthenticationError("bad key", status=401),
        RateLimitError("slow down", status=429),
        WaitTimeoutError("deadline", task_id="t"),
    ],
    ids=type,
)
def test_errors_a_rerun_may_get_past_leave_the_job_for_it(error: Exception) -> None:
    assert not ends_job(error)  # type: ignore[arg-type]


def test_an_unknown_journalled_task_says_the_run_may_be_resumed_against_another_server() -> None:
    """Resumed from the journal, a TaskNotFoundError's line says why that may be; in this run's own wait it does not."""
    error = TaskNotFoundError("the provider has no record of task t-1", task_id="t-1")
    resumed = _error_info(error, resumed=True)
    assert resumed.type == "TaskNotFoundError"
    assert "does not know the task id the journal recorded" in resumed.message
    assert "another server" in resumed.message and "t-1" in resumed.message
    assert _error_info(error).message == str(error)


def test_an_error_line_carries_no_held_secret() -> None:
    """A message or code echoing the API key is written with the key redacted."""

    class Owner:
        pass

    owner, secret = Owner(), "sk-unit-secret-5e8d1c"
    hold(owner, secret)
    info = _error_info(ResponseDecodeError(f"bad body {{'key': '{secret}'}}", code=secret, status=200))
    assert secret not in info.message and secret not in (info.code or "")
    del owner


@pytest.mark.parametrize(
    ("name", "text", "line"), [("p.txt", "ok\n{}\n", 2), ("j.jsonl", '{{"prompt": "{}"}}\n', 1)]
)
def test_a_prompt_over_the_limit_is_refused_naming_its_line_without_echoing_it(
    tmp_path: Path, name: str, text: str, line: int
) -> None:
    source = tmp_path / name
    source.write_text(text.format("z" * 1_000_000))
    with pytest.raises(InputError) as caught:
        load_jobs(source)
    message = str(caught.value)
    assert message.startswith(f"{source}:{line}: ")
    assert "1000000 characters" in message and "--max-prompt-chars" in message
    assert "zzzz" not in message
    source.write_text(text.format("z" * 7000))
    assert load_jobs(source, max_prompt_chars=7000)[-1].prompt == "z" * 7000
