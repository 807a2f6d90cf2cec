"""Property-based fuzzing of the service through its own OpenAPI schema: no input may yield a 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from starlette.testclient import TestClient
from test_service_support import running

from mmfuse.serving.api import openapi_spec

# Hypothesis keeps a cache under ./.hypothesis even without an example database; keep it out of the checkout.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "mmfuse-hypothesis"))

# The schema the service serves at /docs.json, built from the API's request models (no champion needed).
schema = schemathesis.openapi.from_dict(openapi_spec())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with running(tmp_path_factory.mktemp("schema") / "log.sqlite") as client:
        yield client


def send(client: TestClient, case: Any) -> Any:
    """The generated request, encoded by `requests` exactly as schemathesis would send it over
    the network, then sent through the started in-process app."""
    prepared = requests.Request(**case.as_transport_kwargs(base_url="http://testserver")).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return client.request(prepared.method or "GET", prepared.url or "", content=body, headers=dict(prepared.headers))


def test_the_fuzzed_schema_is_the_one_the_service_serves(client: TestClient) -> None:
    assert client.get("/docs.json").json() == openapi_spec()


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case, client: TestClient) -> None:
    response = send(client, case)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"
    if (
        case.method == "POST"
        and case.path in ("/predict", "/predict_batch", "/feedback")
        and response.status_code >= 400
    ):
        body = response.json()
        assert isinstance(body.get("error"), str) and body["detail"], body
