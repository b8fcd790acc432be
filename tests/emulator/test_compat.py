"""The emulator against Pulse clients this project did not write.

Each test runs a real session of a third-party client against the emulator on
loopback (127.0.0.1) and checks that the client gets exactly the words encoded
as token audio, and that the emulator saw the handshake and the messages that
client is known to send. ``.ci/run`` installs both clients, so in CI none of
these tests is skipped; elsewhere each is skipped when its client is missing.

* ``smallestai`` (Smallest AI's Python SDK, ``.ci/sdk-requirements.txt``): the
  tests run when the package is importable and are skipped otherwise. The SDK
  is an asyncio client; it runs in a worker thread with its own event loop
  while the emulator runs in the test's trio loop.

* Pipecat's ``SmallestSTTService`` (package ``pipecat-ai``, module
  ``pipecat.services.smallest.stt``): Pipecat is not installed next to this
  project. Its tests run only when the environment variable
  ``PULSE_PIPECAT_PYTHON`` names a Python interpreter that has ``pipecat-ai``
  installed, and are skipped otherwise; ``.ci/run`` creates that interpreter
  (``.ci/pipecat-venv``, from ``.ci/pipecat-requirements.txt``) and sets the
  variable. Each test writes a small driver script to a temporary directory
  and runs it with that interpreter as a subprocess; the driver builds a
  pipeline (service, then a collector), feeds token audio as
  ``InputAudioRawFrame``s, ends each turn with ``VADUserStoppedSpeakingFrame``
  (which is what makes the service send ``finalize``), and prints what it
  collected. To set it up by hand::

      python -m venv /tmp/pipecat-venv
      /tmp/pipecat-venv/bin/pip install -r .ci/pipecat-requirements.txt .
      PULSE_PIPECAT_PYTHON=/tmp/pipecat-venv/bin/python pytest tests/emulator/test_compat.py

Each client also gets a speech case: the shipped sample (examples/speech.wav)
through the emulator's speech engine, which needs the ``local`` extra (skipped
without it), scored by word error rate against examples/speech.txt.

Every session is bounded in time (``trio.fail_after`` outside, ``asyncio``
timeouts inside the clients) and uses only the loopback interface.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import pytest
import trio
from trio_websocket import WebSocketConnection, WebSocketRequest

from pulse_trio.emulator import Emulator, ServerSession
from pulse_trio.emulator._engines import speech_engine_missing
from pulse_trio.emulator.token_audio import encode
from tests.speech import REFERENCE, sample_sentences, word_error_rate

TURNS = (["hello", "world"], ["second", "turn"])
SAMPLE_RATE = 16000
FINALIZE = {"type": "finalize"}
CLOSE_STREAM = {"type": "close_stream"}
# The SDK's speech-to-text socket is built on websockets' deprecated legacy client.
LEGACY_WEBSOCKETS = pytest.mark.filterwarnings(
    "ignore:websockets.legacy is deprecated:DeprecationWarning",
    "ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning",
)


needs_speech = pytest.mark.skipif(
    speech_engine_missing() is not None, reason="the local extra is not installed"
)


async def speech_emulator() -> RecordingEmulator:
    """A recording emulator with the speech engine, its model loaded."""
    from pulse_trio.emulator import WhisperEngine  # noqa: PLC0415 - the extra's

    engine = WhisperEngine()
    await engine.prepare()
    return RecordingEmulator(engine=engine)


def token_turn(words: list[str]) -> bytes:
    return encode(words, encoding="linear16", sample_rate=SAMPLE_RATE, trail=0.3)


# -- an emulator that records what clients send ----------------------------------


@attrs.define
class Handshake:
    target: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@attrs.define
class Connection:
    """What one accepted connection received, in order, and how it ended."""

    received: list[bytes | str] = attrs.field(factory=list)
    close_code: int | None = None

    @property
    def texts(self) -> list[Any]:
        return [json.loads(item) for item in self.received if isinstance(item, str)]

    @property
    def binary(self) -> list[bytes]:
        return [item for item in self.received if isinstance(item, bytes)]


class RecordingEmulator(Emulator):
    """The emulator, unchanged, plus a record of handshakes and messages.

    ``handle`` sees every upgrade request before ``check_request`` decides it;
    ``_run`` is wrapped only to observe the session's inputs and the close.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handshakes_seen: list[Handshake] = []
        self.sessions: list[Connection] = []

    async def handle(self, request: WebSocketRequest) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
        self.handshakes_seen.append(Handshake(request.path, headers))
        await super().handle(request)

    async def _run(self, ws: WebSocketConnection, session: ServerSession) -> None:
        record = Connection()
        self.sessions.append(record)
        audio, control = session.audio, session.control

        def on_audio(data: bytes) -> list[Any]:
            record.received.append(data)
            return audio(data)

        def on_control(text: str) -> list[Any]:
            record.received.append(text)
            return control(text)

        session.audio = on_audio  # type: ignore[method-assign]
        session.control = on_control  # type: ignore[method-assign]
        try:
            await super()._run(ws, session)
        finally:
            record.close_code = ws.closed.code if ws.closed is not None else None


