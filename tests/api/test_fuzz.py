"""Property-based fuzzing of every operation in the app's own OpenAPI document (schemathesis).

Whatever a client sends — valid, malformed, oversized or nonsensical — the service answers
with a client error at worst, never a 5xx, and every error is RFC 9457 problem+json (so no
framework default page, stack trace or library name can leak through an unmapped error).
The operations are read from ``/api/openapi.json`` at run time, so routes added later
(auth, patients, …) are fuzzed without touching this file.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.openapi import from_asgi
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.schemas import OpenApiSchema

from clinicguard.app import OPENAPI_URL, create_app
from clinicguard.settings import Settings

PROBLEM_MEDIA_TYPE = "application/problem+json"
EXAMPLES_PER_OPERATION_AND_MODE = 10
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PATH_PARAMETER = re.compile(r"\{[^}]+\}")


@pytest.fixture
def api_schema(make_settings: Callable[..., Settings]) -> Iterator[OpenApiSchema]:
    """The OpenAPI document of the app that the ``app`` fixture builds, on each backend.

    Not the ``app`` fixture itself: that one runs the lifespan on pytest-asyncio's event loop,
    while schemathesis drives ASGI apps from its own event-loop thread and runs the lifespan
    there. Running it on both loops would share one database engine between two loops.
    """
    app = create_app(make_settings())
    try:
        yield from_asgi(OPENAPI_URL, app)
    finally:
        # End the lifespan (store and engine closed) before the backend fixture cleans up.
        shutdown_lifespans()


def _operations(schema: OpenApiSchema) -> list[APIOperation]:
    operations: list[APIOperation] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the OpenAPI document is invalid: {result.err()}"
        operations.append(result.ok())
    return operations


def _check(case: Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.split(";")[0].strip() == PROBLEM_MEDIA_TYPE, (
            f"{case.method} {case.formatted_path} -> {response.status_code} {content_type!r}"
        )


def _has_inputs(operation: APIOperation) -> bool:
    """Negative generation needs something to break: a parameter or a request body."""
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def test_no_input_causes_a_server_error_or_a_non_problem_error(api_schema: OpenApiSchema) -> None:
    """For every operation, schema-valid and schema-violating requests get no 5xx, and every
    error answer is problem+json (no framework default page or traceback leaks)."""
    # schemathesis' own pytest plumbing (schema.parametrize / from_fixture) breaks on pytest 9
    # (it writes Node._nodeid), so the cases are drawn with plain hypothesis instead.
    operations = _operations(api_schema)
    assert operations, "the OpenAPI document lists no operations"
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if _has_inputs(operation):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(case=operation.as_strategy(mode))
            def fuzz(case: Case) -> None:
                _check(case)

            fuzz()


def test_undocumented_methods_get_a_problem_not_a_crash(api_schema: OpenApiSchema) -> None:
    """Every path answers a method it does not document with a 4xx problem+json (405), never
    a 5xx or a framework default page."""
    paths: dict[str, dict[str, object]] = api_schema.raw_schema["paths"]
    assert paths
    with get_client(api_schema.app) as client:
        for template, path_item in paths.items():
            path = PATH_PARAMETER.sub(lambda _: str(uuid.uuid4()), template)
            documented = {method.upper() for method in path_item}
            for method in HTTP_METHODS:
                if method in documented:
                    continue
                response = client.request(method, path)
                label = f"{method} {template} -> {response.status_code}"
                assert 400 <= response.status_code < 500, label
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                assert media_type == PROBLEM_MEDIA_TYPE, label
