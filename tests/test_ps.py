"""``qiotask ps PID`` against a child process: the signal route of
``qiotask.enable_dump()``, the remote route of ``sys.remote_exec`` (Python
3.14+), a signal sent by hand, and the errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import qiotask
from qiotask import _dump

from .conftest import STRICT_WARNINGS, wait_for

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="qiotask ps needs Unix signals")

#: How long a child may take to start, list or end; generous for CI's 2 cores.
BOUND = 60

#: A program with a task at each stage: "running" blocked in its worker on
#: an Event (until "finish" comes on stdin), "queued" behind it (the pool has
#: one thread), "pending" that nothing completes until the end.  It prints
#: "ready" when they are all in place and waits for stdin to say "finish";
#: with the argument "dump" it calls enable_dump() first.
CHILD = textwrap.dedent(
    """\
    import signal, sys, threading
    import qiotask

    if "dump" in sys.argv[1:]:
        qiotask.enable_dump()
    if "dump-to-file" in sys.argv[1:]:
        qiotask.enable_dump(file=sys.argv[-1])
    started = threading.Event()
    gate = threading.Event()

    def worker(task, opaque):
        task.report_progress(3, 10, "reading")
        started.set()
        gate.wait(60)  # the running worker's blocking line
        return opaque

    pool = qiotask.WorkerPool(max_workers=1, name="child-pool", grow_after=None)  # never a second thread
    running = qiotask.Task("the source", name="running")
    running.run_in_thread(worker, "first", pool=pool)
    started.wait(60)
    queued = qiotask.Task(None, name="queued")
    queued.run_in_thread(worker, "second", pool=pool)
    pending = qiotask.Task(None, name="pending")
    if "block" in sys.argv[1:]:
        # As a main thread inside a C loop that no signal interrupts: the
        # signal goes to the pool's thread, and the handler waits for the
        # main thread's next bytecode.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "finish":
            break
        print(line.strip(), "?", flush=True)  # a line the loop ran: the answer to "ping"
    gate.set()
    pending.complete()
    for task in (running, queued):
        task.wait_thread()
    pool.shutdown()
    print("done", flush=True)
    """
)


class Child:
    """A child running CHILD: its process, and what it printed."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        self.script = script
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "dev", *STRICT_WARNINGS, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the child is ready (or dies)
        if line != "ready\n":
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=BOUND)
            raise AssertionError(f"the child did not start: {line!r}\n{err}")
        self.pid = self.proc.pid

    def finish(self) -> tuple[str, str]:
        """Tell the child to finish; its remaining stdout and its stderr."""
        out, err = self.proc.communicate("finish\n", timeout=BOUND)
        assert self.proc.returncode == 0, err
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=BOUND)


@pytest.fixture
def child_factory(tmp_path: Path) -> Iterator[Any]:
    children: list[Child] = []

    def make(*args: str, env: dict[str, str] | None = None) -> Child:
        child = Child(tmp_path, *args, env=env)
        children.append(child)
        return child

    yield make
    for child in children:
        child.kill()


def ps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", *STRICT_WARNINGS, "-m", "qiotask", "ps", *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
    )


def check_listing(body: dict[str, Any], child: Child, *, stacks: bool = True) -> None:
    assert body["pid"] == child.pid
    assert body["qiotask"] == qiotask.__version__
    rows = {row["name"]: row for row in body["tasks"]}
    assert set(rows) == {"running", "queued", "pending"}
    assert (rows["running"]["state"], rows["running"]["waiting_for"]) == ("running", "worker")
    assert rows["running"]["thread"].startswith("child-pool")
    assert rows["running"]["progress"] == [3, 10, "reading"]
    assert rows["running"]["source"] == "'the source'"
    assert (rows["queued"]["state"], rows["queued"]["waiting_for"]) == ("queued", "pool")
    assert (rows["pending"]["state"], rows["pending"]["waiting_for"]) == ("pending", "completion")
    if stacks:
        stack = rows["running"]["stack"]
        assert stack[0].startswith(f"{child.script}:")
        assert stack[0].endswith("in worker: gate.wait(60)  # the running worker's blocking line")
    else:
        assert rows["running"]["stack"] is None
    assert rows["queued"]["stack"] is None


