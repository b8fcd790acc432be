"""The end-to-end scenario kit's factory for the Pipecat service (pipecat_stt.py).

``factory(target)`` runs in any interpreter: it runs this module in the one
``PULSE_PIPECAT_PYTHON`` names (which has ``pipecat-ai``; Pipecat is not
installed next to pulse) with the ``Target`` as JSON on stdin, and reads back
the ``Observed`` it prints. There, ``PulseSTTService`` sits in a pipeline
(service, then a collector) and the steps become frames:

* ``audio``: ``InputAudioRawFrame``s of ``target.chunk_bytes``;
* ``speech_stopped`` and ``finalize``: ``VADUserStoppedSpeakingFrame`` (the
  one way a Pipecat pipeline ends a turn; the service finalizes on it);
* ``update_settings``: ``STTUpdateSettingsFrame``; audio and VAD frames are
  system frames, which overtake it in a pipeline, so the next step waits until
  the service has applied it (or refused it with an ``ErrorFrame``);
* ``wait``: a pause; ``wait_connected``: until the service's
  ``on_pulse_event`` handler has seen ``Connected``; ``close``: ``EndFrame``
  (the session ends with ``close_stream`` and its last final).

What the application observed: the text of every ``TranscriptionFrame`` that
reached the end of the pipeline, every ``pulse_core`` event the service had
(its ``on_pulse_event`` handler), and the exception of the ``ErrorFrame`` the
failed session pushed, if any. Run the list from the repository's root::

    PULSE_PIPECAT_PYTHON=.ci/pipecat-venv/bin/python \\
        python -m pulse_trio.emulator.scenarios --factory examples.pipecat_scenarios:factory
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import attrs

from pulse_core import Connected
from pulse_trio.emulator.scenarios import Observed, Target, observe

__all__ = ["factory"]

ROOT = Path(__file__).resolve().parent.parent
#: Real time the interpreter may take to start and to import Pipecat, beyond the target's.
_STARTUP = 30.0


def factory(target: Target) -> Observed:
    """Run ``target`` through ``PulseSTTService`` in the Pipecat interpreter."""
    python = os.environ.get("PULSE_PIPECAT_PYTHON")
    if not python:
        raise RuntimeError("set PULSE_PIPECAT_PYTHON to a Python that has pipecat-ai installed")
    process = subprocess.run(  # noqa: S603 - the interpreter the environment names
        [python, "-m", "examples.pipecat_scenarios"],
        input=target.to_json(),
        capture_output=True,
        text=True,
        timeout=target.timeout + _STARTUP,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("OBSERVED ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(
            f"the Pipecat driver failed ({process.returncode}):\n{process.stderr[-4000:]}"
        )
    return Observed.from_json(lines[-1].removeprefix("OBSERVED "))


# -- in the Pipecat interpreter ---------------------------------------------------------


async def _run(target: Target) -> Observed:
    from pipecat.frames.frames import (  # noqa: PLC0415 - Pipecat only exists over there
        EndFrame,
        ErrorFrame,
        InputAudioRawFrame,
        STTUpdateSettingsFrame,
        TranscriptionFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline  # noqa: PLC0415
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: PLC0415
    from pipecat.processors.frame_processor import (  # noqa: PLC0415
        FrameDirection,
        FrameProcessor,
    )
    from pipecat.workers.runner import WorkerRunner  # noqa: PLC0415

    from examples.pipecat_stt import PulseSTTService  # noqa: PLC0415

    declared = {field.name for field in fields(PulseSTTService.Settings)} - {"extra"}

    def settings(values: dict[str, Any]) -> Any:
        """Pipecat settings from ``pulse_core.Settings`` names: a name Pipecat's
        settings lack goes in ``extra``, which the service sends too."""
        known = {name: value for name, value in values.items() if name in declared}
        extra = {name: value for name, value in values.items() if name not in declared}
        return PulseSTTService.Settings(**known, extra=extra)

    def applied(changes: dict[str, Any]) -> bool:
        """Whether the session uses ``changes`` yet. Pipecat's own copy of the
        settings changes first, before the session is told."""
        session = stt.session
        if session is None:
            return False
        try:
            return session.settings.evolve(**changes) == session.settings
        except ValueError:
            return False  # refused: the error frame ends the wait

    events: list[Any] = []
    finals: list[str] = []
    errors: list[BaseException] = []

    class Collect(FrameProcessor):
        async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TranscriptionFrame):
                finals.append(frame.text)
            await self.push_frame(frame, direction)

    class Errors(FrameProcessor):
        """Before the service: its errors go upstream, never to Collect."""

        async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, ErrorFrame) and isinstance(frame.exception, Exception):
                errors.append(frame.exception)
            await self.push_frame(frame, direction)

    stt = PulseSTTService(
        api_key=target.api_key,
        base_url=target.base_url,
        encoding=target.encoding,
        sample_rate=target.sample_rate,
        settings=settings(target.settings),
        connection_options=target.options,
    )
    connected = asyncio.Event()

    def on_pulse_event(_service: Any, event: Any) -> None:
        events.append(event)
        if isinstance(event, Connected):
            connected.set()

    stt.add_event_handler("on_pulse_event", on_pulse_event)
    worker = PipelineWorker(
        Pipeline([Errors(), stt, Collect()]),
        params=PipelineParams(audio_in_sample_rate=target.sample_rate),
        idle_timeout_secs=None,
    )

    async def steps() -> None:
        for step in target.steps:
            if step.op == "audio":
                await worker.queue_frame(VADUserStartedSpeakingFrame())
                for start in range(0, len(step.audio), target.chunk_bytes):
                    chunk = step.audio[start : start + target.chunk_bytes]
                    await worker.queue_frame(
                        InputAudioRawFrame(
                            audio=chunk, sample_rate=target.sample_rate, num_channels=1
                        )
                    )
            elif step.op in ("speech_stopped", "finalize"):
                await worker.queue_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
            elif step.op == "update_settings":
                refused = len(errors)
                await worker.queue_frame(STTUpdateSettingsFrame(delta=settings(step.changes)))
                while not applied(step.changes) and len(errors) == refused:
                    await asyncio.sleep(0.005)
            elif step.op == "wait":
                await asyncio.sleep(step.seconds)
            elif step.op == "wait_connected":
                await connected.wait()
            elif step.op == "close":
                break
            else:
                raise ValueError(f"unknown step {step.op!r}")
        await worker.queue_frame(EndFrame())

    async def run() -> None:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    error: BaseException | None = None
    try:
        async with asyncio.timeout(target.timeout):
            await asyncio.gather(run(), steps())
    except Exception as exc:  # the timeout, or a step the driver could not take
        error = exc
    observed = observe(events, errors[0] if errors else error)
    return attrs.evolve(observed, finals=tuple(finals))


def main() -> None:
    """Read a ``Target`` as JSON on stdin; print ``OBSERVED`` and the ``Observed``."""
    from loguru import logger  # noqa: PLC0415 - Pipecat's logger, quiet here

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    observed = asyncio.run(_run(Target.from_json(sys.stdin.read())))
    print("OBSERVED " + observed.to_json(), flush=True)


if __name__ == "__main__":
    main()
