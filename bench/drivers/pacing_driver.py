"""Benchmark driver, the floor under every client: pacing alone, no network.

    python bench/drivers/pacing_driver.py PLAN.json trio|asyncio

Each session walks the plan's schedule as the other drivers do (wait until a
chunk is due, touch its bytes, count a finalize at the end of each turn) and
sends nothing. What it spends is what an application pays its event loop to
wake every ``chunk_ms`` for every session, before any client does any work:
the part of each client's CPU that is the event loop's, not the client's.
The audio counted is the audio paced (there is no server to receive it).
"""

from __future__ import annotations

import sys
import time

from _plan import Plan, Record, idle_exit, load


async def _trio_session(plan: Plan, record: Record, number: int, start: float) -> None:
    import trio

    chunk = 0
    for turn in range(plan.turns):
        for data in plan.chunks(number, turn):
            if plan.realtime:
                await trio.sleep_until(
                    trio.current_time() + plan.due(number, chunk, start) - time.time()
                )
            else:
                await trio.lowlevel.checkpoint()
            record.paced += len(data)
            chunk += 1
        record.finalize(number, turn, plan.due(number, chunk, start) if plan.realtime else None)
    record.finished += 1


async def _asyncio_session(plan: Plan, record: Record, number: int, start: float) -> None:
    import asyncio

    chunk = 0
    for turn in range(plan.turns):
        for data in plan.chunks(number, turn):
            await asyncio.sleep(
                max(0.0, plan.due(number, chunk, start) - time.time()) if plan.realtime else 0
            )
            record.paced += len(data)
            chunk += 1
        record.finalize(number, turn, plan.due(number, chunk, start) if plan.realtime else None)
    record.finished += 1


def main() -> None:
    loop = sys.argv[2]
    plan, record = load(f"{loop}-pacing")
    if idle_exit(plan, record):
        return
    start = record.start() + 0.5
    if loop == "trio":
        import trio

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                for number in range(plan.sessions):
                    nursery.start_soon(_trio_session, plan, record, number, start)

        trio.run(run)
    else:
        import asyncio

        async def gather() -> None:
            await asyncio.gather(
                *(_asyncio_session(plan, record, number, start) for number in range(plan.sessions))
            )

        asyncio.run(gather())
    record.write()


if __name__ == "__main__":
    main()