def test_ps_through_enable_dump_text_and_json(child_factory: Any) -> None:
    child = child_factory("dump")

    text = ps(str(child.pid))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"process {child.pid} at ")
    assert lines[1].split() == ["TASK", "STATE", "WAITING", "FOR", "AGE", "CONTEXT", "THREAD", "PROGRESS"]
    assert lines[2].split()[:3] == ["running", "running", "worker"]
    assert lines[3].strip().endswith("in worker: gate.wait(60)  # the running worker's blocking line")
    assert any(line.split()[:3] == ["queued", "queued", "pool"] for line in lines)
    assert any(line.split()[:3] == ["pending", "pending", "completion"] for line in lines)

    as_json = ps(str(child.pid), "--json")
    assert as_json.returncode == 0, as_json.stderr
    check_listing(json.loads(as_json.stdout), child)

    no_stacks = ps(str(child.pid), "--json", "--no-stacks")
    assert no_stacks.returncode == 0, no_stacks.stderr
    check_listing(json.loads(no_stacks.stdout), child, stacks=False)

    out, err = child.finish()
    assert out == "done\n"
    assert err == ""  # a request is answered, not also dumped to stderr
    assert not any(name.startswith(f"{child.pid}.") for name in os.listdir(_dump._directory(create=True)))


def test_a_signal_sent_by_hand_writes_the_listing_to_stderr(child_factory: Any) -> None:
    child = child_factory("dump")
    os.kill(child.pid, signal.SIGUSR1)
    # The signal interrupts the child's read from stdin, the handler runs and
    # starts the thread that writes the listing: read it up to its last row.
    assert child.proc.stderr is not None
    header = child.proc.stderr.readline()
    assert header.startswith(f"process {child.pid} at ")
    seen: list[str] = []
    while not any(line.startswith("pending ") for line in seen):
        line = child.proc.stderr.readline()
        assert line, f"stderr ended: {seen}"
        seen.append(line)
    assert any("in worker: gate.wait(60)" in line for line in seen)
    child.finish()


def test_a_process_that_offers_no_way_in_is_refused(child_factory: Any) -> None:
    env = {**os.environ, "PYTHON_DISABLE_REMOTE_DEBUG": "1"}
    child = child_factory(env=env)
    result = ps(str(child.pid), "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"qiotask ps: process {child.pid} " in result.stderr
    assert "qiotask.enable_dump()" in result.stderr
    # 3.14+: remote_exec was tried and refused; before: there is no remote_exec.
    assert ("sys.remote_exec() failed: " in result.stderr) == hasattr(sys, "remote_exec")
    child.finish()


def test_a_main_thread_that_runs_no_python_does_not_answer_in_time(child_factory: Any) -> None:
    child = child_factory("dump", "block")
    result = ps(str(child.pid), "--timeout", "0.5")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"qiotask ps: process {child.pid} did not answer within 0.5 s (asked through signal SIGUSR1"
    )
    assert "qiotask.enable_dump()" in result.stderr
    _out, err = child.finish()
    assert err == ""  # the handler ran late, saw that ps gave up, and wrote nothing


def test_a_signal_sent_by_hand_appends_the_listing_to_the_dump_file(child_factory: Any, tmp_path: Path) -> None:
    dump = tmp_path / "dump.txt"
    dump.write_text("before\n")
    child = child_factory("dump-to-file", str(dump))

    def listings() -> int:
        return dump.read_text().count("\npending ")

    for count in (1, 2):
        os.kill(child.pid, signal.SIGUSR1)
        # The listing is written by a thread of the child's: no event to
        # wait on from here but the file itself.
        wait_for(lambda: listings() == count, BOUND, "the listing in the dump file")  # noqa: B023 (called now)
    text = dump.read_text()
    assert text.startswith(f"before\nprocess {child.pid} at ")
    assert text.count(f"process {child.pid} at ") == 2
    assert "in worker: gate.wait(60)" in text
    _out, err = child.finish()
    assert err == ""


def test_a_pid_that_does_not_exist() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(BOUND)  # reaped: its PID names no process now
    result = ps(str(gone.pid))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"qiotask ps: no process with PID {gone.pid}\n"


@pytest.mark.parametrize("pid", ["0", "-1", "12x"])
def test_ps_refuses_what_is_not_a_pid(pid: str) -> None:
    result = ps("--", pid)
    assert result.returncode == 2
    assert "not a process ID" in result.stderr


@pytest.mark.skipif(not hasattr(sys, "remote_exec"), reason="sys.remote_exec (PEP 768) needs Python 3.14+")
def test_ps_through_remote_exec_needs_no_handler(child_factory: Any) -> None:
    child = child_factory()
    # remote_exec runs the script when the main thread next runs bytecode:
    # this child's main thread waits in a read from stdin, so ps is started
    # first and the child is then made to run a line of Python ("ping").
    asking = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "dev",
            *STRICT_WARNINGS,
            "-m",
            "qiotask",
            "ps",
            str(child.pid),
            "--json",
            "--timeout",
            str(BOUND),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Nudge until it answered: each "ping" runs Python on the main thread.
        assert child.proc.stdin is not None and child.proc.stdout is not None
        while asking.poll() is None:
            child.proc.stdin.write("ping\n")
            child.proc.stdin.flush()
            assert child.proc.stdout.readline() == "ping ?\n"
            try:
                asking.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        out, err = asking.communicate(timeout=BOUND)
    finally:
        if asking.poll() is None:
            asking.kill()
            asking.communicate()
    assert asking.returncode == 0, err
    check_listing(json.loads(out), child)
    child.finish()


