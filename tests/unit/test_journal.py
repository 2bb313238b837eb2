"""The batch journal and results file: records, replay, recovery plans, torn lines, the folder lock."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mjasync.cli._journal import (
    JOURNAL_NAME,
    RESULTS_NAME,
    AcceptedRecord,
    AppendLog,
    ErrorInfo,
    FinishedRecord,
    Journal,
    JournalError,
    JournalRecord,
    KeyState,
    Lookup,
    ResultLine,
    Resume,
    RunRecord,
    Skip,
    Submit,
    SubmittingRecord,
    encode_line,
    lock_folder,
    read_ndjson,
    read_results,
    replay,
)

RECORDS = msgspec.json.Decoder(JournalRecord)


def lines_of(path: Path) -> list[dict[str, object]]:
    """Every line of an ndjson file as JSON (each must be complete)."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


# -- plans --------------------------------------------------------------------------------------------


def test_each_state_has_its_recovery_plan() -> None:
    """Finished → skip, accepted → resume its task, only submitting → look up since then, nothing → submit."""
    assert KeyState().plan() == Submit()
    assert KeyState(submitting_at=12.5).plan() == Lookup(12.5)
    assert KeyState(submitting_at=12.5, task_id="t1").plan() == Resume("t1")
    assert KeyState(submitting_at=12.5, task_id="t1", finished=True, ok=False).plan() == Skip()


def test_replay_follows_each_key_through_its_events() -> None:
    """Replay keeps the latest submit time and task id per key; finished is final; run records are ignored."""
    records: list[JournalRecord] = [
        RunRecord(at=1.0, pid=10, input="p.txt"),
        SubmittingRecord(key="a", at=2.0),
        SubmittingRecord(key="b", at=2.5),
        AcceptedRecord(key="a", task_id="ta", at=3.0),
        SubmittingRecord(key="c", at=3.5),
        AcceptedRecord(key="c", task_id="tc", at=4.0),
        FinishedRecord(key="c", ok=True, at=5.0, task_id="tc", image_id="img"),
        SubmittingRecord(key="c", at=6.0),  # after finished: ignored
    ]
    states = replay(records)
    assert states["a"].plan() == Resume("ta")
    assert states["b"].plan() == Lookup(2.5)
    assert states["c"].plan() == Skip()
    assert (states["c"].ok, states["c"].image_id, states["c"].task_id) == (True, "img", "tc")


def test_a_newer_submit_supersedes_an_older_task_id() -> None:
    """A key submitted again after an accepted record must be looked up from the new submit time."""
    states = replay(
        [
            SubmittingRecord(key="a", at=1.0),
            AcceptedRecord(key="a", task_id="old", at=2.0),
            SubmittingRecord(key="a", at=9.0),
        ]
    )
    assert states["a"].plan() == Lookup(9.0)


def test_a_line_in_results_finishes_a_key_the_journal_left_accepted() -> None:
    """Killed between the results line and the finished record: the key is finished, with the line's image."""
    results = {"a": ResultLine(key="a", ok=True, task_id="ta", image_id="img-a")}
    states = replay(
        [SubmittingRecord(key="a", at=1.0), AcceptedRecord(key="a", task_id="ta", at=2.0)], results
    )
    assert states["a"].plan() == Skip()
    assert (states["a"].ok, states["a"].image_id) == (True, "img-a")
    only_results = replay([], {"b": ResultLine(key="b", ok=False)})
    assert only_results["b"].finished and only_results["b"].ok is False


# -- the journal on disk ------------------------------------------------------------------------------


