"""The types of mjasync's public face: the `Literal` aliases its arguments take and the data it hands back.

```python
from mjasync.types import ImagineResult, Mode

async def grid(mj: mjasync.Client, prompt: str, mode: Mode = "fast") -> ImagineResult:
    return await mj.imagine(prompt, mode=mode)
```

Jobs that report progress have two types: the update a stream yields (`ImagineUpdate`, every field
optional) and the final result (`ImagineResult`, a subclass whose `image_url` is a `str`).
`ImagineResult` is also at the top level, as `mjasync.ImagineResult`, being what most calls return.
"""

from __future__ import annotations

from ._batch import Failed as Failed
from ._batch import Outcome as Outcome
from ._batch import Outcomes as Outcomes
from ._batch import Succeeded as Succeeded
from ._batch import UnconfirmedSubmit as UnconfirmedSubmit
from ._engine import ClientStatistics as ClientStatistics
from ._job import EditsJob as EditsJob
from ._job import ImagineHandle as ImagineHandle
from ._job import ImagineJob as ImagineJob
from ._job import VideoJob as VideoJob
from ._limiter import Limiter as Limiter
from ._limiter import LimiterStatistics as LimiterStatistics
from ._models.results import DescribeResult as DescribeResult
from ._models.results import EditsResult as EditsResult
from ._models.results import EditsUpdate as EditsUpdate
from ._models.results import ErrorDetail as ErrorDetail
from ._models.results import ImagineResult as ImagineResult
from ._models.results import ImagineUpdate as ImagineUpdate
from ._models.results import SeedResult as SeedResult
from ._models.results import ShortenResult as ShortenResult
from ._models.results import TranslateResult as TranslateResult
from ._models.results import VideoResult as VideoResult
from ._models.results import VideoUpdate as VideoUpdate
from ._models.task import TaskRecord as TaskRecord
from ._models.task import TaskState as TaskState
from ._providers import ProviderName as ProviderName
from ._requests import GridIndex as GridIndex
from ._requests import VideoIndex as VideoIndex
from ._requests import ZoomFactor as ZoomFactor
from ._stream import JobStream as JobStream
from ._types import BlendDimension as BlendDimension
from ._types import Mode as Mode
from ._types import PanDirection as PanDirection
from ._types import VideoMode as VideoMode
from ._types import VideoResolution as VideoResolution
from ._types import WaitVia as WaitVia
from .webhooks import ReceiverStatistics as ReceiverStatistics

__all__ = [
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
]

# Show the classes as `mjasync.types.X`, not as the private module they live in (pickle finds them
# there too).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("mjasync."):
        _obj.__module__ = __name__
del _name, _obj
