"""Pure layer: an error as it is written down when a job ends without a result.

`results.jsonl` (the one-process batch) and a distributed run's outcomes (`mjasync.redis`) keep the same
record: the error's class name, its message, and what the provider said (code, HTTP status). Nothing
of the traceback, and no held secret: the message and code pass through `_redact`.
"""

from __future__ import annotations

import msgspec

from .._redact import redact

__all__ = ["ErrorInfo", "error_info"]


class ErrorInfo(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """Why a job ended without a result: the error's class name and message, and the provider's code and status."""

    type: str
    message: str
    code: str | None = None
    status: int | None = None


def error_info(error: BaseException, message: str | None = None) -> ErrorInfo:
    """`error` as written down (`message` instead of its own, when given), redacted and cut short."""
    code = getattr(error, "code", None)
    return ErrorInfo(
        type=type(error).__name__,
        message=redact(str(error) if message is None else message, excerpt=True),
        code=redact(str(code), excerpt=True) if code is not None else None,
        status=getattr(error, "status", None),
    )