def test_journal_records_round_trip_through_a_reopen(tmp_path: Path) -> None:
    """What one Journal writes, the next one opened on the folder replays to the same plans."""
    journal = Journal(tmp_path)
    journal.run_started("prompts.txt")
    journal.submitting("a")
    journal.submitting("b")
    journal.accepted("a", "ta")
    journal.accepted("a", "ta")  # the same id again writes nothing
    journal.submitting("c")
    journal.accepted("c", "tc")
    journal.finished(ResultLine(key="c", ok=True, task_id="tc", image_id="ic"))
    journal.close()
    events = [(r["event"], r.get("key")) for r in lines_of(tmp_path / JOURNAL_NAME)]
    assert events == [
        ("run", None),
        ("submitting", "a"),
        ("submitting", "b"),
        ("accepted", "a"),
        ("submitting", "c"),
        ("accepted", "c"),
        ("finished", "c"),
    ]
    again = Journal(tmp_path)
    try:
        assert again.state("a").plan() == Resume("ta")
        assert isinstance(again.state("b").plan(), Lookup)
        assert again.state("c").plan() == Skip()
        assert again.state("never-seen").plan() == Submit()
        assert not again.torn
    finally:
        again.close()


def test_record_lines_carry_the_documented_fields() -> None:
    """Each record encodes as one line with `event` and the fields the docs list."""
    line = encode_line(AcceptedRecord(key="k", task_id="t", at=1.5))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"event": "accepted", "key": "k", "task_id": "t", "at": 1.5}
    assert json.loads(encode_line(SubmittingRecord(key="k", at=2.0))) == {
        "event": "submitting",
        "key": "k",
        "at": 2.0,
    }
    finished = json.loads(encode_line(FinishedRecord(key="k", ok=False, at=3.0)))
    assert finished == {
        "event": "finished",
        "key": "k",
        "ok": False,
        "at": 3.0,
        "task_id": None,
        "image_id": None,
        "line": None,
    }
    error = ErrorInfo(type="ModerationError", message="no", code="forbidden", status=403)
    assert json.loads(encode_line(error)) == {
        "type": "ModerationError",
        "message": "no",
        "code": "forbidden",
        "status": 403,
    }
    assert json.loads(encode_line(ErrorInfo(type="Skipped", message="m"))) == {
        "type": "Skipped",
        "message": "m",
    }


def test_a_torn_last_line_is_ignored_on_read_and_cut_before_the_next_append(tmp_path: Path) -> None:
    """A kill mid-write leaves half a line: reading leaves it out, and opening for append removes it."""
    path = tmp_path / JOURNAL_NAME
    whole = encode_line(SubmittingRecord(key="a", at=1.0))
    path.write_bytes(whole + b'{"event": "accepted", "key": "a", "task_id": "t')
    records, torn = read_ndjson(path, RECORDS)
    assert records == [SubmittingRecord(key="a", at=1.0)]
    assert torn
    journal = Journal(tmp_path)
    assert journal.torn
    assert journal.state("a").plan() == Lookup(1.0)
    journal.accepted("a", "t2")
    journal.close()
    assert [r["event"] for r in lines_of(path)] == ["submitting", "accepted"]


def test_a_complete_record_missing_only_its_newline_counts_as_torn(tmp_path: Path) -> None:
    """Without its newline a line may be cut anywhere, so even one that parses is left out."""
    path = tmp_path / "log.ndjson"
    path.write_bytes(encode_line(SubmittingRecord(key="a", at=1.0)).rstrip(b"\n"))
    assert read_ndjson(path, RECORDS) == ([], True)
    with AppendLog(path) as log:
        assert log.repaired
    assert path.read_bytes() == b""


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    """Only the last line may be torn; a broken earlier line stops the run rather than guess."""
    path = tmp_path / JOURNAL_NAME
    path.write_bytes(
        encode_line(SubmittingRecord(key="a", at=1.0))
        + b"\n"  # blank lines are skipped
        + b'{"event": "exploded", "key": "a"}\n'
        + encode_line(SubmittingRecord(key="b", at=2.0))
    )
    with pytest.raises(JournalError, match=r"journal\.ndjson:3: unreadable line"):
        Journal(tmp_path)


def test_a_missing_file_reads_as_empty_and_is_created_on_open(tmp_path: Path) -> None:
    """No journal yet: no records, nothing torn; opening creates it empty."""
    assert read_ndjson(tmp_path / JOURNAL_NAME, RECORDS) == ([], False)
    Journal(tmp_path).close()
    assert (tmp_path / JOURNAL_NAME).read_bytes() == b""


