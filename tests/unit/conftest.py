"""Unit tests run with no Redis, no database server and no worker process.

A test here that asks for a fixture reaching a service (``broker_url``, the database fixtures,
``stack``) is an error before any fixture is set up: it belongs in ``tests/integration``.
"""

from __future__ import annotations

import pytest

from tests.conftest import SERVICE_FIXTURES


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    used = sorted(SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if used:
        pytest.fail(
            f"{item.nodeid} uses {', '.join(used)}: a unit test may not reach Redis or a database "
            "(move it to tests/integration)",
            pytrace=False,
        )
