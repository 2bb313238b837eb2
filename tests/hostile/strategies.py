"""Hypothesis strategies for the hostile server's scripts, and the small client limits every test uses.

`scripts` drives the AceData and GoAPI sides; `proxy_scripts` adds the midjourney-proxy side's reply
codes, lookup views and notifyHook moves (kept apart so the other providers' examples stay as they were).
"""

from __future__ import annotations

from typing import Any, get_args

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

import mjasync

from .server import (
    API_KEY,
    CodeMove,
    EchoForm,
    Garbage,
    GarbageKind,
    HookMove,
    HostileServer,
    LookupMove,
    Script,
    ShortMove,
    SubmitMove,
    ViewMove,
    WaitMove,
)

__all__ = ["HANG_SECONDS", "SETTINGS", "hostile_client", "proxy_scripts", "scripts", "scripts_for"]

#: A hang detector, far above every limit the client is given (its waits end within ~1 s).
HANG_SECONDS = 8.0

#: Bounded, derandomized and without a per-example deadline: for CI on two cores.
SETTINGS = settings(
    max_examples=6,
    database=None,
    deadline=None,
    derandomize=True,
    # One bug per test, shrunk to its minimal example, without the costly explain phase.
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Odd Retry-After values: negative, huge, not a number, dates past and far future, blank.
RETRY_AFTERS = (
    "0",
    "-1",
    "0.01",
    "1e9",
    "NaN",
    "inf",
    "abc",
    "",
    "99999999999999999999",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "1.5e-3",
    " 1 ",
)

garbage = st.builds(Garbage, st.sampled_from(get_args(GarbageKind)), st.binary(max_size=48))


def _moves(kind: Any, max_size: int = 3, min_size: int = 0) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(get_args(kind)), min_size=min_size, max_size=max_size)


scripts: st.SearchStrategy[Script] = st.builds(
    Script,
    submits=_moves(SubmitMove, min_size=1),
    # Sometimes a long run of one move ("running" forever, say), else a mixed few.
    lookups=_moves(LookupMove, 4) | st.sampled_from(get_args(LookupMove)).map(lambda move: [move] * 40),
    waits=_moves(WaitMove, 2, min_size=1),
    shorts=_moves(ShortMove),
    garbage=garbage,
    retry_after=st.lists(st.sampled_from(RETRY_AFTERS), min_size=1, max_size=3).map(tuple),
    echo=st.sampled_from(get_args(EchoForm)),
    good_lines=st.integers(0, 3),
    steps=st.integers(0, 2),
    # Error bodies with a JSON-escaped emoji (a surrogate pair) beside the echoed key.
    astral=st.booleans(),
)


def _runs(kind: Any, forever: tuple[str, ...], mixed: int = 4) -> st.SearchStrategy[list[Any]]:
    """A mixed few moves of `kind`, or one of `forever` on every request (code 23 forever, say)."""
    return _moves(kind, mixed) | st.sampled_from(forever).map(lambda move: [move] * 40)


def _with_proxy_moves(script: Script, codes: list[Any], views: list[Any], hooks: list[Any]) -> Script:
    script.codes, script.views, script.hooks = codes, views, hooks
    # `shorts` misbehave on the images the proxy's client fetches too (a drip ends at `Timeouts.total`).
    return script


#: `scripts` and the proxy's own moves: 23, 9 or MODAL forever; a view that never ends or never shows.
proxy_scripts: st.SearchStrategy[Script] = st.builds(
    _with_proxy_moves,
    scripts,
    _runs(CodeMove, ("23", "9-queue", "21-modal", "wrong-types", "21-existing")),
    _runs(ViewMove, ("modal", "omit", "backwards", "odd-progress", "empty-status", "wrong-types")),
    _moves(HookMove, 4),
)


def scripts_for(provider: str) -> st.SearchStrategy[Script]:
    return proxy_scripts if provider == "midjourney-proxy" else scripts


def hostile_client(
    server: HostileServer,
    *,
    resubmit: bool = False,
    webhooks: mjasync.WebhookReceiver | None = None,
    patience: float = 1.0,
) -> mjasync.Client:
    """A client with small limits everywhere, so that every wait ends within about a second.

    `patience` scales them all (the honest-server check gives a slow machine room).
    """
    return mjasync.Client(
        api_key=API_KEY,
        base_url=server.url,
        provider=server.provider,
        timeouts=mjasync.Timeouts(
            connect=1.0 * patience,
            read=0.3 * patience,
            stream_read=0.3 * patience,
            total=0.8 * patience,
            long_wait_margin=0.3 * patience,
        ),
        poll=mjasync.PollPolicy(
            initial_interval=0.01,
            factor=1.5,
            max_interval=0.05,
            deadline=0.6 * patience,
            batch_window=0.005,
            callback_grace=0.2 * patience,
        ),
        retry=mjasync.RetryPolicy(
            max_retries=2,
            initial_delay=0.01,
            max_delay=0.05,
            jitter=0.0,
            max_retry_after=0.2,
            reconcile_delay=0,
            on_ambiguous_submit="resubmit" if resubmit else "raise",
        ),
        webhooks=webhooks,
    )
