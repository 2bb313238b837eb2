"""Leaf layer: type aliases and the NOT_GIVEN sentinel shared by every layer."""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = [
    "NOT_GIVEN",
    "BlendDimension",
    "Mode",
    "NotGiven",
    "PanDirection",
    "VideoMode",
    "VideoResolution",
    "WaitVia",
]

#: Midjourney speed modes for images.
Mode = Literal["fast", "relax", "turbo"]
#: Videos have no relax mode.
VideoMode = Literal["fast", "turbo"]
VideoResolution = Literal["480p", "720p"]
PanDirection = Literal["left", "right", "up", "down"]
#: The shape of a blend: 1:1, 2:3 or 3:2.
BlendDimension = Literal["square", "portrait", "landscape"]
#: How `await job` gets its result: a progress stream, submit-then-poll, one synchronous long wait, or
#: submit-then-await the provider's callback (a `WebhookReceiver`), polling only if it is late.
WaitVia = Literal["stream", "poll", "sync", "callback"]


class NotGiven(enum.Enum):
    """Marks a per-call option the caller left out, so that `None` can still mean "nothing"."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> Literal[False]:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN
