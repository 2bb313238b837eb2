"""Scale-out on Redis: many processes and hosts share one account's limits and one queue of jobs.

`pip install 'mjasync[redis]'` (redis-py's asyncio client). `SharedLimits` gives every client that uses
it, in any process or host, one in-flight cap, one submit pace, one 429 cooldown and one learnt cap;
`RunQueue` and `Worker` run a queue of jobs on many workers, each paid job submitted once.
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401 (checked here, so the hint below comes before anything else)
except ImportError as exc:  # pragma: no cover (the extra is installed wherever the tests run)
    raise ImportError("mjasync.redis needs redis-py: pip install 'mjasync[redis]'") from exc

from .._exceptions import CoordinatorError, CoordinatorUnavailableError, RunDataLostError

__all__ = [
    "CoordinatorError",
    "CoordinatorUnavailableError",
    "RunDataLostError",
]
