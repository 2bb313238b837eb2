"""Opt-in pytest fixtures for code that talks to Midjourney APIs: ``pytest_plugins = ["mjasync.testing"]``.

`mj_emulator` yields a running `mjasync.emulator.Emulator` on 127.0.0.1 (a free port, jobs finish at
once, token `EMULATOR_TOKEN`). Tests use anyio's pytest plugin: mark them ``@pytest.mark.anyio``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mjasync.emulator import DEFAULT_TOKEN, Emulator

__all__ = ["EMULATOR_TOKEN", "mj_emulator"]

#: The token `mj_emulator` accepts: the emulator's `DEFAULT_TOKEN`, "test-token".
EMULATOR_TOKEN = DEFAULT_TOKEN


@pytest.fixture
async def mj_emulator(anyio_backend: object) -> AsyncIterator[Emulator]:
    """Yield a running emulator on 127.0.0.1, port 0, speed 0, accepting `EMULATOR_TOKEN`."""
    # Requesting anyio_backend makes anyio's plugin run this async fixture; aiohttp needs asyncio.
    # anyio_backend is a name, or a (name, options) pair.
    name = anyio_backend[0] if isinstance(anyio_backend, (tuple, list)) else anyio_backend
    if name != "asyncio":
        pytest.skip(f"the Midjourney emulator runs on aiohttp, which needs asyncio (backend: {name!r})")
    async with Emulator(host="127.0.0.1", port=0, speed=0.0, tokens=(EMULATOR_TOKEN,)) as emulator:
        yield emulator
