"""The callback style, typed: ``mypy --strict`` accepts it as written.

``Task(source, func)`` needs no annotation (it is a ``Task[Any]``); a task
whose result type matters says it once, in its annotation, and the worker,
``get_result()`` and ``result()`` follow.  Run it: ``python
examples/typed/callback.py``; ``make lint`` type-checks it.
"""

from __future__ import annotations

import socket

import qiotask


def resolve(task: qiotask.Task[str], host: str) -> str:  # on a pool thread
    return socket.gethostbyname(host)


def done(source: object, err: BaseException | None, opaque: object) -> None:  # on the main thread
    if err is not None:
        print(source, "failed:", err)
    else:
        # get_result() may be None (no result yet, or an error): typed so.
        maybe: str | None = task.get_result()
        assert maybe is not None
        # result(), in func once the task succeeded, is the plain type.
        address: str = task.result()
        print(source, "is", address)
    loop.quit()


def plain(source: object, err: BaseException | None, opaque: object) -> None:
    print("plain:", err or untyped.result())


loop = qiotask.MainLoop()
task: qiotask.Task[str] = qiotask.Task("localhost", done)
task.run_in_thread(resolve, "localhost")
# No annotation: a Task[Any], as the README writes it.
untyped = qiotask.Task("no result", plain)
untyped.complete()
context: qiotask.MainContext = task.context
loop.run()