async def in_thread(function: Any, *args: Any) -> Any:
    """Run a blocking call (an ``asyncio.run``) without blocking the emulator."""
    return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


# -- smallestai (the official Python SDK) -----------------------------------------


@pytest.fixture
def sdk() -> SimpleNamespace:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        smallestai = pytest.importorskip("smallestai")
        environment = pytest.importorskip("smallestai.environment")
        helpers = pytest.importorskip("smallestai.waves.helpers")
        types = pytest.importorskip("smallestai.waves.speech_to_text.types")
        # Imported here so that the legacy-client warning is not raised in the thread.
        pytest.importorskip("smallestai.waves.speech_to_text.client")
    return SimpleNamespace(
        AsyncSmallestAI=smallestai.AsyncSmallestAI,
        SmallestAIEnvironment=environment.SmallestAIEnvironment,
        stream_speech_to_text=helpers.stream_speech_to_text,
        FinalizeSignal=types.FinalizeSignal,
        CloseStream=types.CloseStream,
        version=importlib.metadata.version("smallestai"),
    )


def sdk_client(sdk: SimpleNamespace, url: str, key: str = "test-key") -> Any:
    """An async client whose every base URL is the emulator (``waves_ws`` is the one used)."""
    http = url.replace("ws://", "http://", 1)
    environment = sdk.SmallestAIEnvironment(atoms=http, waves=http, waves_ws=url, payment=http)
    return sdk.AsyncSmallestAI(api_key=key, environment=environment)


def run_sdk_session(sdk: SimpleNamespace, url: str, **options: Any) -> list[Any]:
    """Two turns: audio, finalize; audio, close_stream. Returns every event received."""

    async def session() -> list[Any]:
        events: list[Any] = []
        client = sdk_client(sdk, url)
        async with asyncio.timeout(20):
            stream = sdk.stream_speech_to_text(
                client, language="en", sample_rate=SAMPLE_RATE, encoding="linear16", **options
            )
            async with stream as socket:

                async def consume() -> None:
                    async for event in socket:
                        events.append(event)
                        if getattr(event, "is_last", False):
                            return

                consumer = asyncio.create_task(consume())
                first, second = (token_turn(words) for words in TURNS)
                for start in range(0, len(first), 4096):
                    await socket.send_audio_chunk_out(first[start : start + 4096])
                await socket.send_finalize_signal(sdk.FinalizeSignal(type="finalize"))
                for start in range(0, len(second), 4096):
                    await socket.send_audio_chunk_out(second[start : start + 4096])
                await socket.send_close_stream(sdk.CloseStream(type="close_stream"))
                await consumer
        return events

    return asyncio.run(session())


