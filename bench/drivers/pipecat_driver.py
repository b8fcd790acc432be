"""Benchmark driver: Pipecat's ``SmallestSTTService``.

    python bench/drivers/pipecat_driver.py PLAN.json

Each session is a pipeline of its own (as a voice agent runs one per call):
the service, then a processor that records finals. All pipelines run under one
``WorkerRunner``. Audio goes in as ``InputAudioRawFrame``s on the plan's
schedule; each turn begins with ``VADUserStartedSpeakingFrame`` and ends with
``VADUserStoppedSpeakingFrame`` (what makes the service send ``finalize``).
The service sends no ``close_stream``: after the last turn's final (or 5 s)
the driver queues an ``EndFrame``, and the service closes its socket.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _plan import Plan, Record, idle_exit, load
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.smallest.stt import SmallestSTTService
from pipecat.workers.runner import WorkerRunner

logger.remove()
logger.add(sys.stderr, level="ERROR")


class Collect(FrameProcessor):
    """Records each final's arrival; passes every frame on."""

    def __init__(self, record: Record, number: int, last: str) -> None:
        super().__init__()
        self._record, self._number, self._last = record, number, last
        self.done = asyncio.Event()

    async def process_frame(self, frame: object, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self._record.final(frame.text)
            if frame.text == self._last:
                self.done.set()
        elif isinstance(frame, ErrorFrame):
            self._record.error(self._number, frame.error)
        await self.push_frame(frame, direction)


async def feed(
    plan: Plan,
    record: Record,
    number: int,
    *,
    start: float,
    worker: PipelineWorker,
    collect: Collect,
) -> None:
    try:
        chunk = 0
        for turn in range(plan.turns):
            await worker.queue_frame(VADUserStartedSpeakingFrame())
            for data in plan.chunks(number, turn):
                if plan.realtime:
                    await asyncio.sleep(plan.due(number, chunk, start) - time.time())
                await worker.queue_frame(
                    InputAudioRawFrame(audio=data, sample_rate=plan.rate, num_channels=1)
                )
                chunk += 1
            due = plan.due(number, chunk, start) if plan.realtime else None
            record.finalize(number, turn, due)
            await worker.queue_frame(VADUserStoppedSpeakingFrame())
        try:
            await asyncio.wait_for(collect.done.wait(), 5)
            record.finished += 1
        except TimeoutError:
            record.error(number, "no final for the last turn within 5 s")
    except Exception as exc:  # reported in the results, never hidden
        record.error(number, exc)
    finally:
        await worker.queue_frame(EndFrame())


async def main() -> None:
    plan, record = load("pipecat")
    if idle_exit(plan, record):
        return
    start = record.start() + 1.0
    runner = WorkerRunner(handle_sigint=False)
    feeds = []
    for number in range(plan.sessions):
        stt = SmallestSTTService(api_key=plan.api_key, base_url=plan.url, sample_rate=plan.rate)
        collect = Collect(record, number, Plan.key(number, plan.turns - 1))
        worker = PipelineWorker(
            Pipeline([stt, collect]),
            params=PipelineParams(audio_in_sample_rate=plan.rate),
            idle_timeout_secs=None,
        )
        await runner.add_workers(worker)
        feeds.append(feed(plan, record, number, start=start, worker=worker, collect=collect))
    await asyncio.gather(runner.run(), *feeds)
    record.write()


if __name__ == "__main__":
    asyncio.run(main())
