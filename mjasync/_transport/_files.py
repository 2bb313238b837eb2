"""I/O layer: result files fetched through the transport, into memory or into files that appear only once complete."""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from .._exceptions import InvalidRequestError
from .._models.params import validate_http_url
from .._models.results import EditsResult, ImagineResult
from ._send import Transport

__all__ = ["download", "download_to", "save_images"]


async def download(transport: Transport, url: str, *, max_bytes: int) -> bytes:
    """The file at `url`, at most `max_bytes` long."""
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    await transport.download(validate_http_url(url, "url"), max_bytes=max_bytes, sink=keep)
    return b"".join(chunks)


async def download_to(
    transport: Transport, url: str, path: str | os.PathLike[str], *, max_bytes: int
) -> Path:
    """The file at `url` streamed into `path`; return the path.

    Missing folders are made. The file is written to `path.part` first, renamed once complete and
    removed on any failure (cancellation included), so `path` is never a partial file.
    """
    validate_http_url(url, "url")
    target = Path(path)
    partial = anyio.Path(target.with_name(target.name + ".part"))
    await partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        async with await anyio.open_file(partial, "wb") as file:

            async def write(chunk: bytes) -> None:
                await file.write(chunk)

            await transport.download(url, max_bytes=max_bytes, sink=write)
        await partial.replace(target)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await partial.unlink(missing_ok=True)
        raise
    return target


async def save_images(
    transport: Transport,
    result: ImagineResult | EditsResult,
    directory: str | os.PathLike[str],
    *,
    raw: bool,
    max_bytes: int,
) -> list[Path]:
    """A result's images saved into `directory` at once: each of `sub_image_urls` when present, else the
    image (`raw_image_url` with `raw`), as `<image_id>.png` or `<image_id>_<n>.png`."""
    single = result.raw_image_url if raw and result.raw_image_url else result.image_url
    urls = list(result.sub_image_urls or [single or ""])
    if not all(urls):
        raise InvalidRequestError("this result has no image URL to save (is it final?)")
    folder = Path(directory)
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    stem = result.image_id or result.task_id or "image"
    names = [f"{stem}.png"] if len(urls) == 1 else [f"{stem}_{i}.png" for i in range(1, len(urls) + 1)]
    paths = [folder / name for name in names]
    async with anyio.create_task_group() as group:
        for url, path in zip(urls, paths, strict=True):
            group.start_soon(_save_one, transport, url, path, max_bytes)
    return paths


async def _save_one(transport: Transport, url: str, path: Path, max_bytes: int) -> None:
    await download_to(transport, url, path, max_bytes=max_bytes)