def run_sdk_speech(sdk: SimpleNamespace, url: str) -> list[Any]:
    """The speech sample a sentence at a time: finalize after each but the last,
    then close_stream. Returns every event received."""

    async def session() -> list[Any]:
        events: list[Any] = []
        client = sdk_client(sdk, url)
        async with asyncio.timeout(90):
            stream = sdk.stream_speech_to_text(
                client, language="en", sample_rate=SAMPLE_RATE, encoding="linear16"
            )
            async with stream as socket:

                async def consume() -> None:
                    async for event in socket:
                        events.append(event)
                        if getattr(event, "is_last", False):
                            return

                consumer = asyncio.create_task(consume())
                sentences = sample_sentences()
                for index, audio in enumerate(sentences):
                    for start in range(0, len(audio), 4096):
                        await socket.send_audio_chunk_out(audio[start : start + 4096])
                    if index < len(sentences) - 1:
                        await socket.send_finalize_signal(sdk.FinalizeSignal(type="finalize"))
                await socket.send_close_stream(sdk.CloseStream(type="close_stream"))
                await consumer
        return events

    return asyncio.run(session())


def open_sdk_stream(sdk: SimpleNamespace, url: str, key: str, *, raw: bool = False) -> Any:
    """Open a stream, close it at once; return the exception raised, or None.

    ``raw`` uses the generated ``stream()`` with no options instead of the helper.
    """

    async def attempt() -> Any:
        client = sdk_client(sdk, url, key)
        try:
            async with asyncio.timeout(10):
                if raw:
                    stream = client.waves.speech_to_text.stream()
                else:
                    stream = sdk.stream_speech_to_text(client, language="en")
                async with stream as socket:
                    await socket.send_close_stream(sdk.CloseStream(type="close_stream"))
                    async for event in socket:
                        if getattr(event, "is_last", False):
                            break
        except Exception as exc:
            return exc
        return None

    return asyncio.run(attempt())


@LEGACY_WEBSOCKETS
async def test_smallestai_sdk_session_gets_exactly_the_words(sdk: SimpleNamespace) -> None:
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(RecordingEmulator().serve)
        with trio.fail_after(30):
            events = await in_thread(run_sdk_session, sdk, emulator.url())
        nursery.cancel_scope.cancel()

    finals = [event for event in events if event.is_final]
    assert [event.transcript for event in finals] == [" ".join(words) for words in TURNS]
    assert [event.from_finalize for event in finals] == [True, False]
    assert [event.is_last for event in finals] == [False, True]
    assert all(event.transcript == event.transcription for event in events)

    (handshake,) = emulator.handshakes_seen
    assert handshake.path == "/waves/v1/stt/live"
    assert handshake.query == {
        "model": "pulse",
        "language": "en",
        "sample_rate": "16000",
        "encoding": "linear16",
    }
    assert handshake.header("Authorization") == "Bearer test-key"
    assert handshake.header("X-Source") == "smallest-python-sdk"
    assert handshake.header("X-Fern-SDK-Name") == "smallest-ai"
    assert handshake.header("X-Fern-SDK-Version") == sdk.version

    (connection,) = emulator.sessions
    assert connection.texts == [FINALIZE, CLOSE_STREAM]
    assert b"".join(connection.binary) == b"".join(token_turn(words) for words in TURNS)
    assert connection.close_code == 1000


@LEGACY_WEBSOCKETS
@needs_speech
async def test_smallestai_sdk_session_hears_speech(sdk: SimpleNamespace) -> None:
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start((await speech_emulator()).serve)
        with trio.fail_after(120):
            events = await in_thread(run_sdk_speech, sdk, emulator.url())
        nursery.cancel_scope.cancel()

    finals = [event for event in events if event.is_final]
    heard = " ".join(event.transcript for event in finals if event.transcript)
    assert word_error_rate(REFERENCE, heard) <= 0.10, heard
    # One final per finalize (two), then the last sentence's with is_last.
    assert [(event.from_finalize, event.is_last) for event in finals] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert all(event.transcript for event in finals)
    (handshake,) = emulator.handshakes_seen
    assert handshake.query["encoding"] == "linear16"


