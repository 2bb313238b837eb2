"""A `ServerError` leaves a submit's fate open whatever its status: a gateway that failed to relay it
(new-api's 400 `do_request_failed`) may say so with a 4xx, and the upstream may have made the task."""

from __future__ import annotations

import pytest

import mjasync
from mjasync._retry import made_no_task, phase_of


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500, 502, 599])
def test_a_server_error_is_of_unknown_fate_whatever_its_status(status: int) -> None:
    error = mjasync.ServerError("the gateway got no answer from the proxy", status=status)
    assert phase_of(error) == "unknown"
    assert made_no_task(error) is False


def test_a_gateway_timeout_reported_as_a_4xx_is_of_unknown_fate() -> None:
    error = mjasync.GatewayTimeoutError("late", status=400)
    assert phase_of(error) == "unknown" and made_no_task(error) is False


@pytest.mark.parametrize(
    ("error", "phase"),
    [
        # The rejected checks come first: a ServerError that says when to come back shed the load.
        (mjasync.ServerError("busy", status=503, retry_after=1.0), "rejected"),
        (mjasync.ServerError("busy", status=429), "rejected"),
        (mjasync.ServerError("busy", status=408), "rejected"),
    ],
)
def test_a_server_error_that_turned_the_request_away_is_still_rejected(
    error: mjasync.ServerError, phase: str
) -> None:
    assert phase_of(error) == phase


@pytest.mark.parametrize(
    "error",
    [
        mjasync.BadRequestError("no", status=400),
        mjasync.NotFoundError("gone", status=404),
        mjasync.ModerationError("banned", status=403),
        mjasync.APIStatusError("method not allowed", status=405),
    ],
)
def test_other_4xx_stay_refusals_that_made_no_task(error: mjasync.APIStatusError) -> None:
    assert phase_of(error) == "fatal" and made_no_task(error) is True


def test_the_proxy_maps_new_apis_relay_failure_to_a_server_error_whatever_the_status() -> None:
    """Each shape new-api answers a failed relay with, at 400 and at 500, is looked up, never refused."""
    from mjasync._providers.proxy import PROXY

    bodies = [
        b'{"description":"do_request_failed ","type":"upstream_error","code":5}',
        b'{"code":"do_request_failed","message":"upstream error"}',
        b'{"error":{"message":"upstream error","type":"new_api_error","code":"do_request_failed"}}',
    ]
    for status in (400, 500):
        for body in bodies:
            error = PROXY.status_error(status, {}, body, request="POST /mj/submit/imagine")
            assert isinstance(error, mjasync.ServerError) and error.status == status, body
            assert phase_of(error) == "unknown" and not made_no_task(error)
    # A plain 400 from the same gateway is still a refusal.
    plain = PROXY.status_error(400, {}, b'{"description":"task_no_found ","type":"upstream_error","code":4}')
    assert isinstance(plain, mjasync.BadRequestError) and made_no_task(plain)
