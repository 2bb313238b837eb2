"""mjasync: the asyncio-native client for hosted Midjourney APIs.

```python
import mjasync

async with mjasync.Client() as mj:  # MJASYNC_API_KEY, MJASYNC_BASE_URL from the environment
    grid = await mj.imagine("Lamborghini speeds inside a volcano")
```
"""

from __future__ import annotations

from . import types as types
from ._client import Client as Client
from ._config import Limits as Limits
from ._config import PollPolicy as PollPolicy
from ._config import RetryPolicy as RetryPolicy
from ._config import Timeouts as Timeouts
from ._exceptions import ActionNotAvailableError as ActionNotAvailableError
from ._exceptions import AmbiguousSubmitError as AmbiguousSubmitError
from ._exceptions import APIConnectionError as APIConnectionError
from ._exceptions import APIError as APIError
from ._exceptions import APIStatusError as APIStatusError
from ._exceptions import APITimeoutError as APITimeoutError
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BadRequestError as BadRequestError
from ._exceptions import BannedPromptError as BannedPromptError
from ._exceptions import GatewayTimeoutError as GatewayTimeoutError
from ._exceptions import InvalidRequestError as InvalidRequestError
from ._exceptions import JobFailedError as JobFailedError
from ._exceptions import LineTooLongError as LineTooLongError
from ._exceptions import MalformedLineError as MalformedLineError
from ._exceptions import MJError as MJError
from ._exceptions import ModerationError as ModerationError
from ._exceptions import NotFoundError as NotFoundError
from ._exceptions import PermissionDeniedError as PermissionDeniedError
from ._exceptions import QuotaExceededError as QuotaExceededError
from ._exceptions import RateLimitError as RateLimitError
from ._exceptions import ResponseDecodeError as ResponseDecodeError
from ._exceptions import ServerError as ServerError
from ._exceptions import StreamError as StreamError
from ._exceptions import StreamInterruptedError as StreamInterruptedError
from ._exceptions import TaskNotFoundError as TaskNotFoundError
from ._exceptions import UnsupportedFeatureError as UnsupportedFeatureError
from ._exceptions import WaitTimeoutError as WaitTimeoutError
from ._job import Job as Job
from ._job import TaskHandle as TaskHandle
from ._models.params import PromptParams as PromptParams
from ._types import NOT_GIVEN as NOT_GIVEN
from ._types import NotGiven as NotGiven
from .types import ImagineResult as ImagineResult
from .webhooks import WebhookReceiver as WebhookReceiver

# What user code writes: the client, its settings and prompt parameters, the jobs it returns, the
# webhook receiver, every error, and the result of the most common call. The Literal aliases and the
# other data the client hands back are in `mjasync.types`.
__all__ = [
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
]

# Show public classes as `mjasync.X`, not as the private module they live in (those also in
# `mjasync.types`, such as `ImagineResult`, already show as `mjasync.types.X`).
for _name in __all__:
    _obj = globals()[_name]
    if (
        isinstance(_obj, type)
        and _obj.__module__.startswith("mjasync.")
        and _obj.__module__ != "mjasync.types"
    ):
        _obj.__module__ = __name__
del _name, _obj


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("mjasync")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
