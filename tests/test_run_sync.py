"""run_sync and to_thread: trio's and anyio's cancellation, under asyncio and trio."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest

import qiotask
from qiotask import TaskCancelled, TaskTimeout, from_thread
from qiotask._threadname import os_thread_name

from .conftest import wait_for

trio = pytest.importorskip("trio")


class Worker:
    """A worker that starts, waits until it is let go (or told it is
    cancelled), and records what happened, in order, with the awaiter's
    events."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.events: list[str] = []
        self.lock = threading.Lock()

    def log(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def __call__(self) -> str:
        self.log("worker started")
        self.started.set()
        assert self.release.wait(10), "never released"
        try:
            from_thread.check_cancelled()
            self.log("worker not told")
        except TaskCancelled:
            self.log("worker told")
        self.log("worker returned")
        return "late"


# -- asyncio ------------------------------------------------------------------------------


def run_asyncio(body: Callable[[], Any]) -> Any:
    return asyncio.run(body())


async def cancel_after_start(worker: Worker, call: Any) -> None:
    """Start ``call`` in an asyncio task, cancel it once the worker runs, let
    the worker go once the cancel reached qiotask, and wait for the task.
    The task itself logs when its await ends."""

    async def awaiting() -> None:
        try:
            await call
        except asyncio.CancelledError:
            worker.log("await cancelled")
            raise

    task = asyncio.ensure_future(awaiting())
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, worker.started.wait, 10)
    task.cancel()
    await asyncio.sleep(0)  # one loop step: the task takes its CancelledError (a step, not a delay)
    worker.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def worker_returned(worker: Worker) -> None:
    """Wait (in an executor thread) until an abandoned worker has returned."""
    await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: "worker returned" in worker.events)


@pytest.mark.parametrize("abandon", [False, True])
def test_asyncio_cancel_while_running(abandon: bool) -> None:
    worker = Worker()

    async def main() -> None:
        await cancel_after_start(worker, qiotask.run_sync(worker, abandon_on_cancel=abandon))
        if abandon:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: "worker returned" in worker.events)
            )

    run_asyncio(main)
    assert "worker told" in worker.events  # the qiotask task was cancelled
    if abandon:  # the await ended at once; the worker went on
        assert worker.events.index("await cancelled") < worker.events.index("worker returned")
    else:  # the await waited for the worker
        assert worker.events[-2:] == ["worker returned", "await cancelled"]


def test_asyncio_to_thread_ends_its_await_at_once_on_cancel() -> None:
    worker = Worker()

    async def main() -> None:
        await cancel_after_start(worker, qiotask.to_thread(worker))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for(lambda: "worker returned" in worker.events)
        )

    run_asyncio(main)
    assert worker.events.index("await cancelled") < worker.events.index("worker returned")
    assert "worker told" in worker.events


@pytest.mark.parametrize("call", ["run_sync", "to_thread"])
def test_asyncio_a_pending_cancel_means_the_worker_never_runs(call: str) -> None:
    ran: list[str] = []

    async def main() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # pending: delivered at the next suspension
        with pytest.raises(asyncio.CancelledError):
            await getattr(qiotask, call)(ran.append, "ran")

    run_asyncio(main)
    assert ran == []


@pytest.mark.parametrize("how", ["cancel()", "move_on_after(0)"])
@pytest.mark.parametrize("call", ["run_sync", "to_thread"])
def test_anyio_on_asyncio_a_cancelled_scope_means_the_worker_never_runs(call: str, how: str) -> None:
    # anyio delivers a scope's cancel to the task at its next checkpoint,
    # so asyncio sees nothing pending yet: the call must ask anyio (anyio's
    # own run_sync never runs fn here).  Before that was asked, fn ran in
    # about half the tries.
    anyio = pytest.importorskip("anyio")
    ran: list[int] = []

    async def main() -> None:
        for attempt in range(20):
            if how == "cancel()":
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await getattr(qiotask, call)(ran.append, attempt)
            else:
                with anyio.move_on_after(0):
                    await getattr(qiotask, call)(ran.append, attempt)

    anyio.run(main, backend="asyncio")
    assert ran == []


