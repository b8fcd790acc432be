"""Benchmark driver: the smallestai SDK's streaming speech-to-text client.

    python bench/drivers/sdk_driver.py PLAN.json

Each session is the SDK's documented helper, ``stream_speech_to_text``, on one
``AsyncSmallestAI`` client (shared, whose every base URL is the server); it sends its
chunks with ``send_audio_chunk_out``, a ``FinalizeSignal`` at the end of each
turn and ``CloseStream`` at the end, and reads the events until ``is_last``.
"""

from __future__ import annotations

import asyncio
import time
import warnings

from _plan import Plan, Record, idle_exit, load

with warnings.catch_warnings():
    # The SDK's socket is built on websockets' deprecated legacy client.
    warnings.simplefilter("ignore", DeprecationWarning)
    from smallestai import AsyncSmallestAI
    from smallestai.environment import SmallestAIEnvironment
    from smallestai.waves.helpers import stream_speech_to_text
    from smallestai.waves.speech_to_text.types import CloseStream, FinalizeSignal


def make_client(plan: Plan) -> AsyncSmallestAI:
    """One client for every session, as an application holds one."""
    http = plan.url.replace("ws://", "http://", 1)
    environment = SmallestAIEnvironment(atoms=http, waves=http, waves_ws=plan.url, payment=http)
    return AsyncSmallestAI(api_key=plan.api_key, environment=environment)


async def session(
    plan: Plan, record: Record, number: int, start: float, client: AsyncSmallestAI
) -> None:
    try:
        stream = stream_speech_to_text(
            client, language="en", sample_rate=plan.rate, encoding="linear16"
        )
        async with stream as socket:

            async def read() -> None:
                async for event in socket:
                    if getattr(event, "is_final", False):
                        record.final(event.transcript)
                        if event.is_last:
                            return

            reader = asyncio.create_task(read())
            chunk = 0
            for turn in range(plan.turns):
                for data in plan.chunks(number, turn):
                    if plan.realtime:
                        await asyncio.sleep(plan.due(number, chunk, start) - time.time())
                    await socket.send_audio_chunk_out(data)
                    chunk += 1
                due = plan.due(number, chunk, start) if plan.realtime else None
                record.finalize(number, turn, due)
                await socket.send_finalize_signal(FinalizeSignal(type="finalize"))
            await socket.send_close_stream(CloseStream(type="close_stream"))
            await reader
        record.finished += 1
    except Exception as exc:  # reported in the results, never hidden
        record.error(number, exc)


async def main() -> None:
    plan, record = load("smallestai")
    if idle_exit(plan, record):
        return
    start = record.start() + 0.5
    client = make_client(plan)
    await asyncio.gather(
        *(session(plan, record, number, start, client) for number in range(plan.sessions))
    )
    record.write()


if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    asyncio.run(main())
