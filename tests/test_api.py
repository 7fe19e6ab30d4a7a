"""qiotask.to_thread and qiotask.shutdown, the public surface."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
import time
import traceback

import pytest

import qiotask

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_to_thread_returns_result_and_passes_args() -> None:
    def work(a: int, b: int, *, scale: int) -> tuple[int, str]:
        return (a + b) * scale, threading.current_thread().name

    async def main() -> tuple[int, str, str]:
        value, thread = await qiotask.to_thread(work, 1, 2, scale=10)
        return value, thread, threading.current_thread().name

    value, worker, loop_thread = asyncio.run(main())
    assert value == 30
    assert worker != loop_thread


def test_to_thread_raises_the_workers_exception_with_traceback() -> None:
    def failing_job() -> None:
        raise KeyError("missing")

    async def main() -> str:
        with pytest.raises(KeyError, match="missing") as info:
            await qiotask.to_thread(failing_job)
        return "".join(traceback.format_tb(info.tb))

    assert "failing_job" in asyncio.run(main())


def test_to_thread_carries_contextvars_like_asyncio() -> None:
    def read() -> str:
        value = request_id.get()
        request_id.set("changed")
        return value

    async def main() -> tuple[str, str, str]:
        request_id.set("req-42")
        ours = await qiotask.to_thread(read)
        theirs = await asyncio.to_thread(read)
        return ours, theirs, request_id.get()

    ours, theirs, after = asyncio.run(main())
    assert ours == theirs == "req-42"
    assert after == "req-42"


def test_to_thread_many_at_once() -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(qiotask.to_thread(lambda i=i: i * i) for i in range(200)))

    assert asyncio.run(main()) == [i * i for i in range(200)]


def test_to_thread_cancelled_awaiter_leaves_nothing_pending() -> None:
    release = threading.Event()

    async def main() -> None:
        job = asyncio.ensure_future(qiotask.to_thread(release.wait, 5))
        await asyncio.sleep(0)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        release.set()

    before = qiotask.stats()["pending"]
    asyncio.run(main())
    # The worker ran to its end; its task completed on the (now closed)
    # loop's context or was failed with ContextClosedError: never left pending.
    assert qiotask.shutdown(timeout=5)
    assert qiotask.stats()["pending"] == before


def test_to_thread_rejects_non_callables() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="callable"):
            await qiotask.to_thread(42)  # type: ignore[arg-type]

    asyncio.run(main())


def test_public_surface_imports_no_toolkit() -> None:
    for name in qiotask.__all__:
        assert hasattr(qiotask, name), name
    probe = "import sys, qiotask; print(sorted(m for m in ('gi', 'PySide6', 'tkinter', 'trio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_shutdown_timeout_is_for_all_pools_together() -> None:
    release = threading.Event()
    pools = [qiotask.WorkerPool(1, name="test-pool") for _ in range(3)]
    for pool in pools:
        pool.submit(lambda: release.wait(10), lambda result, exc: None)
    started = time.monotonic()
    try:
        qiotask.shutdown(timeout=0.5)  # no task is pending: only bare pool jobs are blocked
        assert time.monotonic() - started < 1.2  # one 0.5 s budget, not 0.5 s per pool
        assert all(pool.statistics()["busy"] == 1 for pool in pools)  # it gave up on them
    finally:
        release.set()
        for pool in pools:
            assert pool.shutdown(wait=True, timeout=5)


def test_to_thread_and_run_sync_under_a_loop_with_no_adapter_fail_before_making_anything() -> None:
    ran: list[int] = []
    created = qiotask.stats()["created"]

    async def both() -> None:
        with pytest.raises(RuntimeError) as to_thread_error:
            await qiotask.to_thread(ran.append, 1)
        with pytest.raises(RuntimeError) as run_sync_error:
            await qiotask.run_sync(ran.append, 2)
        for where, info in (("to_thread", to_thread_error), ("run_sync", run_sync_error)):
            message = str(info.value)
            assert message.startswith(f"{where}: no asyncio event loop or trio run is running in this thread")
            assert f"(the awaiting coroutine is run by {__name__}.test_to_thread_and_run_sync_under" in message
            assert "qiotask can await under asyncio (uvloop included) and trio" in message
            assert "nothing was run: run the work with qiotask.Task(source, func).run_in_thread(worker)" in message

    coro = both()
    with pytest.raises(StopIteration):
        coro.send(None)  # run by this test, as a loop qiotask does not know would
    assert qiotask.stats()["created"] == created and ran == []  # no task made, so no worker started
