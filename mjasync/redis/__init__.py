"""Scale-out on Redis: many processes and hosts share one account's limits and one queue of jobs.

`pip install 'mjasync[redis]'` (redis-py's asyncio client).

- `SharedLimits` gives every client that uses it (`Client(limiter=...)`), in any process or host, one
  in-flight cap, one submit pace, one 429 cooldown and one learnt cap, kept in Redis.
- `RunQueue` holds a run's jobs (enqueued idempotently by key), its status and its outcomes;
  `Worker` takes jobs from it and runs each one exactly once, with any number of other workers.

```python
async with (
    mjasync.redis.SharedLimits(url, account="team", max_in_flight=32) as limits,
    mjasync.redis.RunQueue(url, account="team", run="night") as queue,
    mjasync.Client(limiter=limits) as mj,
):
    await queue.start()
    await queue.enqueue(mjasync.redis.QueuedJob(key=f"p{i}", prompt=p) for i, p in enumerate(prompts))
    await mjasync.redis.Worker(mj, queue, limits=limits).run(until_done=True)
    async for outcome in queue.outcomes(follow=False):
        print(outcome.key, outcome.ok)
```
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401 (checked first, so that the hint below is what a user sees)
except ImportError as exc:  # pragma: no cover (the extra is installed wherever the tests run)
    raise ImportError("mjasync.redis needs redis-py: pip install 'mjasync[redis]'") from exc

from .._exceptions import CoordinatorError, CoordinatorUnavailableError, RunDataLostError
from ._limits import SharedLimits, SharedStatistics
from ._queue import ErrorInfo, QueuedJob, RunOutcome, RunQueue, RunStatus
from ._worker import Worker, WorkerEvent, WorkerStatistics

__all__ = [
    "CoordinatorError",
    "CoordinatorUnavailableError",
    "ErrorInfo",
    "QueuedJob",
    "RunDataLostError",
    "RunOutcome",
    "RunQueue",
    "RunStatus",
    "SharedLimits",
    "SharedStatistics",
    "Worker",
    "WorkerEvent",
    "WorkerStatistics",
]
