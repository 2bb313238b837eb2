"""mjasync: the asyncio-native client for hosted Midjourney APIs.

```python
import mjasync

async with mjasync.Client() as mj:  # MJASYNC_API_KEY, MJASYNC_BASE_URL from the environment
    grid = await mj.imagine("Lamborghini speeds inside a volcano")
```
"""

from __future__ import annotations

from ._batch import Outcome as Outcome
from ._batch import Outcomes as Outcomes
from ._batch import UnconfirmedSubmit as UnconfirmedSubmit
from ._client import DEFAULT_MAX_DOWNLOAD_BYTES as DEFAULT_MAX_DOWNLOAD_BYTES
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
from ._job import TaskUpdates as TaskUpdates
from ._limiter import JobLimiter as JobLimiter
from ._limiter import LimiterStatistics as LimiterStatistics
from ._models.params import PromptParams as PromptParams
from ._models.results import DescribeResult as DescribeResult
from ._models.results import EditsResult as EditsResult
from ._models.results import ErrorDetail as ErrorDetail
from ._models.results import ImagineResult as ImagineResult
from ._models.results import Result as Result
from ._models.results import SeedResult as SeedResult
from ._models.results import ShortenResult as ShortenResult
from ._models.results import TranslateResult as TranslateResult
from ._models.results import VideoResult as VideoResult
from ._models.task import TaskBatch as TaskBatch
from ._models.task import TaskRecord as TaskRecord
from ._models.task import TaskState as TaskState
from ._stream import JobStream as JobStream
from ._types import NOT_GIVEN as NOT_GIVEN
from ._types import BlendDimension as BlendDimension
from ._types import Mode as Mode
from ._types import NotGiven as NotGiven
from ._types import PanDirection as PanDirection
from ._types import VideoMode as VideoMode
from ._types import VideoResolution as VideoResolution
from ._types import WaitVia as WaitVia
from .webhooks import ReceiverStatistics as ReceiverStatistics
from .webhooks import WebhookReceiver as WebhookReceiver

__all__ = [
    "ActionNotAvailableError",
    "AmbiguousSubmitError",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BlendDimension",
    "Client",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DescribeResult",
    "EditsResult",
    "ErrorDetail",
    "GatewayTimeoutError",
    "ImagineResult",
    "InvalidRequestError",
    "Job",
    "JobFailedError",
    "JobLimiter",
    "JobStream",
    "LimiterStatistics",
    "Limits",
    "LineTooLongError",
    "MalformedLineError",
    "MJError",
    "Mode",
    "ModerationError",
    "NOT_GIVEN",
    "NotFoundError",
    "NotGiven",
    "Outcome",
    "Outcomes",
    "PanDirection",
    "PermissionDeniedError",
    "PollPolicy",
    "PromptParams",
    "QuotaExceededError",
    "RateLimitError",
    "ReceiverStatistics",
    "ResponseDecodeError",
    "Result",
    "RetryPolicy",
    "SeedResult",
    "ServerError",
    "ShortenResult",
    "StreamError",
    "StreamInterruptedError",
    "TaskBatch",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskRecord",
    "TaskState",
    "TaskUpdates",
    "Timeouts",
    "TranslateResult",
    "UnconfirmedSubmit",
    "UnsupportedFeatureError",
    "VideoMode",
    "VideoResolution",
    "VideoResult",
    "WaitTimeoutError",
    "WaitVia",
    "WebhookReceiver",
]

# Show public classes as `mjasync.X`, not as the private module they live in.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("mjasync."):
        try:
            _obj.__module__ = "mjasync"
        except (AttributeError, TypeError):  # pragma: no cover - some builtins refuse
            pass
del _name, _obj


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("mjasync")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
