"""The provider registry, pure: one object per provider, its name, environment, secret header and blend shape."""

from __future__ import annotations

import argparse
from typing import get_args

import pytest

from mjasync._providers import (
    CALLBACK_SECRET_HEADERS,
    PROVIDERS,
    ProviderName,
    api_key_env,
    get_provider,
)
from mjasync._providers.acedata import ACEDATA
from mjasync._providers.goapi import GOAPI
from mjasync._providers.proxy import PROXY, PROXY_BEARER
from mjasync._types import BlendDimension
from mjasync.cli._batch import configure_parser


def test_the_provider_literal_names_exactly_the_registered_providers() -> None:
    """`provider=`'s Literal and the registry cannot drift apart."""
    assert sorted(get_args(ProviderName)) == sorted(PROVIDERS)
    assert all(provider.name == name for name, provider in PROVIDERS.items())


def test_each_provider_is_one_module_level_object() -> None:
    """Clients share their provider (it keys per-provider caches), never build one each."""
    assert get_provider("acedata") is get_provider("acedata") is ACEDATA
    assert get_provider("goapi") is get_provider("goapi") is GOAPI
    assert get_provider("midjourney-proxy") is PROXY
    assert get_provider("midjourney-proxy-bearer") is PROXY_BEARER


def test_a_provider_reads_the_generic_key_variable_then_only_its_own() -> None:
    """GoAPI never reads AceData's token: one vendor's key is never sent to another's host."""
    assert api_key_env(ACEDATA) == ("MJASYNC_API_KEY", "ACEDATACLOUD_API_TOKEN")
    assert api_key_env(GOAPI) == ("MJASYNC_API_KEY",)
    for name, provider in PROVIDERS.items():
        others = {env for other in PROVIDERS.values() if other is not provider for env in other.api_key_env}
        assert not others & set(api_key_env(provider)), name


def test_secret_headers_are_what_the_providers_declare() -> None:
    assert GOAPI.callback_secret_header == "x-webhook-secret"
    assert ACEDATA.callback_secret_header is None
    assert CALLBACK_SECRET_HEADERS == ("x-webhook-secret",)


@pytest.mark.parametrize(
    ("dimension", "ratio"), [("square", "1:1"), ("portrait", "2:3"), ("landscape", "3:2")]
)
def test_acedata_says_a_blend_shape_as_its_aspect_ratio(dimension: BlendDimension, ratio: str) -> None:
    """AceData has no shape field, so the shape is an `--ar`; GoAPI sends the shape as a field only."""
    assert ACEDATA.blend_aspect_ratio(dimension) == ratio
    assert GOAPI.blend_aspect_ratio(dimension) is None


def test_every_blend_dimension_has_an_acedata_aspect_ratio() -> None:
    for dimension in get_args(BlendDimension):
        assert ACEDATA.blend_aspect_ratio(dimension)


def test_the_batch_cli_offers_the_registered_providers() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    (provider_option,) = (action for action in parser._actions if "--provider" in action.option_strings)
    assert list(provider_option.choices or ()) == list(PROVIDERS)


def test_every_request_a_provider_builds_is_a_typed_frozen_wire_request() -> None:
    """Named fields, not positions; and nobody can change a request once built."""
    from dataclasses import FrozenInstanceError

    from mjasync._models.requests import DescribeRequest, ImagineRequest
    from mjasync._providers import CallRequest, WireRequest

    for provider in PROVIDERS.values():
        wire = provider.job_request(ImagineRequest(action="generate", prompt="a cat"), via="poll")
        assert isinstance(wire, WireRequest) and wire.headers["accept"] == "application/json"
        with pytest.raises(FrozenInstanceError):
            wire.path = "/elsewhere"  # type: ignore[misc]
        with pytest.raises(TypeError):
            wire.headers["x-api-key"] = "k"  # type: ignore[index]
        assert isinstance(provider.task_request("t-1"), WireRequest)
        call = provider.call_request(DescribeRequest(image_url="https://e.com/a.png"))
        assert isinstance(call, CallRequest) and call.path.endswith("/describe")
    page = ACEDATA.recent_tasks_request(ImagineRequest(action="generate", prompt="a cat"), since=0.0)
    assert page is not None and page.page_size > 0 and page.path == "/midjourney/tasks"