def test_append_writes_whole_lines_and_refuses_after_close(tmp_path: Path) -> None:
    """Appends land in order, each a whole line; a closed log refuses to write."""
    log = AppendLog(tmp_path / "x.ndjson")
    log.append(b'{"a": 1}\n')
    log.append(b'{"a": 2}\n', sync=False)
    log.close()
    log.close()  # idempotent
    assert lines_of(tmp_path / "x.ndjson") == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match="closed"):
        log.append(b"{}\n")


def test_read_results_keeps_the_first_line_per_key_and_tolerates_a_torn_tail(tmp_path: Path) -> None:
    """results.jsonl is read by key; extra fields are fine; a torn last line is left out."""
    path = tmp_path / RESULTS_NAME
    first = ResultLine(key="a", ok=True, task_id="t1", image_id="i1", images=["images/a.imagine.png"])
    path.write_bytes(
        encode_line(first)
        + b'{"key": "b", "ok": false, "error": {"type": "JobFailedError", "message": "m"}, "extra": 1}\n'
        + encode_line(ResultLine(key="a", ok=False))
        + b'{"key": "c", "o'
    )
    by_key, torn = read_results(path)
    assert torn
    assert set(by_key) == {"a", "b"}
    assert by_key["a"] == first
    assert by_key["b"].error == ErrorInfo(type="JobFailedError", message="m")


# -- results.jsonl repaired from the journal ------------------------------------------------------------


def finished_journal(folder: Path, lines: list[ResultLine]) -> None:
    """A journal in which each of `lines` finished (written through `Journal.finished`)."""
    journal = Journal(folder)
    for line in lines:
        journal.submitting(line.key)
        if line.task_id:
            journal.accepted(line.key, line.task_id)
        journal.finished(line)
    journal.close()


def test_a_finished_record_carries_a_copy_of_its_results_line(tmp_path: Path) -> None:
    """The finished record holds the whole line, so a lost line can be written again exactly."""
    line = ResultLine(
        key="k", ok=True, task_id="t", image_id="i", image_url="https://x/i.png", actions=["u1"]
    )
    finished_journal(tmp_path, [line])
    (record,) = [r for r in lines_of(tmp_path / JOURNAL_NAME) if r["event"] == "finished"]
    assert msgspec.convert(record["line"], ResultLine) == line
    assert (record["ok"], record["task_id"], record["image_id"]) == (True, "t", "i")


def test_lines_lost_from_results_are_written_again_from_the_journal(tmp_path: Path) -> None:
    """results.jsonl cut short (mid-line): every finished key gets back its exact line, and only once."""
    error = ErrorInfo(type="JobFailedError", message="banned", code="forbidden", status=403)
    lines = [
        ResultLine(key="a", ok=True, task_id="ta", image_id="ia", images=["images/a.imagine.png"]),
        ResultLine(key="b", ok=False, task_id="tb", error=error),
        ResultLine(key="c", ok=True, task_id="tc", image_id="ic"),
    ]
    finished_journal(tmp_path, lines)
    path = tmp_path / RESULTS_NAME
    whole = b"".join(encode_line(line) for line in lines)
    path.write_bytes(whole[: len(encode_line(lines[0])) + 10])  # a's line, then 10 bytes of b's
    by_key, torn = read_results(path)
    assert torn and set(by_key) == {"a"}
    with AppendLog(path) as results:
        journal = Journal(tmp_path, by_key)
        try:
            assert journal.restore_results(results) == ["b", "c"]
            assert journal.restore_results(results) == []  # once
            assert all(journal.state(line.key).plan() == Skip() for line in lines)
        finally:
            journal.close()
    assert read_results(path) == ({line.key: line for line in lines}, False)
    with AppendLog(path) as results:
        again = Journal(tmp_path, read_results(path)[0])
        assert again.restore_results(results) == []  # nothing is lost any more
        again.close()