@pytest.mark.parametrize("waits_in", ["pool", "limiter"])
def test_asyncio_cancelled_while_queued_never_runs(waits_in: str) -> None:
    # The second call waits for the pool's one thread, or for the limiter's
    # one slot, both held by the first; cancelled there, it never runs.
    pool = qiotask.WorkerPool(1, name="one", grow_after=None)
    limiter = qiotask.Limiter(1) if waits_in == "limiter" else None
    blocker = Worker()
    ran: list[str] = []

    def waiting() -> bool:
        if limiter is not None:
            return limiter.statistics()["waiting"] == 1
        return pool.statistics()["queued"] == 1

    async def main() -> None:
        first = asyncio.ensure_future(qiotask.run_sync(blocker, pool=pool, limiter=limiter))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, blocker.started.wait, 10)
        queued = asyncio.ensure_future(qiotask.run_sync(ran.append, "ran", pool=pool, limiter=limiter))
        await loop.run_in_executor(None, lambda: wait_for(waiting))
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        blocker.release.set()
        assert await first == "late"

    try:
        run_asyncio(main)
    finally:
        pool.shutdown(wait=True, timeout=10)
    assert ran == []


def test_run_sync_passes_results_errors_and_options_through() -> None:
    async def main() -> None:
        assert await qiotask.run_sync(pow, 2, 10, priority=1) == 1024
        with pytest.raises(ZeroDivisionError):
            await qiotask.run_sync(lambda: 1 / 0)
        never = threading.Event()
        with pytest.raises(TaskTimeout):  # abandoned: the await ends at the deadline
            await qiotask.run_sync(never.wait, 10, timeout=0.01, abandon_on_cancel=True)
        never.set()
        limiter = qiotask.Limiter(1)
        assert await qiotask.run_sync(str, 7, limiter=limiter) == "7"

    run_asyncio(main)


def test_run_sync_names_the_thread_while_its_call_runs() -> None:
    pool = qiotask.WorkerPool(1, name="naming")

    def names() -> tuple[str, str | None]:
        return threading.current_thread().name, os_thread_name()

    async def main() -> tuple[Any, Any, Any, Any]:
        before = await qiotask.run_sync(names, pool=pool)
        during = await qiotask.run_sync(names, pool=pool, thread_name="resolver: example.org")
        # 8 two-byte characters: the 15 bytes the kernel keeps end in half a one.
        accents = await qiotask.run_sync(names, pool=pool, thread_name="éèêëàâäç")
        with pytest.raises(ZeroDivisionError):  # the names come back after an error too
            await qiotask.run_sync(lambda: 1 / 0, pool=pool, thread_name="failing")
        after = await qiotask.run_sync(names, pool=pool)
        return before, during, after, accents

    try:
        before, during, after, accents = run_asyncio(main)
    finally:
        pool.shutdown(wait=True, timeout=10)
    assert during[0] == "resolver: example.org"
    if during[1] is not None:  # Linux: the OS name, as ps shows it (15 bytes)
        assert during[1] == "resolver: examp"
        assert accents[1] == "éèêëàâä"  # cut at a character, not in one
    assert after == before  # both names come back


def test_run_sync_misuse() -> None:
    async def coro() -> None:
        pass

    async def main() -> None:
        with pytest.raises(TypeError, match=r"run_sync: fn .*coro is an async function"):
            await qiotask.run_sync(coro)
        with pytest.raises(TypeError, match="thread_name must be a str"):
            await qiotask.run_sync(print, thread_name=3)  # type: ignore[arg-type]
        # The options it passes on are named as its own, not run_in_thread's.
        for bad, error in (
            ({"timeout": -1}, ValueError),
            ({"priority": 1.5}, TypeError),
            ({"limiter": 2}, TypeError),
            ({"pool": "default"}, TypeError),
        ):
            with pytest.raises(error, match=r"^run_sync: ") as raised:
                await qiotask.run_sync(print, **bad)  # type: ignore[arg-type]
            assert "run_in_thread" not in str(raised.value)

    run_asyncio(main)
    with pytest.raises(RuntimeError, match="no asyncio event loop or trio run"):
        qiotask.run_sync(print).send(None)


