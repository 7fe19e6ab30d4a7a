"""Items per second from a generator in a worker thread to an asyncio loop.

What is measured
----------------
``--items`` (1,000,000) small ints go from a producer thread to a consumer
coroutine on the asyncio loop, in order.  The contenders:

``qiotask.iterate_in_thread``
    ``async for item in qiotask.iterate_in_thread(range, items, buffer=...)``: the generator runs in a
    qiotask worker, items reach the loop in batches, the worker blocks once ``buffer`` items are out.
``asyncio.Queue + call_soon_threadsafe``
    The hand-written way: a thread calls ``loop.call_soon_threadsafe(queue.put_nowait, item)`` for each
    item (unbounded: no backpressure at all), the coroutine ``await queue.get()``\\ s them.

Rounds are interleaved and the ratio is the median of the per-round ratios, as in ``throughput.py``.
The target (issue 11): ``iterate_in_thread`` at its default buffer reaches three times the hand-written
way.  This is a report, not a test: the exit status is 0 whatever the figures are.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time

import qiotask

TARGET_RATIO = 3.0
_END = object()


async def hand_written(items: int) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def produce() -> None:
        put = queue.put_nowait
        for item in range(items):
            loop.call_soon_threadsafe(put, item)
        loop.call_soon_threadsafe(put, _END)

    thread = threading.Thread(target=produce, name="bench-producer")
    start = time.perf_counter()
    thread.start()
    count = 0
    while await queue.get() is not _END:
        count += 1
    elapsed = time.perf_counter() - start
    thread.join()
    assert count == items
    return items / elapsed


async def ours(items: int, buffer: int) -> float:
    start = time.perf_counter()
    count = 0
    async for _ in qiotask.iterate_in_thread(range, items, buffer=buffer):
        count += 1
    elapsed = time.perf_counter() - start
    assert count == items
    return items / elapsed


async def rounds(items: int, count: int, buffers: list[int]) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"hand-written": []}
    for buffer in buffers:
        rates[f"iterate_in_thread(buffer={buffer})"] = []
    for index in range(count):
        order = list(rates)
        order = order[index % len(order) :] + order[: index % len(order)]  # rotate who goes first
        for name in order:
            if name == "hand-written":
                rates[name].append(await hand_written(items))
            else:
                rates[name].append(await ours(items, int(name.split("=")[1].rstrip(")"))))
        print(
            f"  round {index + 1}/{count}: " + ", ".join(f"{n} {r[-1]:,.0f}/s" for n, r in rates.items()),
            file=sys.stderr,
        )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="items per measurement (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--buffer", type=int, action="append", help="iterate_in_thread buffers to measure (default 16 and 256)"
    )
    args = parser.parse_args()
    buffers = args.buffer or [16, 256]
    rates = asyncio.run(rounds(args.items, args.rounds, buffers))
    reference = rates["hand-written"]
    print(f"\n{args.items:,} items, median of {args.rounds} interleaved rounds (Python {sys.version.split()[0]})")
    print(f"{'contender':32} {'items/s':>12}  vs hand-written")
    for name, values in rates.items():
        ratio = statistics.median(v / r for v, r in zip(values, reference, strict=True))
        print(f"{name:32} {statistics.median(values):>12,.0f}  {ratio:.2f}x")
    default = f"iterate_in_thread(buffer={buffers[0]})"
    ratio = statistics.median(v / r for v, r in zip(rates[default], reference, strict=True))
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"{default} / hand-written = {ratio:.1f}x (target >= {TARGET_RATIO:g}x): {verdict}")


if __name__ == "__main__":
    main()