@LEGACY_WEBSOCKETS
async def test_smallestai_sdk_options_reach_the_emulator(sdk: SimpleNamespace) -> None:
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(RecordingEmulator().serve)
        with trio.fail_after(30):
            events = await in_thread(
                lambda: run_sdk_session(
                    sdk,
                    emulator.url(),
                    word_timestamps=True,
                    vad_events=True,
                    numerals=True,
                    keywords=["hello:2", "world"],
                    eou_timeout_ms=1000,
                )
            )
        nursery.cancel_scope.cancel()

    (handshake,) = emulator.handshakes_seen
    assert handshake.query["word_timestamps"] == "true"
    assert handshake.query["vad_events"] == "true"
    assert handshake.query["numerals"] == "true"
    assert handshake.query["keywords"] == "hello:2,world"
    # Voice-activity events have no model of their own in the SDK: they come as
    # TranscriptionEvent with the event's type and an extra ``timestamp``.
    kinds = [event.type for event in events]
    assert kinds.count("speech_started") == 2
    assert kinds.count("speech_ended") == 2
    finals = [event for event in events if event.is_final]
    assert [[word.word for word in event.words] for event in finals] == list(TURNS)


@LEGACY_WEBSOCKETS
async def test_smallestai_sdk_refusals_are_http_statuses(sdk: SimpleNamespace) -> None:
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(RecordingEmulator(api_keys={"good"}).serve)
        url = emulator.url()
        with trio.fail_after(30):
            bad_key = await in_thread(open_sdk_stream, sdk, url, "wrong")
            # ``stream()`` itself sends no query parameters, so no model: 400.
            no_model = await in_thread(lambda: open_sdk_stream(sdk, url, "good", raw=True))
            good = await in_thread(open_sdk_stream, sdk, url, "good")
        nursery.cancel_scope.cancel()

    assert getattr(bad_key, "status_code", None) == 401, repr(bad_key)
    assert getattr(no_model, "status_code", None) == 400, repr(no_model)
    assert good is None
    assert [h.query.get("model") for h in emulator.handshakes_seen] == ["pulse", None, "pulse"]
    assert len(emulator.sessions) == 1  # refused handshakes open no session


# -- Pipecat's SmallestSTTService (in its own interpreter) -------------------------

PIPECAT_DRIVER = r'''
"""Run pipecat's SmallestSTTService against a Pulse-compatible server; print what it saw."""
import asyncio
import json
import sys

from loguru import logger

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.smallest.stt import SmallestSTTService

try:  # pipecat >= 1.3
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.workers.runner import WorkerRunner
except ImportError:  # older releases
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineParams
    from pipecat.pipeline.task import PipelineTask as PipelineWorker

    WorkerRunner = None

logger.remove()
logger.add(sys.stderr, level="WARNING")

base_url, sample_rate = sys.argv[1], int(sys.argv[2])
turns = [bytes.fromhex(turn) for turn in json.load(sys.stdin)]
result = {"finals": [], "interims": [], "errors": [], "keepalive_shortened": False}
final_seen = asyncio.Event()


class Collect(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            result["finals"].append(frame.text)
            final_seen.set()
        elif isinstance(frame, InterimTranscriptionFrame):
            result["interims"].append(frame.text)
        elif isinstance(frame, ErrorFrame):
            result["errors"].append(str(frame.error))
        await self.push_frame(frame, direction)


async def main():
    stt = SmallestSTTService(api_key="test-key", base_url=base_url)
    # The service idles 10 s before its keepalive; shorten that to see one here.
    if hasattr(stt, "_keepalive_timeout") and hasattr(stt, "_keepalive_interval"):
        stt._keepalive_timeout, stt._keepalive_interval = 0.5, 0.2
        result["keepalive_shortened"] = True
    worker = PipelineWorker(
        Pipeline([stt, Collect()]),
        params=PipelineParams(audio_in_sample_rate=sample_rate),
        idle_timeout_secs=None,
    )

    async def feed():
        frame_bytes = sample_rate // 50 * 2  # 20 ms of linear16, as a transport sends
        for audio in turns:
            final_seen.clear()
            await worker.queue_frame(VADUserStartedSpeakingFrame())
            for start in range(0, len(audio), frame_bytes):
                chunk = audio[start : start + frame_bytes]
                await worker.queue_frame(
                    InputAudioRawFrame(audio=chunk, sample_rate=sample_rate, num_channels=1)
                )
            await asyncio.sleep(0.1)
            await worker.queue_frame(VADUserStoppedSpeakingFrame())
            await asyncio.wait_for(final_seen.wait(), 10)
        await asyncio.sleep(1.5)  # idle: the keepalive goes out
        await worker.queue_frame(VADUserStoppedSpeakingFrame())  # a turn with no audio
        await asyncio.sleep(0.3)
        await worker.queue_frame(EndFrame())

    async def run():
        if WorkerRunner is not None:
            runner = WorkerRunner(handle_sigint=False)
            await runner.add_workers(worker)
            await runner.run()
        else:
            await PipelineRunner(handle_sigint=False).run(worker)

    async with asyncio.timeout(60):
        await asyncio.gather(run(), feed())
    print("RESULT " + json.dumps(result), flush=True)


asyncio.run(main())
'''


