"""Benchmark driver, the asyncio floor: ``websockets`` alone.

    python bench/drivers/websockets_driver.py PLAN.json

The same as ``trio_websocket_driver.py`` over ``websockets``' asyncio client
(the library the smallestai SDK and Pipecat are built on).
"""

from __future__ import annotations

import asyncio
import json
import time

from _plan import Plan, Record, idle_exit, load
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

FINALIZE = json.dumps({"type": "finalize"})
CLOSE_STREAM = json.dumps({"type": "close_stream"})


async def session(plan: Plan, record: Record, number: int, start: float) -> None:
    headers = {"Authorization": f"Bearer {plan.api_key}"}
    try:
        async with connect(plan.url + plan.query, additional_headers=headers) as ws:

            async def read() -> None:
                try:
                    async for text in ws:
                        message = json.loads(text)
                        if message.get("is_final"):
                            record.final(message["transcript"])
                            if message.get("is_last"):
                                return
                except ConnectionClosed:
                    return

            reader = asyncio.create_task(read())
            chunk = 0
            for turn in range(plan.turns):
                for data in plan.chunks(number, turn):
                    if plan.realtime:
                        await asyncio.sleep(plan.due(number, chunk, start) - time.time())
                    await ws.send(data)
                    chunk += 1
                due = plan.due(number, chunk, start) if plan.realtime else None
                record.finalize(number, turn, due)
                await ws.send(FINALIZE)
            await ws.send(CLOSE_STREAM)
            await reader
        record.finished += 1
    except Exception as exc:  # reported in the results, never hidden
        record.error(number, exc)


async def main() -> None:
    plan, record = load("websockets")
    if idle_exit(plan, record):
        return
    start = record.start() + 0.5
    await asyncio.gather(*(session(plan, record, number, start) for number in range(plan.sessions)))
    record.write()


if __name__ == "__main__":
    asyncio.run(main())
