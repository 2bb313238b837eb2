"""I/O layer: the session pool, one HTTP exchange with bounded reads, ndjson line reading, and result downloads."""

from . import _files as files
from ._lines import LineReader
from ._pool import HTTPSession, SessionPool
from ._send import Transport, WireResponse

__all__ = ["HTTPSession", "LineReader", "SessionPool", "Transport", "WireResponse", "files"]
