"""``qiotask ps PID``: :func:`qiotask.tasks` of another process.

Two ways in, both ending in the same answer file:

- **The signal route** (any Python, Unix): the program calls
  :func:`enable_dump`, which installs a handler for ``SIGUSR1`` (or the
  signal it names) and writes an *offer* beside the requests.  ``ps`` writes
  a request file and sends the signal; the handler answers it.  A signal
  with no request (``kill -USR1 PID`` by hand) writes the text listing to
  stderr or to the dump file.
- **The remote route** (Python 3.14+, :pep:`768`): ``ps`` writes a small
  script and hands it to ``sys.remote_exec(pid, script)``; the target runs it
  at its next safe point and answers the request.  No handler is needed, but
  the target must be the same Python major.minor version, must not disable
  remote debugging (``PYTHON_DISABLE_REMOTE_DEBUG``, ``-X disable_remote_debug``),
  and ``ps`` must be allowed to ptrace it.

The rendezvous is a directory private to the user, ``<tempdir>/qiotask-<uid>``
(mode 0700, owned by the user, not a symlink: checked each time, so another
user can neither read the listings nor plant requests).  For a request
numbered ``N`` to process ``PID``: ``PID.N.request`` (what ``ps`` asks),
``PID.N.py`` (the remote script), ``PID.N.json`` (the answer, written to a
temporary name and renamed, so ``ps`` never reads half of it);
``PID.N.abandoned`` (the request of a ``ps`` that gave up waiting, so that a
late handler or script writes nothing); ``PID.offer`` says that ``PID`` has
a handler and for which signal.  Each ``ps`` removes the leftovers older
than a minute, and the offers of processes that are gone.

Guarantees / assumes: a Python signal handler, and a ``remote_exec``
script, run on the main thread between two bytecodes -- possibly while that
thread holds one of qiotask's locks (a pool's, a task's).  So neither lists
anything itself: each starts a thread that does (``tasks()`` takes those
locks, and waits until the main thread lets go of them).  For the same
reason the handler reads ``_installed`` without ``_dump_lock`` (the
interrupted code may be :func:`enable_dump`, holding it): one load of a
module global, atomic on every build, which sees the settings before or
after a concurrent change, never half of one.  An offer names the
target's start time (Linux: ``/proc/PID/stat``), so a stale offer of a
process that died without removing it is not taken for a new process with
the same PID: ``ps`` never sends a signal that nobody handles (SIGUSR1's
default action kills).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import os
import platform
import signal as _signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ._inspect import TaskInfo, format_tasks, tasks
from ._state import TaskState

__all__ = ["PsError", "disable_dump", "enable_dump", "format_answer", "ps"]

#: How long a leftover file in the private directory (an answer that came
#: after its ``ps`` gave up) is kept before a later ``ps`` removes it.
_LEFTOVER_AGE = 60.0

#: How often ``ps`` looks for the answer file while it waits.
_POLL_INTERVAL = 0.01

_Handler = Callable[[int, FrameType | None], Any] | int | None


class PsError(RuntimeError):
    """Raised when ``qiotask ps`` cannot get a listing from a process."""


# -- the private directory -----------------------------------------------------


def _directory(create: bool) -> Path:
    """``<tempdir>/qiotask-<uid>``, checked: ours, a real directory, 0700.

    Raises:
        PsError: it is not (someone else made it, or made it readable).
    """
    path = Path(tempfile.gettempdir()) / f"qiotask-{os.geteuid()}"
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
    try:
        info = path.lstat()
    except FileNotFoundError:
        if create:
            raise
        return path
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise PsError(
            f"{path} is not a private directory of this user (owner uid {info.st_uid}, "
            f"mode {stat.filemode(info.st_mode)}): remove it, qiotask makes it again with mode 0700"
        )
    return path


def _start_time(pid: int) -> str | None:
    """When ``pid`` started, as the kernel counts (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields
    # after it start after the last ')'; the start time is field 22.
    return text[text.rindex(")") + 2 :].split()[19]


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


# -- the target's side -----------------------------------------------------------


class _Dump:
    """What :func:`enable_dump` installed; guarded by ``_dump_lock``."""

    def __init__(self, signum: int, file: Path | None, chain: bool, previous: _Handler) -> None:
        self.signum = signum
        self.file = file
        self.chain = chain
        self.previous = previous


# _dump_lock guards _installed (enable/disable on the main thread against
# the at-fork and atexit hooks and the dump threads reading it).
_dump_lock = threading.Lock()
_installed: _Dump | None = None


def enable_dump(
    signal: int = getattr(_signal, "SIGUSR1", 0), file: str | os.PathLike[str] | None = None, *, chain: bool = False
) -> None:
    """Let ``qiotask ps PID`` (and ``kill -USR1 PID``) list this process's tasks.

    Installs a handler for ``signal``.  When ``qiotask ps`` sends it, the
    handler answers ps's request; when it comes without a request (sent by
    hand), the handler writes :func:`qiotask.tasks` with stacks, as text,
    to ``file`` (appended) or to stderr.  The listing is taken on a thread of
    its own, so a handler that interrupts the main thread inside qiotask
    never waits for a lock that thread holds.  Calling it again replaces the
    settings.

    Python runs signal handlers on the main thread only, between bytecodes:
    a main thread blocked inside a toolkit's C loop answers only when that
    loop next runs Python code (see docs/tracing.md, "Listing tasks from
    outside").  On Python 3.14+, ``qiotask ps`` needs no handler
    (``sys.remote_exec``) but answers sooner with one.

    Args:
        signal: the signal to handle (Unix only); SIGUSR1 by default.
        file: where a signal sent by hand writes the listing (appended); by
            default stderr.
        chain: also call the handler that ``signal`` had before (as
            ``faulthandler.register(chain=True)``); by default it is
            replaced, and :func:`disable_dump` puts it back.

    If the private directory (see docs/tracing.md) is not this user's own
    or cannot be written, a WARNING on the ``qiotask`` logger says so and
    ``qiotask ps`` cannot ask this process; the handler is installed all
    the same.

    Raises:
        ValueError: not called on the main thread (``signal.signal()`` works
            there only), or ``signal`` is not a signal of this system.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            "qiotask.enable_dump() must be called from the main thread: Python installs "
            "signal handlers, and runs them, on the main thread only"
        )
    if not hasattr(_signal, "SIGUSR1"):
        raise ValueError("qiotask.enable_dump() needs Unix signals; this system has no SIGUSR1")
    if signal not in _signal.valid_signals() or signal in (_signal.SIGKILL, _signal.SIGSTOP):
        raise ValueError(f"qiotask.enable_dump(): {signal!r} is not a signal that can be handled here")
    with _dump_lock:
        old = _installed
        if old is not None and old.signum != signal:
            _signal.signal(old.signum, old.previous if old.previous is not None else _signal.SIG_DFL)
            old = None
        previous = old.previous if old is not None else _signal.getsignal(signal)
        _signal.signal(signal, _on_signal)
        _installed = _Dump(signal, Path(file) if file is not None else None, chain, previous)
        try:
            _offer(signal)
        except (OSError, PsError) as exc:
            # The directory is not ours (anyone may make it first) or cannot
            # be written: ps cannot ask this process, but the program must not
            # fail for it, and a signal sent by hand still dumps.
            import logging

            logging.getLogger("qiotask").warning("qiotask.enable_dump(): qiotask ps cannot ask this process: %s", exc)


def disable_dump() -> bool:
    """Undo :func:`enable_dump`: put back the signal's previous handler and
    withdraw the offer to ``qiotask ps``.  Main thread only.

    Returns:
        Whether a dump handler was installed.

    Raises:
        ValueError: not called on the main thread.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("qiotask.disable_dump() must be called from the main thread, as enable_dump()")
    with _dump_lock:
        dump = _installed
        if dump is None:
            return False
        _installed = None
        # None: the handler was not set from Python; the default is the best guess.
        _signal.signal(dump.signum, dump.previous if dump.previous is not None else _signal.SIG_DFL)
        _withdraw()
    return True


def _offer(signum: int) -> None:
    """Under _dump_lock: write ``PID.offer`` (which signal, and since when
    this process runs)."""
    directory = _directory(create=True)
    pid = os.getpid()
    _write_atomically(directory / f"{pid}.offer", json.dumps({"signal": signum, "start": _start_time(pid)}))


def _withdraw() -> None:
    """Under _dump_lock: remove this process's offer."""
    try:
        (_directory(create=False) / f"{os.getpid()}.offer").unlink()
    except (OSError, PsError):
        pass


def _at_exit() -> None:
    with _dump_lock:
        if _installed is not None:
            _withdraw()


def _after_fork_in_child() -> None:
    # The child inherits the handler but has a PID of its own: offer it too.
    global _dump_lock
    _dump_lock = threading.Lock()
    if _installed is not None:
        try:
            _offer(_installed.signum)
        except (OSError, PsError):
            pass  # the child still dumps to its file on a signal sent by hand


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _dump_lock.acquire(),
        after_in_parent=lambda: _dump_lock.release(),
        after_in_child=_after_fork_in_child,
    )


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The handler: on the main thread, between two bytecodes."""
    dump = _installed
    try:
        threading.Thread(target=_dump_thread, args=(dump,), name="qiotask-dump", daemon=True).start()
    except Exception:
        # No thread can start (too many, or the interpreter is finalizing):
        # no listing then (ps says it got no answer).  Raising would raise in
        # whatever code the main thread was running, and logging could wait
        # for a logging lock that code holds.
        pass
    if dump is not None and dump.chain and callable(dump.previous):
        dump.previous(signum, frame)


def _pending_requests() -> tuple[list[Path], bool]:
    """The requests for this process, each taken (renamed) so that the
    thread of a second signal does not answer it twice; and whether a ps
    gave up on one (its signal came late: nothing to write then)."""
    try:
        directory = _directory(create=False)
        names = os.listdir(directory)
    except (OSError, PsError):
        return [], False
    prefix = f"{os.getpid()}."
    taken = []
    abandoned = False
    for name in names:
        if not name.startswith(prefix):
            continue
        path = directory / name
        if name.endswith(".abandoned"):
            abandoned = True
            path.unlink(missing_ok=True)
        elif name.endswith(".request"):
            mine = path.with_name(name + ".taken")
            try:
                os.rename(path, mine)
            except OSError:
                continue  # another signal's thread took it
            taken.append(mine)
    return taken, abandoned


def _dump_thread(dump: _Dump | None) -> None:
    try:
        requests, abandoned = _pending_requests()
        for request in requests:
            _answer(request)
        if not requests and not abandoned and dump is not None:
            text = format_answer(_listing(stacks=True))
            if dump.file is None:
                if sys.stderr is not None:  # None under pythonw
                    sys.stderr.write(text)
                    sys.stderr.flush()
            else:
                with open(dump.file, "a", encoding="utf-8") as file:
                    file.write(text)
    except Exception:  # a daemon thread's error would only print: say whose
        import logging

        logging.getLogger("qiotask").exception("qiotask: listing the tasks for qiotask ps failed")


def _listing(stacks: bool) -> dict[str, Any]:
    from . import __version__

    return {
        "pid": os.getpid(),
        "time": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "qiotask": __version__,
        "tasks": [info.as_dict() for info in tasks(stacks=stacks)],
    }


def _answer(request: Path) -> None:
    """Answer the request file ``request`` (ps's ``PID.N.request``, maybe
    renamed ``.taken``) in its ``PID.N.json``."""
    try:
        asked = json.loads(request.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return  # ps gave up (a remote script that ran late)
    stem = request.name.split(".request")[0]
    answer = request.with_name(stem + ".json")
    try:
        body = _listing(stacks=bool(asked.get("stacks", True)))
    except Exception as exc:
        body = {"pid": os.getpid(), "error": f"listing the tasks failed: {type(exc).__name__}: {exc}"}
    try:
        _write_atomically(answer, json.dumps(body))
    finally:
        request.unlink(missing_ok=True)


def _serve_remote(request: str) -> None:
    """What ps's ``remote_exec`` script calls, on the main thread: answer
    ``request`` from a thread (see the module docstring)."""
    threading.Thread(target=_answer, args=(Path(request),), name="qiotask-dump", daemon=True).start()


# The script ``ps`` hands to sys.remote_exec.  It runs in the target's
# ``__main__`` namespace: one name of ours, deleted at the end.
_REMOTE_SCRIPT = """\
def _qiotask_ps_answer(request):
    import json, os, sys
    if not os.path.exists(request):
        return  # ps gave up waiting: nobody reads an answer now
    if "qiotask" not in sys.modules:
        answer = request[: -len(".request")] + ".json"
        body = {{"pid": os.getpid(), "error": "qiotask is not loaded in that process"}}
        with open(answer + ".tmp", "w") as file:
            json.dump(body, file)
        os.replace(answer + ".tmp", answer)
        os.unlink(request)
        return
    import qiotask._dump
    qiotask._dump._serve_remote(request)
