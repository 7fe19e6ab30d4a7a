"""The awaitable API under asyncio, typed: ``mypy --strict`` checks that each
value has the type the annotation says (a wrong one fails ``make lint``).

Run it: ``python examples/typed/asyncio_api.py``.
"""

from __future__ import annotations

import asyncio
import hashlib

import qiotask


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count(task: qiotask.Task[int], words: str) -> int:  # on a pool thread
    return len(words.split())


async def main() -> None:
    # to_thread and run_sync return what the function returns.
    hexdigest: str = await qiotask.to_thread(digest, b"qiotask")
    length: int = await qiotask.run_sync(len, "four", timeout=10.0)

    # await task returns the task's result type.
    task: qiotask.Task[int] = qiotask.Task(None)
    task.run_in_thread(count, "one two three")
    words: int = await task

    # TaskGroup: the tasks it makes are Task[Any].
    async with qiotask.TaskGroup() as group:
        tasks = [group.run_in_thread(count, text) for text in ("a b", "c d e")]
    totals: list[int] = [t.result() for t in tasks]

    print(hexdigest[:12], length, words, totals)


asyncio.run(main())
