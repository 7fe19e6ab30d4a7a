"""qiotask.testing and its pytest plugin.

The plugin's own behaviour is tested on user test files run by pytest's
``pytester``: in this process for asyncio (fast; the inner run makes its
tasks on contexts of its own and settles them, which the suite's leak check
then confirms), and in a child pytest for the runs over all six loops, so
that Qt's one application and Tk's displays stay that child's business.
The fixtures are also used directly here, as a user would.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import qiotask
from qiotask.testing import LOOPS, LoopRunner, LoopUnavailable, TaskWatch, _loops, open_loop

from .conftest import STRICT_WARNINGS, join, start_thread

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"

# How long a child pytest over all six loops may run, in seconds: it takes
# about five (toolkit imports, an Xvfb start when DISPLAY is unusable).
CHILD_TIMEOUT = 60.0

# Every warning an error in the inner runs, as in this suite.  Without
# hypothesis's plugin: its summary imports hypothesis, which an in-process
# run imports afresh each time (pytester restores sys.modules), for seconds.
INNER_ARGS = (
    *("-p", "no:cacheprovider", "-p", "no:hypothesispytest"),
    *("-W", "error", "-W", "ignore:'asyncio.:DeprecationWarning:gi.events"),
)


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(*INNER_ARGS, *args)


def run_child(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*INNER_ARGS, "-v", "-rs", *args, timeout=CHILD_TIMEOUT)


def loops_passed(result: pytest.RunResult, test: str) -> list[str]:
    """The loops ``test`` passed on (in a ``-v`` run); on the others it must
    have been skipped because the loop's toolkit is missing -- never on asyncio."""
    text = result.stdout.str()
    passed = []
    for loop in LOOPS:
        node = f"::{test}[{loop}] "
        line = next((line for line in result.outlines if node in line), None)
        assert line is not None, f"{test}[{loop}] did not run:\n{text}"
        if " PASSED" in line:
            passed.append(loop)
        else:
            assert loop != "asyncio" and " SKIPPED" in line and "cannot be loaded here" in line, f"{line}\n{text}"
    return passed


# -- the fixtures, used directly ----------------------------------------------


def test_context_is_fresh_and_the_thread_default(qiotask_context: qiotask.MainContext) -> None:
    assert qiotask.get_context() is qiotask_context
    assert qiotask_context.thread is threading.current_thread()
    assert qiotask_context.name == "test-asyncio"


@pytest.mark.qiotask_loops
def test_runner_delivers_on_the_test_thread(
    qiotask_loop: str, qiotask_context: qiotask.MainContext, qiotask_runner: LoopRunner
) -> None:
    threads = []
    task = qiotask.Task(None, lambda source, err, opaque: threads.append(threading.current_thread()))
    assert task.context is qiotask_context
    task.run_in_thread(lambda task, opaque: threading.current_thread())
    qiotask_runner.run_until_done(task, timeout=10)
    assert task.state is qiotask.TaskState.FINISHED
    assert threads == [threading.current_thread()]
    assert task.get_result() is not threading.current_thread()  # the worker ran elsewhere


def test_run_until_done_names_what_did_not_finish(qiotask_runner: LoopRunner) -> None:
    task = qiotask.Task(None, name="never")
    with pytest.raises(
        AssertionError, match=r"the loop ran 0.1 s and these tasks did not finish: <Task 'never' pending>"
    ):
        qiotask_runner.run_until_done(task, timeout=0.1)
    task.complete()  # on the context thread: runs now, and the leak check is satisfied


def test_run_until_done_waits_for_several_tasks(qiotask_runner: LoopRunner) -> None:
    gate = threading.Event()
    first = qiotask.Task(None)
    first.run_in_thread(lambda task, opaque: "quick")
    second = qiotask.Task(None)
    second.run_in_thread(lambda task, opaque: gate.wait(10))
    first.add_done_callback(lambda task: gate.set())  # second ends only after first was delivered
    qiotask_runner.run_until_done(first, second, timeout=10)
    assert (first.get_result(), second.get_result()) == ("quick", True)


