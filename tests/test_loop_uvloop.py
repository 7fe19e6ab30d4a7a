"""asyncio on uvloop: awaiting tasks and to_thread, attach, the embedded kind."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

import qiotask
from qiotask import Task

from .backends import open_backend

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def uvloop() -> Any:
    open_backend("uvloop").cleanup()  # skips (or fails in CI) without uvloop
    import uvloop

    return uvloop


def test_await_and_to_thread_under_uvloop(uvloop: Any) -> None:
    async def main() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        assert type(loop).__module__.startswith("uvloop")
        ctx = qiotask.get_context()
        assert ctx is qiotask.attach(loop) and ctx.thread is threading.current_thread()
        var.set("carried")
        task: Task[str] = Task(None)
        task.run_in_thread(lambda t, o: var.get())
        seen = await task
        value = await qiotask.to_thread(lambda: (var.get(), threading.current_thread().name))
        failing: Task[None] = Task(None)
        failing.run_in_thread(lambda t, o: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            await failing
        return seen, value, threading.current_thread().name

    seen, (value, worker), loop_thread = uvloop.run(main())
    assert seen == value == "carried"
    assert worker != loop_thread


def test_embedded_uvloop_context_runs_callbacks_on_its_thread(uvloop: Any) -> None:
    ctx = qiotask.MainContext(uvloop=True)
    loop = qiotask.MainLoop(ctx)
    seen: list[str] = []

    def func(source: Any, err: BaseException | None, opaque: Any) -> None:
        seen.append(threading.current_thread().name)
        loop.quit()

    try:
        assert type(ctx.loop).__module__.startswith("uvloop")  # type: ignore[attr-defined]
        Task(None, func, context=ctx).run_in_thread(lambda t, o: None)
        loop.run()
        assert seen == [threading.current_thread().name]
    finally:
        ctx.close()  # type: ignore[attr-defined]
