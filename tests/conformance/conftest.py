"""The conformance suite runs on every loop: here ``ctx`` and ``runner`` are
parametrized over tests/backends, as anyio runs each test on every backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import qiotask

from ..backends import BACKENDS, Backend, open_backend, thread_default
from ..conftest import LoopRunner


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with thread_default(open_backend(request.param)) as opened:
        yield opened


@pytest.fixture
def ctx(backend: Backend) -> qiotask.MainContext:
    """The backend's context, the thread default for the test's duration."""
    return backend.context


@pytest.fixture
def runner(ctx: qiotask.MainContext) -> LoopRunner:
    return LoopRunner(ctx)
