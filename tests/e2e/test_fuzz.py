"""Fuzzing the edge: schemathesis generates requests (valid and invalid) from each service's
OpenAPI and sends them through the gateway with an API key. Nothing may answer 5xx, and every
4xx is a JSON error body. Bounded (``FUZZ_EXAMPLES`` per operation) to stay well under a minute.

The operator endpoints (``/api/v1/ops``) are left out: replaying and discarding dead letters at
random would disturb the other tests; ``test_dead_letters.py`` covers them. The kitchen's line
and stock, which the fuzzer does change, are put back afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.e2e.conftest import API_KEY, Stack

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def kitchen_restored(client: httpx.Client) -> Iterator[None]:
    stock = client.get("/api/v1/production/stock").json()
    line = client.get("/api/v1/production/line").json()
    yield
    for row in stock:
        client.put(f"/api/v1/production/stock/{row['sku']}", json={"available": row["available"]})
    client.put("/api/v1/production/line", json=line)


def _schema(stack: Stack, service: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{stack.base_url}/docs/{service}/openapi.json")
    return schema.exclude(path_regex=r"^/api/v1/ops/")


def check(case: schemathesis.Case, stack: Stack) -> None:
    response = case.call(base_url=stack.base_url, headers={"X-API-Key": API_KEY}, timeout=10)
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500:
        content_type = (response.headers.get("content-type") or [""])[0]  # header -> values
        assert content_type.startswith("application/json"), where
        body = response.json()
        assert body["status"] == response.status_code and body["title"], where


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@pytest.mark.parametrize("service", ["order", "payment", "production"])
def test_api_never_fails_on_any_input(service: str, stack: Stack, kitchen_restored: None) -> None:
    # The schema is read from the running stack, so the cases are built here rather than by
    # schemathesis' pytest plugin (whose from_fixture does not work with pytest 9).
    operations = [result.ok() for result in _schema(stack, service).get_all_operations()]
    assert operations
    for operation in operations:
        for mode in MODES:
            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: schemathesis.Case) -> None:
                check(case, stack)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
