"""Shared fixtures: the anyio backend, hypothesis profiles, and a small pipeline kit."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis profiles: "dev" is the default; CI runs "ci" (HYPOTHESIS_PROFILE=ci).
settings.register_profile(
    "dev",
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: Where the PostgreSQL tests look when STEPFLOW_TEST_POSTGRES_URL is not set.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_reachable(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI (STEPFLOW_REQUIRE_POSTGRES=1) an unreachable PostgreSQL fails the run."""
    if os.environ.get("STEPFLOW_REQUIRE_POSTGRES") != "1":
        return
    url = os.environ.get("STEPFLOW_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    if not _postgres_reachable(url):
        pytest.exit(f"PostgreSQL is required here but unreachable at {url!r}", returncode=3)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL URL; tests using it skip (with the reason) when it is absent."""
    url = os.environ.get("STEPFLOW_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    if not _postgres_reachable(url):
        pytest.skip(
            f"PostgreSQL unreachable at {url} (set STEPFLOW_TEST_POSTGRES_URL to point at one)"
        )
    return url