def test_run_until_runs_the_loop_until_the_predicate_holds(qiotask_runner: LoopRunner) -> None:
    ticks = []
    qiotask_runner.context.timeout_add(1, lambda: ticks.append(1) or len(ticks) < 3)
    qiotask_runner.run_until(lambda: len(ticks) == 3, timeout=10)
    assert ticks == [1, 1, 1]


# -- the building blocks --------------------------------------------------------


def test_open_loop_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown loop 'gtk'; the loops are asyncio, uvloop, glib, qt, tk, trio"):
        open_loop("gtk")


def test_open_loop_reports_a_missing_toolkit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_loops._MAKERS, "trio", ("qiotask_no_such_toolkit", "open"))
    with pytest.raises(LoopUnavailable, match=r"loop 'trio' cannot be loaded here: ModuleNotFoundError: .*qiotask_no"):
        open_loop("trio")


def test_watch_sees_only_its_own_context() -> None:
    mine, other = open_loop("asyncio"), open_loop("asyncio")
    watch = TaskWatch(mine.context)
    watch.start()
    try:
        ours = qiotask.Task(None, context=mine.context, name="ours")
        theirs = qiotask.Task(None, context=other.context, name="theirs")
        assert watch.pending() == [ours]
        message = watch.problems(loop_runs=0)
        assert message is not None and "<Task 'ours' pending>: nothing completed it" in message
        assert "theirs" not in message and "The loop was never run" in message
        ours.complete()
        theirs.complete()
        assert watch.problems(loop_runs=0) is None
    finally:
        watch.stop()
        mine.cleanup()
        other.cleanup()


def test_watch_reports_a_completion_the_loop_never_ran() -> None:
    handle = open_loop("asyncio")
    watch = TaskWatch(handle.context)
    watch.start()
    try:
        task = qiotask.Task(None, context=handle.context, name="handed-over")
        join(start_thread(task.complete, "completer"))  # off the context thread: queued for the loop
        message = watch.problems(loop_runs=1)
        assert message is not None
        assert "<Task 'handed-over' completing>: its completion waits for its context's loop" in message
        assert "1 completion(s) or call(s) were handed to test-asyncio and are still queued" in message
        watch.settle()
        assert task.state is qiotask.TaskState.FINISHED and watch.problems(loop_runs=1) is None
    finally:
        watch.stop()
        handle.cleanup()


def test_importing_the_plugin_imports_no_toolkit() -> None:
    toolkits = ("gi", "PySide6", "tkinter", "_tkinter", "trio", "uvloop")
    code = (
        "import sys, qiotask.testing.plugin, qiotask.testing\n"
        f"print(sorted(m for m in {toolkits!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, *STRICT_WARNINGS, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- the plugin, on user test files ---------------------------------------------


def test_plugin_is_registered(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.qiotask_loops(*names): run the test once on each named loop*"])
    assert "qiotask_loops" not in run_inner(pytester, "-p", "no:qiotask", "--markers").stdout.str()


def test_a_test_without_the_fixtures_is_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import qiotask

        def test_plain():
            ctx = qiotask.MainContext()
            task = qiotask.Task(None, context=ctx, name="not-watched")
            task.complete()
            ctx.close()
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(passed=1)
    assert "qiotask leak check" not in result.stdout.str()


def test_forgetting_the_loop_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading

        import qiotask

        def test_forgets_the_loop(qiotask_context):
            task = qiotask.Task(None, name="forgotten")
            task.run_in_thread(lambda task, opaque: 42)

        def test_forgets_a_handed_over_completion(qiotask_context):
            task = qiotask.Task(None, name="handed-over")
            completer = threading.Thread(target=task.complete)
            completer.start()
            completer.join()
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_the_loop*",
            "*qiotask leak check (asyncio): 1 task(s) made on test-asyncio were not finished when the test ended:",
            "*<Task 'forgotten' *>: *",
            "*The loop was never run: qiotask_runner.run_until_done(task) runs it until the task finished.",
            "*ERROR at teardown of test_forgets_a_handed_over_completion*",
            "*<Task 'handed-over' completing>: its completion waits for its context's loop",
            "*1 completion(s) or call(s) were handed to test-asyncio and are still queued*",
        ]
    )


