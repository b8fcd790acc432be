"""Drive examples/pipecat_stt.py through a Pipecat pipeline; print what it saw.

Runs in an interpreter that has ``pipecat-ai`` (``PULSE_PIPECAT_PYTHON``), never
in the tests' own: Pipecat is not installed next to pulse. It reads one JSON
program from stdin::

    {"base_url": "ws://127.0.0.1:PORT", "sample_rate": 16000,
     "settings": {...PulseSTTService.Settings fields...},
     "connection_options": {...pulse_core.ConnectionConfig fields...},
     "steps": [["audio", "<hex>"], ["speech_started"], ["speech_stopped"],
               ["wait_finals", 2], ["settings", {...}], ["sleep", 0.2],
               ["end"] or ["cancel"]]}

builds ``PulseSTTService -> Collect``, queues the steps' frames in order (audio
as 20 ms ``InputAudioRawFrame``s, as a transport sends it) and prints one line
``RESULT {json}``: ``seen`` (every transcription, error and end frame that
reached the collector, in order), ``handlers`` (the service's event handlers
as they were called), ``ttfs`` (the TTFS metrics reported) and
``ttfs_p99_latency`` (from the service's metadata frame), ``settings`` (the
service's values at the end for every field a ``settings`` step named);
``timed_out`` says
what was being waited for when a ``wait_finals`` step (20 s) or the program's
``timeout`` (30 s) ran out.
"""

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    STTMetadataFrame,
    STTUpdateSettingsFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's root

from examples.pipecat_stt import PulseSTTService

logger.remove()
logger.add(sys.stderr, level=os.environ.get("DRIVER_LOG", "WARNING"))


async def main(program: dict) -> dict:
    sample_rate = program.get("sample_rate", 16000)
    result: dict = {"seen": [], "handlers": [], "ttfs": [], "ttfs_p99_latency": None}
    finals = asyncio.Condition()

    class Collect(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            seen = result["seen"]
            if isinstance(frame, TranscriptionFrame):
                seen.append(["final", frame.text, frame.finalized])
                async with finals:
                    finals.notify_all()
            elif isinstance(frame, InterimTranscriptionFrame):
                seen.append(["interim", frame.text])
            elif isinstance(frame, EndFrame):
                seen.append(["end"])
            elif isinstance(frame, STTMetadataFrame):
                result["ttfs_p99_latency"] = frame.ttfs_p99_latency
            elif isinstance(frame, MetricsFrame):
                result["ttfs"] += [
                    d.value for d in frame.data if isinstance(d, TTFBMetricsData) and d.value
                ]
            await self.push_frame(frame, direction)

    stt = PulseSTTService(
        api_key="test-key",
        base_url=program["base_url"],
        sample_rate=sample_rate,
        settings=PulseSTTService.Settings(**program.get("settings", {})),
        connection_options=program.get("connection_options"),
    )

    @stt.event_handler("on_connected")
    async def connected(service):
        result["handlers"].append("connected")

    @stt.event_handler("on_disconnected")
    async def disconnected(service):
        result["handlers"].append("disconnected")

    @stt.event_handler("on_connection_error")
    async def connection_error(service, error):
        result["handlers"].append("connection_error")

    class Errors(FrameProcessor):
        """Before the service: errors go upstream, so they never reach Collect."""

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, ErrorFrame) and direction is FrameDirection.UPSTREAM:
                result["seen"].append(["error", str(frame.error)])
            await self.push_frame(frame, direction)

    worker = PipelineWorker(
        Pipeline([Errors(), stt, Collect()]),
        params=PipelineParams(audio_in_sample_rate=sample_rate, enable_metrics=True),
        idle_timeout_secs=None,
    )

    def final_count() -> int:
        return sum(1 for item in result["seen"] if item[0] == "final")

    def applied(changes: dict) -> bool:
        """Whether the session uses ``changes`` (Pulse names) yet. Pipecat's
        own copy of the settings changes first, before the session is told."""
        session = stt.session
        if session is None:
            return False
        try:
            return session.settings.evolve(**changes) == session.settings
        except ValueError:
            return False  # refused: the error frame ends the wait

    def error_count() -> int:
        return sum(1 for item in result["seen"] if item[0] == "error")

    async def feed():
        frame_bytes = sample_rate // 50 * 2  # 20 ms of linear16
        for step in program["steps"]:
            kind, *args = step
            if kind == "audio":
                audio = bytes.fromhex(args[0])
                for start in range(0, len(audio), frame_bytes):
                    chunk = audio[start : start + frame_bytes]
                    await worker.queue_frame(
                        InputAudioRawFrame(audio=chunk, sample_rate=sample_rate, num_channels=1)
                    )
            elif kind == "speech_started":
                await worker.queue_frame(VADUserStartedSpeakingFrame())
            elif kind == "speech_stopped":
                # stop_secs: the VAD waited that long, so speech ended then (TTFS).
                await worker.queue_frame(
                    VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=time.time())
                )
            elif kind == "wait_finals":
                try:
                    async with finals:
                        await asyncio.wait_for(
                            finals.wait_for(lambda wanted=args[0]: final_count() >= wanted),
                            args[1] if len(args) > 1 else 20,
                        )
                except TimeoutError:
                    result["timed_out"] = f"waiting for {args[0]} finals"
                    break  # end the pipeline: what comes of that is seen too
            elif kind == "settings":
                delta = PulseSTTService.Settings(**args[0])
                errors = error_count()
                await worker.queue_frame(STTUpdateSettingsFrame(delta=delta))
                # Audio and VAD frames are system frames: they would overtake
                # this one. Go on once the session has it (or it was refused).
                while error_count() == errors and not applied(args[0]):
                    await asyncio.sleep(0.005)
            elif kind == "sleep":
                await asyncio.sleep(args[0])
            elif kind == "end":
                await worker.queue_frame(EndFrame())
                return
            elif kind == "cancel":
                await worker.queue_frame(CancelFrame())
                return
            else:
                raise ValueError(f"unknown step {kind!r}")
        await worker.queue_frame(EndFrame())

    async def run():
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    tasks = [asyncio.create_task(run()), asyncio.create_task(feed())]
    try:
        async with asyncio.timeout(program.get("timeout", 30)):
            await asyncio.gather(*tasks)
    except TimeoutError:
        result["timed_out"] = result.get("timed_out") or "the program's timeout"
    finally:
        for task in tasks:
            task.cancel()
    changed = {name for kind, *args in program["steps"] if kind == "settings" for name in args[0]}
    result["settings"] = {name: getattr(stt.settings, name) for name in sorted(changed)}
    return result


async def entry(program: dict) -> None:
    """Print the result as soon as it is known, then exit at once: whatever a
    timed-out pipeline left behind must not keep this process (and its
    output) from the test."""
    outcome = await main(program)
    print("RESULT " + json.dumps(outcome), flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(entry(json.load(sys.stdin)))
