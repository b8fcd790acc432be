"""The speech engine (``WhisperEngine``, the ``local`` extra) as a client sees it.

The shipped sample (examples/speech.wav, three sentences a second apart) goes
through ``open_session()`` against the emulator over in-memory streams, and
the tests check what PROTOCOL.md §3-§4 promise: the words (word error rate at
most 10% against examples/speech.txt), interims before the final, one final
per finalize (also mid-utterance), automatic finals at the pauses, voice
events, word times in connection time, resampled encodings, two sessions at
once and the concurrency limit's 1008. The model loads once per test run.

Skipped when the extra is not installed; ``.ci/run`` installs it. What happens
without the extra is tested by hiding its modules.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from pulse_core import Encoding, Event, SpeechEnded, SpeechStarted, Transcript
from pulse_trio import Session, open_session
from pulse_trio._g711 import linear16_to_mulaw
from pulse_trio.emulator import (
    Accept,
    Emulator,
    EngineUnavailableError,
    TokenEngine,
    check_request,
    choose_engine,
)
from pulse_trio.emulator._engines import speech_engine_missing, speech_max_sessions
from tests.emulator.test_emulator import FINALIZE, dial, serving, until_closed
from tests.speech import REFERENCE, sample_pcm, sample_sentences, word_error_rate

pytestmark = pytest.mark.skipif(
    speech_engine_missing() is not None, reason="the local extra is not installed"
)

KEY = "sk_speech_engine_test_key"
URL = "ws://127.0.0.1:8765"  # reached in memory, never dialled
RATE = 16000
CHUNK = RATE // 10 * 2  # 100 ms of 16-bit audio
SENTENCES = REFERENCE.splitlines()


@pytest.fixture(scope="session")
def model() -> Any:
    """The model, loaded once for the whole run (every engine shares it)."""
    from pulse_trio.emulator._whisper_engine import load_model  # noqa: PLC0415

    return load_model()


@pytest.fixture
def engine(model: Any) -> Any:
    from pulse_trio.emulator import WhisperEngine  # noqa: PLC0415

    engine = WhisperEngine()
    engine.load()
    return engine


@asynccontextmanager
async def session_with(
    emulator: Emulator, **settings: Any
) -> AsyncIterator[tuple[Session, list[Event]]]:
    events: list[Event] = []
    # Sent faster than real time, the audio waits for the model: wait for it.
    options: dict[str, Any] = {"close_timeout": 60.0, "finalize_timeout": 30.0}
    options["encoding"] = settings.pop("encoding", "linear16")
    options["sample_rate"] = settings.pop("sample_rate", RATE)
    async with open_session(
        KEY,
        base_url=URL,
        connector=emulator.memory_connector(),
        settings={"language": "en", **settings},
        **options,
    ) as session:
        session.event_handler("on_event")(events.append)
        yield session, events


def finals(events: list[Event]) -> list[Transcript]:
    return [e for e in events if isinstance(e, Transcript) and e.is_final]


def text_of(events: list[Event]) -> str:
    return " ".join(e.text for e in finals(events) if e.text)


async def send(session: Session, audio: bytes, chunk: int = CHUNK) -> None:
    for offset in range(0, len(audio), chunk):
        await session.send_audio(audio[offset : offset + chunk])


async def until(events: list[Event], predicate: Any, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not any(predicate(event) for event in events):
            await trio.sleep(0.02)


# -- the shipped sample ------------------------------------------------------------


async def test_the_sample_is_transcribed_with_pauses_as_finals(engine: Any) -> None:
    pcm = sample_pcm()
    with trio.fail_after(90):
        async with session_with(
            Emulator(engine=engine), word_timestamps=True, vad_events=True, full_transcript=True
        ) as (session, events):
            await send(session, pcm)
    said = finals(events)
    heard = text_of(events)
    assert word_error_rate(REFERENCE, heard) <= 0.10, heard
    # PROTOCOL.md §4: endpointing gives each sentence (a second of silence
    # after each) its own final; the last one comes with is_last.
    assert len([f for f in said if f.text]) == len(SENTENCES), [f.text for f in said]
    assert said[-1].is_last
    for final, sentence in zip([f for f in said if f.text], SENTENCES, strict=True):
        assert word_error_rate(sentence, final.text) <= 0.2, (sentence, final.text)
    # Word times are in connection time: increasing, within the audio.
    times = [(w.start, w.end) for f in said for w in f.words]
    assert times and all(start <= end for start, end in times)
    assert all(a[1] <= b[0] + 0.05 for a, b in itertools.pairwise(times))
    assert 0 <= times[0][0] < 0.6 and times[-1][1] <= len(pcm) / 2 / RATE + 0.05
    # vad_events: one start and one end around each sentence, in order.
    kinds = [type(e) for e in events if isinstance(e, SpeechStarted | SpeechEnded)]
    assert kinds == [SpeechStarted, SpeechEnded] * len(SENTENCES)
    assert said[-1].full_transcript is not None
    assert word_error_rate(REFERENCE, said[-1].full_transcript) <= 0.10


async def test_interims_come_before_the_final_and_a_finalize_mid_utterance_answers_once(
    engine: Any,
) -> None:
    pcm = sample_pcm()
    half = 2 * round(RATE * 2.4)  # "This recording was made by a ..." and no further
    with trio.fail_after(90):
        async with session_with(Emulator(engine=engine), endpointing=False) as (session, events):
            # Real-time pace, so the engine has time for interims.
            for offset in range(0, half, CHUNK):
                await session.send_audio(pcm[offset : offset + CHUNK])
                await trio.sleep(0.1)
            await until(events, lambda e: isinstance(e, Transcript) and not e.is_final and e.text)
            assert not finals(events)
            await session.finalize()
            await until(events, lambda e: isinstance(e, Transcript) and e.finalized)
            first = finals(events)
            # The rest of the sample, then another finalize.
            await send(session, pcm[half:])
            await session.finalize()
            await until(events, lambda e: len(finals(events)) >= 2)
    answered = [f for f in finals(events) if f.finalized]
    # PROTOCOL.md §3: one final per finalize, whatever the audio was doing.
    assert len(answered) == 2
    assert len(first) == 1 and first[0].from_finalize is True
    interims = [e for e in events[: events.index(first[0])] if isinstance(e, Transcript) and e.text]
    assert interims and not any(i.is_final for i in interims)
    assert "recording" in first[0].text.lower()
    assert "aloud" not in first[0].text.lower()  # only what was said before the finalize
    assert word_error_rate(REFERENCE, text_of(events)) <= 0.2, text_of(events)


async def test_max_words_ends_a_segment_at_that_many_words(engine: Any) -> None:
    sentence = sample_sentences()[0]
    with trio.fail_after(60):
        async with session_with(Emulator(engine=engine), max_words=4) as (session, events):
            for offset in range(0, len(sentence), CHUNK):  # real time: interims come
                await session.send_audio(sentence[offset : offset + CHUNK])
                await trio.sleep(0.1)
    said = [f for f in finals(events) if f.text]
    # PROTOCOL.md §4: the server's own final once a segment has max_words words;
    # the audio after the fourth word opens the next segment.
    assert len(said) >= 2, [f.text for f in said]
    assert len(said[0].text.split()) == 4 and said[0].from_finalize is False
    assert said[0].words[-1].end <= said[1].words[0].start + 0.05
    assert word_error_rate(SENTENCES[0], text_of(events)) <= 0.3, text_of(events)


async def test_a_finalize_before_any_speech_gets_an_empty_final(engine: Any) -> None:
    with trio.fail_after(30):
        async with session_with(Emulator(engine=engine)) as (session, events):
            await send(session, bytes(RATE))  # half a second of silence
            await session.finalize()
            await until(events, lambda e: isinstance(e, Transcript) and e.finalized)
    assert [f.text for f in finals(events)] == ["", ""]  # the finalize's, then close's


async def test_telephone_audio_is_resampled_for_the_model(engine: Any) -> None:
    import av  # noqa: PLC0415 - the extra's
    import numpy as np  # noqa: PLC0415

    # The first sentence down to 8 kHz (PyAV's resampler), as mu-law.
    pcm = sample_pcm()[: 2 * RATE * 5]
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, "<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = RATE
    narrow = b"".join(
        out.to_ndarray().tobytes()
        for out in [*resampler.resample(frame), *resampler.resample(None)]
    )
    with trio.fail_after(60):
        async with session_with(Emulator(engine=engine), encoding="mulaw", sample_rate=8000) as (
            session,
            events,
        ):
            await send(session, linear16_to_mulaw(narrow), chunk=800)
    assert word_error_rate(SENTENCES[0], text_of(events)) <= 0.2, text_of(events)


def first_sentence_as_ogg_opus() -> bytes:
    """The first sentence in an Ogg Opus stream, encoded by PyAV (libopus)."""
    import io  # noqa: PLC0415

    import av  # noqa: PLC0415 - the extra's
    import numpy as np  # noqa: PLC0415

    pcm = np.frombuffer(sample_sentences()[0], "<i2")
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


async def test_ogg_opus_is_decoded_for_the_model(engine: Any) -> None:
    ogg = first_sentence_as_ogg_opus()
    with trio.fail_after(60):
        async with session_with(
            Emulator(engine=engine), encoding="ogg_opus", sample_rate=48000, word_timestamps=True
        ) as (session, events):
            await send(session, ogg, chunk=1000)
    assert word_error_rate(SENTENCES[0], text_of(events)) <= 0.2, text_of(events)
    (final,) = [f for f in finals(events) if f.text]
    assert 4.5 < final.words[-1].end < 5.2  # connection time, Opus's 48 kHz ticks included


def test_raw_opus_packets_become_model_samples() -> None:
    import av  # noqa: PLC0415 - the extra's
    import numpy as np  # noqa: PLC0415

    from pulse_core import Encoding  # noqa: PLC0415
    from pulse_trio.emulator._speech_audio import ModelAudio  # noqa: PLC0415

    pcm = np.frombuffer(sample_sentences()[0], "<i2")
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 48000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    up = av.AudioResampler(format="s16", layout="mono", rate=48000)
    packets = [bytes(p) for f in up.resample(frame) for p in codec.encode(f)]
    packets += [bytes(p) for p in codec.encode(None)]
    audio = ModelAudio(Encoding.OPUS, 48000)
    samples = np.concatenate([audio.feed(packet) for packet in packets] + [audio.flush()])
    assert abs(audio.seconds - len(pcm) / RATE) < 0.03
    assert abs(len(samples) - len(pcm)) < 0.03 * RATE
    # The same sound: after Opus's pre-skip, the two line up closely.
    reference = pcm.astype(np.float32) / 32768
    lag = int(np.argmax([np.dot(samples[k : k + RATE], reference[:RATE]) for k in range(400)]))
    length = len(reference) - 400
    assert np.corrcoef(samples[lag : lag + length], reference[:length])[0, 1] > 0.95


# -- capacity ------------------------------------------------------------------------


async def test_two_sessions_at_once_each_get_their_own_words(engine: Any) -> None:
    pcm = sample_pcm()
    first_sentence = pcm[: 2 * RATE * 5]
    emulator = Emulator(engine=engine)
    results: dict[str, str] = {}

    async def one(name: str, audio: bytes) -> None:
        async with session_with(emulator) as (session, events):
            await send(session, audio)
        results[name] = text_of(events)

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "whole", pcm)
            nursery.start_soon(one, "first", first_sentence)
    assert word_error_rate(REFERENCE, results["whole"]) <= 0.10, results
    assert word_error_rate(SENTENCES[0], results["first"]) <= 0.2, results
    assert emulator.active == 0


async def test_the_concurrency_limit_is_what_stays_real_time_and_closes_with_1008(
    engine: Any,
) -> None:
    assert engine.max_sessions == speech_max_sessions()
    assert Emulator(engine=engine).max_sessions == engine.max_sessions
    assert Emulator().max_sessions == 100  # the token engine's default is unchanged
    with trio.fail_after(30):
        async with (
            serving(Emulator(engine=engine, max_sessions=1)) as emulator,
            dial(emulator) as first,
        ):
            await first.send_message(FINALIZE)
            assert json.loads(await first.get_message())["from_finalize"] is True
            async with dial(emulator) as second:
                received, reason = await until_closed(second)
            assert reason.code == 1008
            assert [m["type"] for m in received] == ["error"]
            assert "concurrency" in received[0]["message"]
            # The first session goes on.
            await first.send_message(FINALIZE)
            assert json.loads(await first.get_message())["is_final"] is True


async def test_a_client_flooding_control_messages_waits_on_the_socket(engine: Any) -> None:
    """Bounded memory: the queue of answers stops growing; the reader waits instead."""
    from pulse_trio.emulator._whisper_engine import _MAX_JOBS, SpeechSession  # noqa: PLC0415

    decision = check_request(
        "/waves/v1/stt/live?model=pulse&language=en", [("Authorization", "Bearer k")], api_keys=None
    )
    assert isinstance(decision, Accept)
    session = SpeechSession(
        decision.params, engine.stream(Encoding.LINEAR16, RATE), session_id="flood"
    )
    flood = 5 * _MAX_JOBS
    sent: list[Any] = []
    longest = 0

    class Socket:
        def __init__(self) -> None:
            self.messages = [json.dumps({"type": "bogus"})] * flood

        async def get_message(self) -> str:
            nonlocal longest
            longest = max(longest, len(session._jobs))
            if not self.messages:
                await trio.sleep_forever()
            await trio.lowlevel.checkpoint()
            return self.messages.pop()

    async def send(outputs: Any) -> bool:
        await trio.sleep(0.001)  # a slow network
        sent.extend(outputs)
        return True

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.converse, Socket(), send)
            while len(sent) < flood:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert longest <= _MAX_JOBS + 1
    assert all(message["type"] == "error" for message in sent)


# -- without the extra ---------------------------------------------------------------


def test_without_the_extra_whisper_is_refused_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    missing = speech_engine_missing()
    assert missing is not None
    assert "python -m pip install 'pulse-stt[local]'" in missing
    with pytest.raises(EngineUnavailableError, match=r"pip install 'pulse-stt\[local\]'"):
        choose_engine("whisper")
    assert isinstance(choose_engine(), TokenEngine)  # the default falls back


def test_an_unknown_engine_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="token, whisper"):
        choose_engine("vosk")