# -- trio -----------------------------------------------------------------------------------


async def trio_cancel_after_start(worker: Worker, call: Callable[[], Any]) -> None:
    """The trio version: ``call()`` in a cancel scope, cancelled by a task
    outside it once the worker runs."""
    scope = trio.CancelScope()

    async def cancel_once_started() -> None:
        await qiotask.to_thread(worker.started.wait, 10)
        scope.cancel()
        await trio.sleep(0)  # a checkpoint: the cancel reaches the awaiting task first
        worker.release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_once_started)
        with scope:
            await call()
        if scope.cancelled_caught:  # logged as the await ends
            worker.log("await cancelled")


@pytest.mark.parametrize("abandon", [False, True])
def test_trio_cancel_while_running(abandon: bool) -> None:
    worker = Worker()

    async def main() -> None:
        await trio_cancel_after_start(worker, lambda: qiotask.run_sync(worker, abandon_on_cancel=abandon))
        if abandon:
            await qiotask.to_thread(wait_for, lambda: "worker returned" in worker.events)

    trio.run(main)
    assert "worker told" in worker.events
    if abandon:
        assert worker.events.index("await cancelled") < worker.events.index("worker returned")
    else:
        assert worker.events[-2:] == ["worker returned", "await cancelled"]


def test_trio_to_thread_waits_for_the_worker_on_cancel() -> None:
    worker = Worker()
    trio.run(trio_cancel_after_start, worker, lambda: qiotask.to_thread(worker))
    assert worker.events[-2:] == ["worker returned", "await cancelled"]
    assert "worker told" in worker.events


@pytest.mark.parametrize("call", ["run_sync", "to_thread"])
def test_trio_a_pending_cancel_means_the_worker_never_runs(call: str) -> None:
    ran: list[str] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await getattr(qiotask, call)(ran.append, "ran")
        assert scope.cancelled_caught

    trio.run(main)
    assert ran == []


def test_trio_run_sync_result() -> None:
    async def main() -> Any:
        return await qiotask.run_sync(pow, 3, 3)

    assert trio.run(main) == 27


# -- a cancel reaches a coroutine the worker awaits through from_thread.run ----------------------


def test_asyncio_cancel_reaches_from_thread_run() -> None:
    started = threading.Event()

    def work() -> str:
        started.set()
        try:
            from_thread.run(asyncio.sleep, 3600)
        except TaskCancelled:
            return "told"
        return "slept"

    async def main() -> None:
        call = asyncio.ensure_future(qiotask.run_sync(work))
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        await asyncio.sleep(0)  # (the worker may still be on its way into from_thread.run: either way)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call  # ends: the coroutine was cancelled with the task, the worker returned

    run_asyncio(main)


def test_trio_cancel_reaches_from_thread_run() -> None:
    started = threading.Event()
    outcome: list[str] = []

    def work() -> None:
        started.set()
        try:
            from_thread.run(trio.sleep_forever)
        except TaskCancelled:
            outcome.append("told")

    async def main() -> None:
        with trio.move_on_after(30) as deadline:  # a bound, not the cancel under test
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def call() -> None:
                    with scope:
                        await qiotask.run_sync(work)

                nursery.start_soon(call)
                await qiotask.to_thread(started.wait, 10)
                scope.cancel()
        assert not deadline.cancelled_caught

    trio.run(main)
    assert outcome == ["told"]


def test_bad_arguments_leave_no_task_behind() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="priority must be an int"):
            await qiotask.run_sync(print, priority="high")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="pool must be a WorkerPool"):
            await qiotask.run_sync(print, pool="default")  # type: ignore[arg-type]

    pending = qiotask.stats()["pending"]
    run_asyncio(main)
    gc.collect()
    assert qiotask.stats()["pending"] == pending  # settled, not left to warn at collection
