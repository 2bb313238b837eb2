"""I/O layer: the session pool, one HTTP exchange with bounded reads, and ndjson line reading."""

from ._lines import LineReader
from ._pool import SessionPool
from ._send import Transport, WireResponse

__all__ = ["LineReader", "SessionPool", "Transport", "WireResponse"]
