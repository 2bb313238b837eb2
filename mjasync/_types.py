"""Leaf layer: type aliases and the NOT_GIVEN sentinel shared by every layer."""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["NOT_GIVEN", "Mode", "NotGiven", "PanDirection", "VideoMode", "VideoResolution", "WaitVia"]

#: Midjourney speed modes for images.
Mode = Literal["fast", "relax", "turbo"]
#: Videos have no relax mode.
VideoMode = Literal["fast", "turbo"]
VideoResolution = Literal["480p", "720p"]
PanDirection = Literal["left", "right", "up", "down"]
#: How `await job` gets its result: an ndjson stream, submit-then-poll, or one synchronous long wait.
WaitVia = Literal["stream", "poll", "sync"]


class NotGiven(enum.Enum):
    """Marks a per-call option the caller left out, so that `None` can still mean "nothing"."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN
