"""Resolve a few names under trio: ``qiotask.to_thread`` in a nursery, and a Task awaited.

Inside ``trio.run`` nothing needs setting up: tasks made there belong to the
run, and ``await`` works on them as under asyncio.

Run it with ``python examples/trio_resolve.py``.
"""

from __future__ import annotations

import socket

import trio

import qiotask

NAMES = ("localhost", "127.0.0.1", "::1")


async def lookup(name: str, found: dict[str, str]) -> None:
    infos = await qiotask.to_thread(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM)
    found[name] = str(infos[0][4][0])


def canonical_name(task: qiotask.Task[str], name: str) -> str:
    """A worker, on a pool thread."""
    return socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME)[0][3] or name


async def main() -> None:
    found: dict[str, str] = {}
    # getaddrinfo() has no timeout: bound the whole lookup.  A cancelled
    # await returns at once; its worker runs to its end, its result dropped.
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            for name in NAMES:
                nursery.start_soon(lookup, name, found)
    for name, address in found.items():
        print(f"{name}: {address}")

    task: qiotask.Task[str] = qiotask.Task("localhost", name="canonical name")
    task.run_in_thread(canonical_name, "localhost")
    print("canonical name of localhost:", await task)
    print(f"resolved {len(found)} of {len(NAMES)} names")


if __name__ == "__main__":
    trio.run(main)
