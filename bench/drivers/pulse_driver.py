"""Benchmark driver: pulse (``pulse_trio.open_session``) with handlers.

    python bench/drivers/pulse_driver.py PLAN.json

Each session is one ``open_session`` with an ``on_final_transcript`` handler;
it sends its chunks on the plan's schedule with ``send_audio``, calls
``finalize()`` at the end of each turn and leaves the block (``close_stream``,
then the last final) at the end. See ``_plan.py`` for the plan and the record.
"""

from __future__ import annotations

import logging
import time

import trio
from _plan import Plan, Record, idle_exit, load

from pulse_core import Transcript
from pulse_trio import open_session


async def session(plan: Plan, record: Record, number: int, start: float) -> None:
    try:
        async with open_session(
            plan.api_key, base_url=plan.url, settings={"language": "en"}, sample_rate=plan.rate
        ) as live:

            @live.event_handler("on_final_transcript")
            def final(event: Transcript) -> None:
                record.final(event.text)

            chunk = 0
            held = 0  # the most audio the engine held for replay at once
            for turn in range(plan.turns):
                for data in plan.chunks(number, turn):
                    if plan.realtime:
                        await trio.sleep_until(_trio_time(plan.due(number, chunk, start)))
                    await live.send_audio(data)
                    held = max(held, live.engine.buffered_bytes)
                    chunk += 1
                due = plan.due(number, chunk, start) if plan.realtime else None
                record.finalize(number, turn, due)
                await live.finalize()
            record.replay_held += held
        record.finished += 1
    except Exception as exc:  # reported in the results, never hidden
        record.error(number, exc)


def _trio_time(wall: float) -> float:
    """A ``time.time()`` instant on trio's clock."""
    return trio.current_time() + (wall - time.time())


async def main() -> None:
    plan, record = load("pulse")
    if idle_exit(plan, record):
        return
    logging.basicConfig(level=logging.ERROR)
    start = record.start() + 0.5  # every session connects first
    async with trio.open_nursery() as nursery:
        for number in range(plan.sessions):
            nursery.start_soon(session, plan, record, number, start)
    record.write()


if __name__ == "__main__":
    trio.run(main)