try:
    _qiotask_ps_answer({request!r})
finally:
    del _qiotask_ps_answer
"""


# -- ps's side ----------------------------------------------------------------


def _check_target(pid: int) -> None:
    if pid <= 0:
        raise PsError(f"{pid} is not a process ID")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise PsError(f"no process with PID {pid}") from None
    except PermissionError:
        raise PsError(f"process {pid} belongs to another user: run qiotask ps as that user") from None
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return  # no /proc: the signal will tell
    if owner != os.geteuid():
        raise PsError(
            f"process {pid} belongs to another user (uid {owner}): run qiotask ps as that user, "
            "whose private directory the process answers in"
        )


def _read_offer(directory: Path, pid: int) -> int | None:
    """The signal ``pid`` handles, if it offers one and the offer is its
    own (not one left by a dead process whose PID was reused)."""
    try:
        offer = json.loads((directory / f"{pid}.offer").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if offer.get("start") != _start_time(pid):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # gone (without /proc, the start time cannot tell)
    except PermissionError:
        pass
    signum = offer.get("signal")
    return signum if isinstance(signum, int) else None


def _sweep(directory: Path) -> None:
    """Remove leftovers of the ps runs that gave up: their requests, scripts
    and late answers."""
    now = time.time()
    for entry in os.scandir(directory):
        if entry.name.endswith(".offer"):
            # A process killed before its atexit ran leaves its offer.
            pid = entry.name[: -len(".offer")]
            if pid.isdigit() and _read_offer(directory, int(pid)) is None:
                Path(entry.path).unlink(missing_ok=True)
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > _LEFTOVER_AGE:
                os.unlink(entry.path)
        except OSError:
            pass


def ps(pid: int, *, stacks: bool = True, timeout: float = 3.0) -> dict[str, Any]:
    """The task listing of process ``pid``, as the JSON ``qiotask ps --json``
    prints: ``{"pid", "time", "python", "qiotask", "tasks": [TaskInfo.as_dict()...]}``.

    Uses the process's :func:`enable_dump` handler if it offers one, else
    ``sys.remote_exec`` (Python 3.14+).  Waits up to ``timeout`` seconds.

    Raises:
        PsError: no such process, another user's, no way in, no answer in
            time, or the process answered with an error.
    """
    _check_target(pid)
    directory = _directory(create=True)
    _sweep(directory)
    stem = directory / f"{pid}.{os.getpid()}-{time.monotonic_ns()}"
    request = stem.with_name(stem.name + ".request")
    answer = stem.with_name(stem.name + ".json")
    script = stem.with_name(stem.name + ".py")
    _write_atomically(request, json.dumps({"stacks": stacks}))
    try:
        signum = _read_offer(directory, pid)
        if signum is not None:
            how = f"signal {_signal.Signals(signum).name} (qiotask.enable_dump())"
            os.kill(pid, signum)
        elif hasattr(sys, "remote_exec"):
            how = "sys.remote_exec()"
            script.write_text(_REMOTE_SCRIPT.format(request=str(request)), encoding="utf-8")
            try:
                sys.remote_exec(pid, str(script))
            except (OSError, RuntimeError) as exc:
                script.unlink(missing_ok=True)
                raise PsError(
                    f"process {pid} cannot be asked: it offers no qiotask.enable_dump() handler, and "
                    f"sys.remote_exec() failed: {exc} (it needs the same Python version "
                    f"{sys.version_info.major}.{sys.version_info.minor}, remote debugging enabled, and "
                    "permission to ptrace the process)"
                ) from None
        else:
            raise PsError(
                f"process {pid} does not offer a listing: on Python < 3.14 the program must call "
                "qiotask.enable_dump(); on 3.14+ qiotask ps uses sys.remote_exec() instead, but this "
                f"qiotask ps runs on Python {platform.python_version()}"
            )
        try:
            body = _wait_for(answer, pid, timeout, how)
        except PsError:
            # The process may still run the handler or the script later: tell
            # it that nobody waits (the script is left for it to read; _sweep
            # removes it, and any late answer, after _LEFTOVER_AGE).
            try:
                os.rename(request, stem.with_name(stem.name + ".abandoned"))
            except FileNotFoundError:
                pass  # taken already: the late answer is swept
            raise
        script.unlink(missing_ok=True)
    finally:
        request.unlink(missing_ok=True)
    if "error" in body:
        raise PsError(f"process {pid}: {body['error']}")
    return body


def _wait_for(answer: Path, pid: int, timeout: float, how: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = answer.read_text(encoding="utf-8")
        except FileNotFoundError:
            pass
        else:
            answer.unlink(missing_ok=True)
            body: dict[str, Any] = json.loads(text)
            return body
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise PsError(f"process {pid} exited before it answered") from None
        if time.monotonic() >= deadline:
            raise PsError(
                f"process {pid} did not answer within {timeout:g} s (asked through {how}): its main thread "
                "runs no Python code now (blocked in C, such as a Qt or GLib loop that does not wake "
                "for signals), or it is not a program that uses qiotask. On Python < 3.14 the program "
                "must call qiotask.enable_dump(); on 3.14+ sys.remote_exec() needs no handler."
            )
        time.sleep(_POLL_INTERVAL)


def _info_from_dict(fields: dict[str, Any]) -> TaskInfo:
    # Only the fields this qiotask knows: a newer target may send more.
    known = {field.name for field in dataclasses.fields(TaskInfo)}
    fields = {name: value for name, value in fields.items() if name in known}
    progress = fields.get("progress")
    stack = fields.get("stack")
    return TaskInfo(
        **{
            **fields,
            "state": TaskState(fields["state"]),
            "progress": tuple(progress) if progress is not None else None,
            "stack": tuple(stack) if stack is not None else None,
        }
    )


def format_answer(body: dict[str, Any]) -> str:
    """A listing as ``qiotask ps`` prints it: a header line, then
    the tasks as :func:`qiotask._inspect.format_tasks` writes them."""
    header = (
        f"process {body['pid']} at {body['time']} (Python {body.get('python', '?')}, "
        f"qiotask {body.get('qiotask', '?')})\n"
    )
    return header + format_tasks([_info_from_dict(fields) for fields in body["tasks"]])