def test_a_finished_record_without_a_copy_rebuilds_what_it_holds(tmp_path: Path) -> None:
    """An older journal's finished record (no `line`): the rebuilt line says ok, ids, or that the error was lost."""
    records = [
        FinishedRecord(key="ok", ok=True, at=1.0, task_id="t1", image_id="i1"),
        FinishedRecord(key="bad", ok=False, at=2.0),
    ]
    (tmp_path / JOURNAL_NAME).write_bytes(b"".join(encode_line(r) for r in records))
    with AppendLog(tmp_path / RESULTS_NAME) as results:
        journal = Journal(tmp_path, {})
        assert journal.restore_results(results) == ["ok", "bad"]
        journal.close()
    by_key, _ = read_results(tmp_path / RESULTS_NAME)
    assert by_key["ok"] == ResultLine(key="ok", ok=True, task_id="t1", image_id="i1", at=1.0)
    assert by_key["bad"].error is not None and by_key["bad"].error.type == "LineLost"


def test_every_task_id_of_journal_and_results_is_listed_oldest_first(tmp_path: Path) -> None:
    """`task_ids` names every task some key holds, superseded ones too, each once, so none is adopted twice."""
    records = [
        SubmittingRecord(key="a", at=1.0),
        AcceptedRecord(key="a", task_id="t-old", at=2.0),
        SubmittingRecord(key="a", at=3.0),  # supersedes t-old, which is still a task of this run
        AcceptedRecord(key="a", task_id="t-a", at=4.0),
        FinishedRecord(key="b", ok=True, at=5.0, task_id="t-b"),
        AcceptedRecord(key="c", task_id="t-a", at=6.0),
    ]
    (tmp_path / JOURNAL_NAME).write_bytes(b"".join(encode_line(r) for r in records))
    journal = Journal(tmp_path, {"r": ResultLine(key="r", ok=True, task_id="t-r")})
    journal.close()
    assert journal.task_ids == ["t-r", "t-old", "t-a", "t-b"]


# -- a kill at any byte -------------------------------------------------------------------------------


_keys = st.sampled_from(["a", "b", "c", "L1-0123456789ab", "id with ünïcode"])
_times = st.floats(min_value=0, max_value=2e9, allow_nan=False)
_records = st.one_of(
    st.builds(SubmittingRecord, key=_keys, at=_times),
    st.builds(AcceptedRecord, key=_keys, task_id=st.uuids().map(str), at=_times),
    st.builds(FinishedRecord, key=_keys, ok=st.booleans(), at=_times, task_id=st.none() | st.just("t")),
)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(_records, max_size=12), cut=st.integers(min_value=0, max_value=2000))
def test_a_kill_at_any_byte_leaves_a_prefix_of_the_records(
    tmp_path_factory: pytest.TempPathFactory, records: list[JournalRecord], cut: int
) -> None:
    """Cut the file at any byte: reading gives a prefix of what was written, and appends after a reopen stay readable."""
    folder = tmp_path_factory.mktemp("journal")
    data = b"".join(encode_line(r) for r in records)
    (folder / JOURNAL_NAME).write_bytes(data[: min(cut, len(data))])
    read, _ = read_ndjson(folder / JOURNAL_NAME, RECORDS)
    assert read == records[: len(read)]
    journal = Journal(folder)
    journal.submitting("after")
    journal.close()
    again, torn = read_ndjson(folder / JOURNAL_NAME, RECORDS)
    assert not torn
    assert again == [*read, again[-1]]
    assert again[-1] == SubmittingRecord(key="after", at=again[-1].at)  # type: ignore[union-attr]
    assert replay(again)["after"].plan() == Lookup(again[-1].at)  # type: ignore[union-attr]


# -- the folder lock ----------------------------------------------------------------------------------


def test_only_one_run_at_a_time_may_hold_a_folder(tmp_path: Path) -> None:
    """A second lock on the same folder fails while the first is held, and succeeds once it is released."""
    with lock_folder(tmp_path):
        with pytest.raises(JournalError, match="another mjasync batch is running"):
            with lock_folder(tmp_path):
                pass
    with lock_folder(tmp_path):
        pass
