"""Benchmark driver, the floor under pulse: trio-websocket alone.

    python bench/drivers/trio_websocket_driver.py PLAN.json

Each session opens the socket, sends its chunks on the plan's schedule, a
``finalize`` message at the end of each turn and ``close_stream`` at the end,
and reads every reply (``json.loads``, enough to know a final) until the one
with ``is_last``. No reconnects, no bookkeeping: the least a Trio client does.
"""

from __future__ import annotations

import json
import time

import trio
from _plan import Plan, Record, idle_exit, load
from trio_websocket import ConnectionClosed, open_websocket_url

FINALIZE = json.dumps({"type": "finalize"})
CLOSE_STREAM = json.dumps({"type": "close_stream"})


async def session(plan: Plan, record: Record, number: int, start: float) -> None:
    headers = [(b"Authorization", f"Bearer {plan.api_key}".encode())]
    try:
        async with open_websocket_url(plan.url + plan.query, extra_headers=headers) as ws:

            async def read() -> None:
                try:
                    while True:
                        message = json.loads(await ws.get_message())
                        if message.get("is_final"):
                            record.final(message["transcript"])
                            if message.get("is_last"):
                                return
                except ConnectionClosed:
                    return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                chunk = 0
                for turn in range(plan.turns):
                    for data in plan.chunks(number, turn):
                        if plan.realtime:
                            await trio.sleep_until(
                                trio.current_time() + plan.due(number, chunk, start) - time.time()
                            )
                        await ws.send_message(data)
                        chunk += 1
                    due = plan.due(number, chunk, start) if plan.realtime else None
                    record.finalize(number, turn, due)
                    await ws.send_message(FINALIZE)
                await ws.send_message(CLOSE_STREAM)
        record.finished += 1
    except Exception as exc:  # reported in the results, never hidden
        record.error(number, exc)


async def main() -> None:
    plan, record = load("trio-websocket")
    if idle_exit(plan, record):
        return
    start = record.start() + 0.5
    async with trio.open_nursery() as nursery:
        for number in range(plan.sessions):
            nursery.start_soon(session, plan, record, number, start)
    record.write()


if __name__ == "__main__":
    trio.run(main)