def test_enable_dump_on_another_thread_is_refused() -> None:
    caught: list[BaseException] = []

    def call() -> None:
        try:
            qiotask.enable_dump()
        except ValueError as exc:
            caught.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(BOUND)
    assert len(caught) == 1 and "main thread" in str(caught[0])


def test_enable_then_disable_restores_the_handler() -> None:
    def mine(signum: int, frame: Any) -> None:
        pass

    before = signal.signal(signal.SIGUSR2, mine)
    try:
        qiotask.enable_dump(signal.SIGUSR2)
        assert signal.getsignal(signal.SIGUSR2) is _dump._on_signal
        assert _dump._read_offer(_dump._directory(create=False), os.getpid()) == signal.SIGUSR2
        assert qiotask.disable_dump() is True
        assert signal.getsignal(signal.SIGUSR2) is mine
        assert _dump._read_offer(_dump._directory(create=False), os.getpid()) is None
        assert qiotask.disable_dump() is False
    finally:
        signal.signal(signal.SIGUSR2, before)


@pytest.mark.skipif(not hasattr(sys, "remote_exec"), reason="sys.remote_exec (PEP 768) needs Python 3.14+")
def test_remote_exec_to_a_process_without_qiotask() -> None:
    # Its main thread runs Python every 50 ms (so the script runs soon) until
    # a line comes on stdin.
    program = textwrap.dedent(
        """\
        import sys, threading
        reader = threading.Thread(target=sys.stdin.readline)
        reader.start()
        print("ready", flush=True)
        while reader.is_alive():
            reader.join(0.05)
        """
    )
    other = subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == "ready\n"
        result = ps(str(other.pid))
        _out, err = other.communicate("go\n", timeout=BOUND)
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate()
    assert (other.returncode, err) == (0, "")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"qiotask ps: process {other.pid}: qiotask is not loaded in that process\n"


@pytest.mark.skipif(not hasattr(sys, "remote_exec"), reason="sys.remote_exec (PEP 768) needs Python 3.14+")
def test_remote_exec_to_a_main_thread_that_runs_no_python_times_out(child_factory: Any) -> None:
    child = child_factory()  # no handler; its main thread waits in a read from stdin
    result = ps(str(child.pid), "--timeout", "0.5")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"qiotask ps: process {child.pid} did not answer within 0.5 s (asked through sys.remote_exec())"
    )
    _out, err = child.finish()
    assert err == ""  # the script ran late, saw that ps gave up, and wrote nothing


def test_a_handler_that_cannot_start_its_thread_raises_nothing_where_it_lands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The handler runs between two bytecodes of whatever the main thread
    # does: an exception from it (no thread can start: too many, or the
    # interpreter finalizes) would be raised there.  The previous handler is
    # still chained.
    chained: list[int] = []

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    dump = _dump._Dump(signal.SIGUSR2, None, True, lambda signum, frame: chained.append(signum))
    monkeypatch.setattr(_dump, "_installed", dump)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    _dump._on_signal(signal.SIGUSR2, None)
    assert chained == [signal.SIGUSR2]


def test_a_directory_another_user_could_plant_does_not_fail_enable_dump(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone may create <tempdir>/qiotask-<uid> before the program runs: the
    # program's enable_dump() must not raise for it (the signal sent by hand
    # still dumps); ps refuses the directory, as before.
    import logging
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    planted = tmp_path / f"qiotask-{os.geteuid()}"
    planted.mkdir(mode=0o755)
    planted.chmod(0o755)  # readable by others: not private
    before = signal.getsignal(signal.SIGUSR2)
    try:
        with caplog.at_level(logging.WARNING, logger="qiotask"):
            qiotask.enable_dump(signal.SIGUSR2)
        assert signal.getsignal(signal.SIGUSR2) is _dump._on_signal
        assert any("is not a private directory" in r.getMessage() for r in caplog.records)
        assert not (planted / f"{os.getpid()}.offer").exists()
        assert qiotask.disable_dump() is True
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert signal.getsignal(signal.SIGUSR2) == before
    with pytest.raises(_dump.PsError, match="is not a private directory"):
        _dump.ps(os.getpid(), timeout=0.1)


@pytest.mark.parametrize("pid", ["4294967296", "99999999999999999999"])
def test_ps_refuses_a_pid_no_process_can_have(pid: str) -> None:
    done = subprocess.run([sys.executable, "-m", "qiotask", "ps", pid], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not a process ID" in done.stderr and "Traceback" not in done.stderr
