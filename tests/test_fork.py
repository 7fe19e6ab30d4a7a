"""A forked child never uses its parent's loop objects.

Each test runs a fresh interpreter that forks while its loop runs (as a
server that forks workers from a callback would); the child reports what it
sees on a pipe, and both must end.  Before: the child's default context was
the parent's copy, sharing its epoll instance and self-pipe, and reported
as running -- the child's ``MainLoop().run()`` raised ``TaskStateError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only"),
]


def run_child(body: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def test_a_child_forked_while_the_default_loop_runs_gets_a_context_of_its_own() -> None:
    lines = run_child(
        """
        import os, qiotask

        parent_ctx = qiotask.default_context()
        loop = qiotask.MainLoop(parent_ctx)
        child = []

        def fork_now():
            pid = os.fork()
            if pid == 0:  # the child: run a loop of its own, and a worker
                try:
                    ctx = qiotask.default_context()
                    own = ctx is not parent_ctx and not ctx.closed
                    child_loop = qiotask.MainLoop(ctx)
                    got = []
                    task = qiotask.Task(None, lambda s, e, o: (got.append(e), child_loop.quit()), context=ctx)
                    task.run_in_thread(lambda t, o: os.getpid())
                    ctx.timeout_add(10, lambda: child_loop.quit())  # a guard: never hang
                    child_loop.run()
                    print(f"child: own context {own}, parent's closed {parent_ctx.closed}, "
                          f"worker {task.get_result() == os.getpid()}, err {got}", flush=True)
                finally:
                    os._exit(0)
            child.append(pid)
            parent_ctx.timeout_add(0.05, lambda: loop.quit())
            return False

        parent_ctx.idle_add(fork_now)
        loop.run()
        _, status = os.waitpid(child[0], 0)
        print("parent: child exited", os.waitstatus_to_exitcode(status))
        # The parent's context still works after the fork.
        task = qiotask.Task(None, lambda s, e, o: loop.quit())
        task.run_in_thread(lambda t, o: None)
        loop.run()
        print("parent: still works", task.done())
        """
    )
    assert "child: own context True, parent's closed True, worker True, err [None]" in lines
    assert "parent: child exited 0" in lines
    assert "parent: still works True" in lines


def test_a_child_forked_inside_asyncio_run_uses_a_loop_of_its_own() -> None:
    lines = run_child(
        """
        import asyncio, os, qiotask

        async def child_main():
            return await qiotask.to_thread(os.getpid)

        async def main():
            parent_ctx = qiotask.Task(None).context
            pid = os.fork()
            if pid == 0:
                try:
                    print("child: parent's context closed", parent_ctx.closed, flush=True)
                    print("child: worker ran here", asyncio.run(child_main()) == os.getpid(), flush=True)
                finally:
                    os._exit(0)
            await asyncio.sleep(0.05)
            _, status = os.waitpid(pid, 0)
            print("parent: child exited", os.waitstatus_to_exitcode(status))
            print("parent: worker", await qiotask.to_thread(os.getpid) == os.getpid())

        asyncio.run(main())
        """
    )
    assert "child: parent's context closed True" in lines
    assert "child: worker ran here True" in lines
    assert "parent: child exited 0" in lines
    assert "parent: worker True" in lines


def test_what_the_parents_contexts_held_is_not_freed_in_the_fork_handler() -> None:
    # A queued item whose finalizer posts to the context again (an object
    # that schedules its own cleanup): freeing it inside the fork handler
    # would run that finalizer while the context's lock -- or another
    # module's, still held by the fork -- is taken, and hang the child.
    lines = run_child(
        """
        import os, qiotask

        ctx = qiotask.default_context()

        class SchedulesItsCleanup:
            def __del__(self):
                ctx.call_soon(print, "cleanup")

        ctx.call_soon(lambda holder: None, SchedulesItsCleanup())  # queued, not run
        pid = os.fork()
        if pid == 0:
            os.write(1, b"child: past the fork handlers\\n")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("parent: child exited", os.waitstatus_to_exitcode(status))
        ctx.close()
        """
    )
    assert "child: past the fork handlers" in lines
    assert "parent: child exited 0" in lines