def test_a_task_left_pending_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import qiotask

        kept = []  # a task dropped unfinished warns (ResourceWarning): keep it

        def report(source, err, opaque):
            print("orphan func ran with", repr(err))

        def test_leaves_one_behind(qiotask_runner):
            finished = qiotask.Task(None, name="finished")
            finished.run_in_thread(lambda task, opaque: None)
            kept.append(qiotask.Task(None, report, name="orphan"))
            qiotask_runner.run_until_done(finished)
        """
    )
    result = run_inner(pytester, "-s")
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "<Task 'orphan' pending>: nothing completed it" in text
    assert "'finished'" not in text
    assert "The loop was never run" not in text  # it ran, just not for the orphan
    assert "Run the loop until they finish" in text
    # Settled afterwards: aborted, so its func ran, with TaskCancelled.
    assert "orphan func ran with TaskCancelled('orphan was left pending at the end of the test')" in text


def test_a_task_dropped_unfinished_fails_though_its_warning_is_ignored(pytester: pytest.Pytester) -> None:
    # Dropped, the task is collected with a ResourceWarning, which Python
    # ignores by default: the check must not depend on the warning (shown,
    # it keeps the task alive, and the task shows as pending).
    pytester.makepyfile(
        """
        import qiotask

        def test_drops_one(qiotask_context):
            qiotask.Task(None, name="dropped")
        """
    )
    result = run_inner(pytester, "-W", "ignore::ResourceWarning")
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "'dropped' was garbage-collected without completing" in text


def test_a_failed_test_is_not_reported_twice(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import qiotask

        def test_fails_early(qiotask_context):
            task = qiotask.Task(None, name="abandoned")
            assert False, "the test's own failure"
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(failed=1)
    assert "the test's own failure" in result.stdout.str()
    assert "qiotask leak check" not in result.stdout.str()


def test_a_fixture_may_finish_tasks_in_its_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        import qiotask

        @pytest.fixture
        def server(qiotask_runner):
            task = qiotask.Task(None, name="serving")  # pending while the test runs
            yield task
            task.run_in_thread(lambda task, opaque: "stopped")
            qiotask_runner.run_until_done(task)

        def test_uses_the_server(server):
            assert not server.done()
        """
    )
    run_inner(pytester).assert_outcomes(passed=1)