async def test_pipecat_smallest_stt_gets_exactly_the_words(
    pipecat_python: str, tmp_path: Path
) -> None:
    driver = tmp_path / "pipecat_driver.py"
    driver.write_text(PIPECAT_DRIVER)
    turns = json.dumps([token_turn(words).hex() for words in TURNS]).encode()
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(RecordingEmulator().serve)
        with trio.fail_after(120):
            process = await trio.run_process(
                [pipecat_python, str(driver), emulator.url(), str(SAMPLE_RATE)],
                stdin=turns,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=tmp_path,
            )
        nursery.cancel_scope.cancel()

    stdout = process.stdout.decode(errors="replace")
    stderr = process.stderr.decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, f"driver failed:\n{stdout}\n{stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["errors"] == []
    assert result["finals"] == [" ".join(words) for words in TURNS]
    assert result["interims"] == ["hello", "hello world", "second", "second turn"]

    (handshake,) = emulator.handshakes_seen
    assert handshake.path == "/waves/v1/stt/live"
    query = handshake.query
    assert {k: query[k] for k in ("model", "language", "encoding", "sample_rate")} == {
        "model": "pulse",
        "language": "en",
        "encoding": "linear16",
        "sample_rate": str(SAMPLE_RATE),
    }
    assert "keywords" not in query  # omitted when empty
    assert handshake.header("Authorization") == "Bearer test-key"
    assert handshake.header("X-Source") == "pipecat"
    assert handshake.header("X-Pipecat-Version")

    (connection,) = emulator.sessions
    # One finalize per VADUserStoppedSpeakingFrame, the audio-less one included;
    # Pipecat never sends close_stream: it closes the socket (1000) on EndFrame.
    assert connection.texts == [FINALIZE, FINALIZE, FINALIZE]
    assert connection.close_code == 1000
    audio = b"".join(token_turn(words) for words in TURNS)
    frames, sent = connection.binary, 0
    while sent < len(audio):
        sent += len(frames.pop(0))
    assert b"".join(connection.binary)[:sent] == audio
    if result["keepalive_shortened"]:
        # What follows the audio is keepalive: 100 ms of 16-bit zero samples a frame.
        assert frames
        assert all(frame == bytes(SAMPLE_RATE // 5) for frame in frames)


@needs_speech
async def test_pipecat_smallest_stt_hears_speech(pipecat_python: str, tmp_path: Path) -> None:
    driver = tmp_path / "pipecat_driver.py"
    driver.write_text(PIPECAT_DRIVER)
    turns = json.dumps([audio.hex() for audio in sample_sentences()]).encode()
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start((await speech_emulator()).serve)
        with trio.fail_after(180):
            process = await trio.run_process(
                [pipecat_python, str(driver), emulator.url(), str(SAMPLE_RATE)],
                stdin=turns,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=tmp_path,
            )
        nursery.cancel_scope.cancel()

    stdout = process.stdout.decode(errors="replace")
    stderr = process.stderr.decode(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, f"driver failed:\n{stdout}\n{stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["errors"] == []
    heard = " ".join(text for text in result["finals"] if text)
    assert word_error_rate(REFERENCE, heard) <= 0.10, result
    assert len([text for text in result["finals"] if text]) == 3, result


def test_pipecat_driver_compiles() -> None:
    # Keeps the embedded driver honest where Pipecat is not installed.
    compile(PIPECAT_DRIVER, "pipecat_driver.py", "exec")
