"""The client's settings are one frozen, checked struct; the client itself leaves HTTP to the transport."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

from mjasync._config import ClientSettings, Timeouts
from mjasync._exceptions import InvalidRequestError

PACKAGE = Path(__file__).resolve().parents[2] / "mjasync"


def settings(**changes: object) -> ClientSettings:
    return ClientSettings(provider="acedata", max_prompt_chars=6000, **changes)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    made = settings()
    with pytest.raises(AttributeError):
        made.wait_via = "poll"  # type: ignore[misc]


def test_a_changed_copy_keeps_the_rest() -> None:
    made = settings(timeouts=Timeouts(read=5.0), default_headers={"x-team": "a"})
    changed = msgspec.structs.replace(made, wait_via="poll")
    assert (changed.wait_via, changed.timeouts.read, changed.default_headers) == (
        "poll",
        5.0,
        {"x-team": "a"},
    )
    assert made.wait_via == "stream"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wait_via": "carrier-pigeon"}, "wait_via must be one of"),
        ({"max_line_bytes": 1023}, "max_line_bytes must be an int of at least 1024"),
        ({"max_response_bytes": True}, "max_response_bytes must be an int"),
        ({"max_response_bytes": 4096.0}, "max_response_bytes must be an int"),
    ],
)
def test_careless_settings_are_refused_when_made_and_when_changed(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        settings(**changes)
    with pytest.raises(InvalidRequestError, match=message):
        msgspec.structs.replace(settings(), **changes)


@pytest.mark.parametrize("module", ["_client.py", "_requests.py"])
def test_the_client_and_its_request_builders_leave_http_to_the_transport(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "aiohttp"}
