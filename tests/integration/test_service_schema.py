"""Property-based fuzzing of the service through its own OpenAPI schema: no input may yield a 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from starlette.testclient import TestClient
from test_service_support import running

from mmfuse.serving.api import openapi_spec

# Hypothesis keeps a cache under ./.hypothesis even without an example database; keep it out of the checkout.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "mmfuse-hypothesis"))

# The schema the service serves at /docs.json, built from the API's request models (no champion needed).
schema = schemathesis.openapi.from_dict(openapi_spec())
# One test per operation, named by it. Not `schema.parametrize()`: its tests share one node id, so
# pytest-xdist (`make test`) would run only one of them.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


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


def test_every_operation_of_the_schema_is_fuzzed() -> None:
    assert {op.label for op in OPERATIONS} >= {"POST /predict", "POST /predict_batch", "POST /feedback"}


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_generated_request_gets_a_server_error(operation: Any, client: TestClient, data: st.DataObject) -> None:
    """Valid and invalid requests alike (schemathesis' positive and negative generation)."""
    mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
    case = data.draw(operation.as_strategy(mode))
    response = send(client, case)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"
    if (
        case.method == "POST"
        and case.path in ("/predict", "/predict_batch", "/feedback")
        and response.status_code >= 400
    ):
        body = response.json()
        assert isinstance(body.get("error"), str) and body["detail"], body
