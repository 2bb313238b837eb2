"""Mapping layer: where a job asks its provider to send callbacks (a `WebhookReceiver`'s address)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CallbackTarget"]


@dataclass(frozen=True)
class CallbackTarget:
    """The URL a provider should POST a job's callbacks to, and the secret it should send back.

    `progress` asks for a callback at each progress step too (AceData sends those for streamed jobs
    anyway; GoAPI's `notify_progress`).
    """

    url: str
    secret: str
    progress: bool = False

    def __repr__(self) -> str:
        return f"CallbackTarget(url={self.url!r}, secret='***', progress={self.progress})"
