"""The Prefect test server of the flow tests: one per session, since each start costs tens of seconds.

A plain module (not a conftest.py, which the lead owns): test_flows.py imports the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=90):
        yield
