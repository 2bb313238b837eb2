"""Benchmark 3: ndjson decoder throughput.

The same progress lines (shaped like AceData's recorded stream) are decoded three ways:

- **mjasync**: the bytes cut at random chunk boundaries and fed to `NdjsonDecoder` with the
  provider's `decode_updates`/`decode_update`, exactly as a stream's `LineReader` does per chunk (no
  network): each chunk's whole lines are decoded into `ImagineResult`s in one call;
- **msgspec, pre-split**: the same lines already split, decoded with a reused msgspec decoder into the
  same Struct (the limit: no splitting at all);
- **json.loads per line**: the same pre-split lines with the standard library.

Reported as MB/s and lines/s, and as ratios to the pre-split msgspec figure (target: mjasync ≥ 0.8×).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from mjasync._ndjson import NdjsonDecoder
from mjasync._providers import AceDataProvider
from mjasync.types import ImagineUpdate

__all__ = ["DecoderFigure", "make_stream", "run"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class DecoderFigure:
    """One way of decoding: its throughput."""

    name: str
    megabytes_per_second: float
    lines_per_second: float


def _line(number: int, progress: int) -> bytes:
    final = progress >= 100
    body = {
        "success": True,
        "task_id": f"6a97ba5b-3ac4-4e4b-8e2a-{number:012d}",
        "image_id": f"{1_385_000_000_000_000_000 + number}",
        "image_url": f"https://cdn.example/attachments/{number}/grid_0.png",
        "image_width": 1024,
        "image_height": 1024,
        "raw_image_url": f"https://cdn.example/attachments/{number}/grid_0.raw.png",
        "raw_image_width": 2048,
        "raw_image_height": 2048,
        "progress": progress,
        "actions": ["upscale1", "upscale2", "upscale3", "upscale4", "reroll"] if final else [],
        "trace_id": f"0f6b5ab9-4d1c-4d0e-8b7e-{number:012d}",
    }
    return json.dumps(body, separators=(",", ":")).encode()


def make_stream(size: int, *, seed: int = 0) -> tuple[bytes, list[bytes], list[bytes]]:
    """About `size` bytes of ndjson; its lines; and the same bytes cut at random chunk boundaries."""
    lines: list[bytes] = []
    total = 0
    number = 0
    while total < size:
        for progress in (10, 30, 50, 70, 90, 100):
            line = _line(number, progress)
            lines.append(line)
            total += len(line) + 1
        number += 1
    data = b"\n".join(lines) + b"\n"
    rng = random.Random(seed)
    chunks: list[bytes] = []
    at = 0
    while at < len(data):
        step = rng.randint(1, 64 * 1024)
        chunks.append(data[at : at + step])
        at += step
    return data, lines, chunks


def _best_of(repeats: int, work: Callable[[], int]) -> tuple[float, int]:
    """The fastest of `repeats` runs (seconds), and the line count the work reported."""
    best = float("inf")
    count = 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = work()
        best = min(best, time.perf_counter() - start)
    return best, count


def run(size: int = 64 * MIB, *, repeats: int = 3) -> list[DecoderFigure]:
    """Decode about `size` bytes each way; the fastest of `repeats` runs counts."""
    data, lines, chunks = make_stream(size)
    provider = AceDataProvider()
    decoder = msgspec.json.Decoder(ImagineUpdate, strict=False)

    def ours() -> int:
        # Built as `JobStream._open` builds its reader's decoder.
        decoder = NdjsonDecoder(
            lambda run: provider.decode_updates(ImagineUpdate, run),
            lambda line, number: provider.decode_update(ImagineUpdate, line, number),
        )
        count = 0
        for chunk in chunks:
            count += len(decoder.feed(chunk))
        return count + len(decoder.finish())

    def msgspec_presplit() -> int:
        decode = decoder.decode
        for line in lines:
            decode(line)
        return len(lines)

    def json_per_line() -> int:
        loads = json.loads
        for line in lines:
            loads(line)
        return len(lines)

    figures = []
    for name, work in (
        ("mjasync (split + decode)", ours),
        ("msgspec, pre-split (limit)", msgspec_presplit),
        ("json.loads per line", json_per_line),
    ):
        seconds, count = _best_of(repeats, work)
        assert count == len(lines), f"{name} decoded {count} of {len(lines)} lines"
        figures.append(DecoderFigure(name, len(data) / MIB / seconds, count / seconds))
    return figures