def test_the_loop_is_chosen_by_parametrizing_or_overriding(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def qiotask_loop(request):
            return request.param
        """
    )
    pytester.makepyfile(
        test_override="""
        def test_overridden(qiotask_loop, qiotask_context):
            assert qiotask_context.name == f"test-{qiotask_loop}"
        """,
        test_parametrize="""
        import pytest

        @pytest.mark.parametrize("qiotask_loop", ["uvloop"])
        def test_parametrized(qiotask_loop, qiotask_context):
            assert qiotask_context.name == "test-uvloop"

        @pytest.mark.qiotask_loops("asyncio", "glib")
        def test_marked(qiotask_loop, qiotask_runner):
            pass
        """,
    )
    result = run_inner(pytester, "--collect-only", "-q")
    ids = sorted(line for line in result.outlines if "::" in line)
    assert ids == [
        "test_override.py::test_overridden[asyncio]",
        "test_override.py::test_overridden[trio]",
        "test_parametrize.py::test_marked[asyncio]",
        "test_parametrize.py::test_marked[glib]",
        "test_parametrize.py::test_parametrized[uvloop]",
    ]


def test_the_marker_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_unknown="""
        import pytest

        @pytest.mark.qiotask_loops("gtk")
        def test_unknown(qiotask_context):
            pass
        """,
        test_no_fixture="""
        import pytest

        @pytest.mark.qiotask_loops
        def test_no_fixture():
            pass
        """,
        test_module_mark="""
        import pytest

        pytestmark = pytest.mark.qiotask_loops("asyncio", "trio")

        def test_plain():
            pass

        def test_on_loops(qiotask_loop):
            pass
        """,
    )
    result = run_inner(pytester, "--collect-only")
    text = result.stdout.str()
    assert "unknown loop(s) ['gtk']" in text
    assert "test_no_fixture: the test uses neither qiotask_context, qiotask_runner nor qiotask_loop" in text
    assert result.ret != 0
    for node in ("test_plain", "test_on_loops[asyncio]", "test_on_loops[trio]"):
        assert f"<Function {node}>" in text, text
    assert "errors" in result.parseoutcomes() and "test_module_mark.py" not in "".join(
        line for line in result.outlines if line.startswith("ERROR")
    )


@pytest.mark.parametrize("required", [False, True], ids=["skips", "fails-in-ci"])
def test_a_missing_toolkit(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: bool) -> None:
    monkeypatch.setitem(_loops._MAKERS, "trio", ("qiotask_no_such_toolkit", "open"))
    monkeypatch.setenv("QIOTASK_REQUIRE_ALL_LOOPS", "1" if required else "0")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.qiotask_loops("trio")
        def test_on_trio(qiotask_context):
            pass
        """
    )
    result = run_inner(pytester, "-rs")
    reason = "loop 'trio' cannot be loaded here: ModuleNotFoundError: No module named 'qiotask_no_such_toolkit'"
    if required:
        result.assert_outcomes(errors=1)
        assert f"{reason} (QIOTASK_REQUIRE_ALL_LOOPS=1)" in result.stdout.str()
    else:
        result.assert_outcomes(skipped=1)
        assert reason in result.stdout.str()


@pytest.mark.timeout(CHILD_TIMEOUT + 20)
def test_every_loop_in_a_child(pytester: pytest.Pytester) -> None:
    """On each of the six loops: a test that runs its tasks passes, one that
    forgets the loop fails with the leak message."""
    pytester.makepyfile(
        """
        import threading

        import pytest

        import qiotask

        @pytest.mark.qiotask_loops
        def test_runs(qiotask_loop, qiotask_context, qiotask_runner):
            task = qiotask.Task(None, name="runs")
            assert task.context is qiotask_context
            task.run_in_thread(lambda task, opaque: 42)
            qiotask_runner.run_until_done(task)
            assert task.get_result() == 42

        @pytest.mark.qiotask_loops
        def test_forgets(qiotask_context):
            task = qiotask.Task(None, name="forgotten")
            completer = threading.Thread(target=task.complete)
            completer.start()
            completer.join()
        """
    )
    result = run_child(pytester)
    ran = loops_passed(result, "test_runs")
    text = result.stdout.str()
    for loop in ran:
        assert f"ERROR at teardown of test_forgets[{loop}]" in text, text
        assert f"qiotask leak check ({loop}): 1 task(s) made on " in text, text
    assert text.count("<Task 'forgotten' completing>: its completion waits for its context's loop") == len(ran), text
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) == len(ran) and "failed" not in outcomes, text


@pytest.mark.timeout(CHILD_TIMEOUT + 20)
def test_the_docs_example_runs_as_written(pytester: pytest.Pytester) -> None:
    """docs/testing.md's example module, as a user would save and run it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    example = next(block for block in blocks if "def test_on_every_loop" in block)
    pytester.makepyfile(test_lookup=example)
    result = run_child(pytester)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == 2 + len(LOOPS), result.stdout.str()
    assert outcomes.get("passed", 0) == 2 + len(loops_passed(result, "test_on_every_loop")), result.stdout.str()
