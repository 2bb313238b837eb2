"""Client floor: the steps every way of sending a job shares (streams, jobs and handles sit above).

The images a provider sends inline, fetched once before the first send (`job_wire`), and a submit
for a task id followed by the provider's second submit for that task, sent exactly once
(`submit_for_task`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._config import MAX_IMAGE_BYTES
from ._engine import Attempted, Engine, SendLog
from ._exceptions import AmbiguousSubmitError, BadRequestError, MJError
from ._models.requests import AnyRequest, JobRequest
from ._providers import CallbackTarget, WireRequest
from ._retry import phase_of
from ._transport import files
from ._types import WaitVia

__all__ = ["inline_images", "job_wire", "submit_for_task"]


async def inline_images(engine: Engine, urls: Sequence[str]) -> list[bytes]:
    """The bytes of each image a submit sends inline (`Provider.image_urls`), in order.

    Fetched once, before anything is sent, each at most `MAX_IMAGE_BYTES` (declared or counted) and
    within the client's `Timeouts` (no credential goes with them). A failure (a 404, an image too
    large) raises its typed error, and nothing is sent: no task, nothing billed.
    """
    transport = engine.transport
    # One after the other: five at most (a blend), and a failure comes out as itself, not in a group.
    return [await files.download(transport, url, max_bytes=MAX_IMAGE_BYTES) for url in urls]


async def job_wire(
    engine: Engine,
    request: JobRequest,
    *,
    via: WaitVia,
    callback: CallbackTarget | None,
    nonce: str | None = None,
) -> WireRequest:
    """The job's request (carrying its `nonce`) with the bytes of its images (`Provider.image_urls`)
    fetched first.

    Callers take this path only when the provider names images: the usual job builds its request
    with no await (`Provider.job_request`).
    """
    provider = engine.provider
    images = await inline_images(engine, provider.image_urls(request))
    return provider.job_request(request, via=via, callback=callback, images=images, nonce=nonce)


async def submit_for_task(
    engine: Engine,
    wire: WireRequest,
    request: AnyRequest,
    *,
    log: SendLog | None,
    nonce: str | None = None,
) -> Attempted[str]:
    """Submit for a task id (`Engine.submit_for_task_id`), then send the provider's second submit for
    that task (`Provider.follow_up_step`: the proxy's MODAL step), if the request needs one. `nonce`:
    the one `wire` was built with, which a lookup after a lost answer matches.

    The task id is noted (in `log`, and as held by this client) before the second submit goes out,
    so whatever becomes of it, the caller knows which task the provider holds.
    """
    attempted = await engine.submit_for_task_id(wire, request, log=log, nonce=nonce)
    task_id = attempted.value
    step = engine.provider.follow_up_step(request, task_id)
    if step is None:
        return attempted
    retries = await _send_follow_up_step(engine, step, request, task_id)
    return Attempted(task_id, attempted.retries_taken + retries)


async def _send_follow_up_step(engine: Engine, step: WireRequest, request: AnyRequest, task_id: str) -> int:
    """Send a task's follow-up step exactly once, within `Timeouts.total`; the retries it took.

    Its answer is a receipt naming the same task. A refusal that made nothing (a full queue: a 429)
    is retried like any, paced by the limiter. A lost answer is settled by looking the task up, never
    by sending the step again (it is not idempotent): a task that no longer waits for the step has
    had it; one that still waits raises `AmbiguousSubmitError`. A step refused as bad (400) is looked
    up the same way, because the proxy refuses a step its task no longer waits for (code 4): if the
    task has gone on, it is followed; if it still waits, the refusal stands.
    """
    transport, provider = engine.transport, engine.provider
    path, body, headers = step.path, step.body, step.headers or None
    where = f"POST {path}"

    async def send() -> str:
        try:
            response = await transport.post(path, body, headers=headers)
            provider.decode_receipt(response.body, request=where)
        except MJError as error:
            lost = phase_of(error) == "unknown"
            if not (lost or isinstance(error, BadRequestError)) or (lost and engine.retry.max_retries == 0):
                raise  # a refusal to retry, one for good, or the resilience layer is off
            await _settle_follow_up_step(engine, task_id, error, lost=lost)
        return task_id

    # What the engine retries here never made anything: `send` settles every unknown fate itself, so
    # the engine's own lookup (by the job's marker, which finds the job's task) never runs.
    attempted = await engine.submit(send, request)
    return attempted.retries_taken


async def _settle_follow_up_step(engine: Engine, task_id: str, error: MJError, *, lost: bool) -> None:
    """Return if the task no longer waits for its follow-up step (it went through); raise otherwise:
    `AmbiguousSubmitError` after a lost answer, the refusal itself after one (`error`)."""
    provider = engine.provider
    if lost and engine.retry.reconcile_delay:
        # The server may still be handling the step (an error status too: a gateway's 502), and a
        # proxy may show the task waiting until its worker takes it up: let it settle first.
        await engine.sleep(engine.retry.reconcile_delay)
    lookup_failed: MJError | None = None
    try:
        response = await engine.post(provider.task_request(task_id))
        waits = provider.awaits_follow_up_step(provider.decode_task(response.value.body))
    except MJError as lookup_error:
        waits, lookup_failed = True, lookup_error
    if not waits:
        return
    if not lost:
        raise error
    ambiguous = AmbiguousSubmitError(
        "the task's second submit (the MODAL step) may have reached the provider, and the task "
        + ("could not be looked up" if lookup_failed else "still waits for it")
        + "; not sending it again, which could run the job twice"
        + (f" (the lookup: {lookup_failed})" if lookup_failed else ""),
        status=getattr(error, "status", None),
        code=getattr(error, "code", None),
        task_id=task_id,
        request=getattr(error, "request", None),
    )
    raise ambiguous from error
