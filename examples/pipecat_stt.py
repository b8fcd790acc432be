"""A Pipecat speech-to-text service on pulse's engine that loses no words.

``PulseSTTService`` is a drop-in for Pipecat's ``SmallestSTTService``
(``pipecat.services.smallest.stt``, Pipecat 1.14): the same constructor
(``api_key``, ``base_url``, ``encoding``, ``sample_rate``,
``settings=PulseSTTService.Settings(...)``, ``ttfs_p99_latency``), the same
frames (``InterimTranscriptionFrame`` and ``TranscriptionFrame``, whose
``result`` is the server's message), a finalize when the VAD says the user
stopped speaking (``VADUserStoppedSpeakingFrame``), ``STTUpdateSettingsFrame``
applied mid-conversation, the ``on_connected`` / ``on_disconnected`` /
``on_connection_error`` event handlers and TTFS metrics. What it does
differently is what pulse's engine does (spec/PROTOCOL.md §6), through the
asyncio transport in ``asyncio_transport.py`` next to this file:

* audio given while the socket is connecting or reconnecting is kept and sent,
  and after a reconnect the audio the server had not yet turned into a final
  is replayed with the finalizes still owed, so no word is lost or repeated
  (rule 6); ``SmallestSTTService`` drops audio while it reconnects;
* a settings change finishes the current turn (its final is delivered) before
  the session moves to a connection with the new parameters;
* ``EndFrame`` ends the session with ``close_stream`` and waits for the last
  final, so the words of a turn the VAD never closed are transcribed too;
  ``CancelFrame`` leaves at once;
* a finalize is sent only when audio came since the last one (an empty turn
  would only be answered by an empty final), keepalive is the engine's, and
  audio that could not be replayed is reported as an error, never lost
  silently.

Word timestamps are requested unless the settings say otherwise: word end
times are what lets a replay start exactly where the last final ended
(PROTOCOL §2). ``emotion_detection``, ``gender_detection`` and
``no_format_delay`` are not parameters pulse sends; setting them logs a
warning and the service's defaults apply. Fields of ``Settings.extra`` that
name a ``pulse_core.Settings`` field (``eou_timeout_ms``, ``vad_events``,
``max_words``, ...) are sent; other extras are warned about. Engine options
(reconnect policy, ``replay_seconds``, timeouts) go in ``connection_options``
as ``pulse_core.ConnectionConfig`` fields.

Run it from the repository's root (it imports ``examples.asyncio_transport``)
in an environment with ``pipecat-ai``, ``websockets`` and pulse installed::

    stt = PulseSTTService(
        api_key=os.environ["SMALLEST_API_KEY"],
        settings=PulseSTTService.Settings(language=Language.EN),
    )
    pipeline = Pipeline([transport.input(), stt, ...])
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from loguru import logger
from pipecat import version as pipecat_version
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.smallest.stt import SmallestSTTModel, SmallestSTTSettings
from pipecat.services.stt_latency import SMALLEST_TTFS_P99
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.tracing.service_decorators import traced_stt
from pipecat.utils.types import is_given

import pulse_core
from examples.asyncio_transport import (
    AsyncioSession,
    AuthenticationError,
    SessionFailedError,
    open_session,
)
from pulse_core import (
    AudioDropped,
    Closed,
    ConfigurationError,
    Connected,
    ConnectionFailed,
    Disconnected,
    FinalizeTimedOut,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SettingsApplied,
    State,
    Transcript,
)

__all__ = ["PulseSTTService"]

#: Pipecat settings fields that are Pulse query parameters of the same name.
_SENT = (
    "model",
    "language",
    "word_timestamps",
    "full_transcript",
    "sentence_timestamps",
    "redact_pii",
    "redact_pci",
    "numerals",
    "diarize",
    "endpointing",
    "keywords",
    "format",
    "itn_normalize",
)
#: Pipecat settings fields pulse does not send (the service's defaults apply).
_NOT_SENT = frozenset({"emotion_detection", "gender_detection", "no_format_delay"})


def _pulse_language(language: Language | str) -> str | None:
    """The Pulse language code for a Pipecat language (``Language.EN_US`` is
    ``en``), or ``None`` when Pulse has no such language."""
    code = str(language.value if isinstance(language, Language) else language)
    for candidate in (code, code.split("-", maxsplit=1)[0]):
        try:
            return pulse_core.Language.coerce(candidate).value
        except ValueError:
            continue
    return None


def _check_pulse_2(model: Any, language: Any) -> None:
    """``pulse-2`` is English only; the server would close the socket, so
    refuse before connecting (as ``SmallestSTTService`` does)."""
    if model == SmallestSTTModel.PULSE_2 and language and str(language).split("-")[0] != "en":
        raise ValueError(f"model 'pulse-2' is English-only, got language '{language}'")


class PulseSTTService(STTService):
    """Pulse real-time speech to text on pulse's engine, for Pipecat pipelines.

    A drop-in for ``SmallestSTTService``; see the module docstring for what it
    does that that service does not.

    Event handlers: ``on_connected(service)`` and ``on_disconnected(service)``
    for every socket, reconnects included; ``on_connection_error(service,
    error)`` for every attempt that failed (the engine retries unless the
    failure is permanent); ``on_pulse_event(service, event)`` for every
    ``pulse_core`` event, in order, before the service acts on it (run in
    line: a slow handler holds the session's events back, not loses them).
    """

    Settings = SmallestSTTSettings
    _settings: SmallestSTTSettings

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = "wss://api.smallest.ai",
        encoding: str = "linear16",
        sample_rate: int | None = None,
        settings: SmallestSTTSettings | None = None,
        ttfs_p99_latency: float | None = SMALLEST_TTFS_P99,
        connection_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate everything that can be validated before the pipeline starts.

        ``api_key=None`` reads ``SMALLEST_API_KEY``. ``connection_options`` are
        ``pulse_core.ConnectionConfig`` fields. ``kwargs`` go to Pipecat's
        ``STTService`` (``audio_passthrough``, ``stt_ttfb_timeout``, ``name``, ...).
        Invalid settings raise ``pulse_core.ConfigurationError`` (a ``ValueError``).
        """
        defaults = self.Settings(
            model=SmallestSTTModel.PULSE.value,
            language=Language.EN,
            # Unlike SmallestSTTService: replay alignment needs word end times.
            word_timestamps=True,
            full_transcript=False,
            sentence_timestamps=False,
            redact_pii=False,
            redact_pci=False,
            numerals="auto",
            diarize=False,
            endpointing=True,
            keywords="",
            format=True,
            emotion_detection=True,
            gender_detection=True,
            itn_normalize=False,
            no_format_delay=False,
        )
        if settings is not None:
            self._warn_not_sent(settings.given_fields())
            defaults.apply_update(settings)
        _check_pulse_2(defaults.model, defaults.language)
        # Keepalive is the engine's (PROTOCOL §6 rule 4): Pipecat's stays off.
        super().__init__(
            sample_rate=sample_rate,
            ttfs_p99_latency=ttfs_p99_latency,
            settings=defaults,
            **kwargs,
        )
        self._api_key = api_key if api_key is not None else os.environ.get("SMALLEST_API_KEY")
        self._base_url = base_url
        self._encoding = encoding
        self._options: dict[str, Any] = dict(connection_options or {})
        if ttfs_p99_latency is not None:
            self._options.setdefault("ttfs_p99_latency", ttfs_p99_latency)
        self._options.setdefault(
            "extra_headers", [("X-Source", "pipecat"), ("X-Pipecat-Version", pipecat_version())]
        )
        self._pulse_settings()  # raises ConfigurationError now rather than at start
        self._session: AsyncioSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._leave = asyncio.Event()
        self._register_event_handler("on_pulse_event", sync=True)

    @property
    def session(self) -> AsyncioSession | None:
        """The live pulse session (the settings it uses, ``engine.summary()``),
        or ``None`` before ``StartFrame`` and after the session ended."""
        return self._session

    def can_generate_metrics(self) -> bool:
        """TTFS (Pipecat's STT "TTFB") and usage metrics are reported."""
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        """Pipecat's language as the code Pulse takes, or ``None`` if it has none."""
        return _pulse_language(language)

    # -- settings ------------------------------------------------------------------

    def _warn_not_sent(self, given: Mapping[str, Any]) -> None:
        names = {name for name in given if name in _NOT_SENT}
        names |= {
            name
            for name in given
            if name not in _SENT
            and name not in _NOT_SENT
            and name not in pulse_core.Settings.FIELDS
        }
        if names:
            logger.warning(
                f"{self.name}: Pulse is not sent {', '.join(sorted(names))}; "
                "the service's defaults apply"
            )

    def _pulse_value(self, name: str) -> Any:
        value = getattr(self._settings, name) if name in _SENT else self._settings.extra.get(name)
        if name == "keywords" and value == "":
            return None  # an empty value would register one empty keyword (PROTOCOL §2)
        if name == "language" and isinstance(value, Language):
            return _pulse_language(value) or value.value
        return value

    def _pulse_changes(self, names: Any) -> dict[str, Any]:
        """The ``pulse_core.Settings`` fields for the Pipecat fields ``names``;
        ``None`` (unset in Pipecat) leaves the field unset, to the service."""
        changes: dict[str, Any] = {}
        for name in names:
            if name in _SENT or (
                name in pulse_core.Settings.FIELDS and name in self._settings.extra
            ):
                value = self._pulse_value(name)
                if value is None and name in ("model", "language"):
                    continue  # required parameters: keep the current ones
                changes[name] = value
        return changes

    def _pulse_settings(self) -> pulse_core.Settings:
        names = [*_SENT, *self._settings.extra]
        return pulse_core.Settings().evolve(**self._pulse_changes(names))

    async def _update_settings(self, delta: STTSettings) -> dict[str, Any]:
        """Apply a settings delta; the session finishes the current turn, then
        moves to a connection with the new parameters (nothing is lost)."""
        model = delta.model if is_given(delta.model) else self._settings.model
        language = delta.language if is_given(delta.language) else self._settings.language
        _check_pulse_2(model, _pulse_language(language) if language else language)
        self._warn_not_sent(delta.given_fields())
        changed = await super()._update_settings(delta)
        changes = self._pulse_changes(changed)
        session = self._session
        try:
            self._pulse_settings()  # every field still valid together
            if changes and session is not None and session.state not in _ENDED:
                await session.update_settings(**changes)
        except ConfigurationError as exc:
            self._revert(changed)  # what Pipecat shows stays what the session uses
            # The application's mistake, not the service's: a permanent
            # category would make Pipecat stop giving this service audio.
            await self.push_error(
                f"{self} settings not applied: {exc}",
                exception=exc,
                category=ErrorCategory.APPLICATION,
            )
            return {}
        return changed

    def _revert(self, changed: Mapping[str, Any]) -> None:
        """Put back the values ``changed`` held before an update."""
        declared = {field.name for field in dataclasses.fields(self._settings)}
        for name, old in changed.items():
            if name in declared:
                setattr(self._settings, name, old)
            elif is_given(old):
                self._settings.extra[name] = old
            else:
                self._settings.extra.pop(name, None)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        """Open the session. Audio sent before its socket opens is kept."""
        await super().start(frame)
        if self._runner is None:
            self._leave.clear()
            opened = asyncio.Event()
            self._runner = self.create_task(self._run(opened), name="pulse_session")
            await opened.wait()

    async def stop(self, frame: EndFrame) -> None:
        """End the session: ``close_stream``, then every final up to the last
        one is pushed before the ``EndFrame`` goes on."""
        await super().stop(frame)
        runner, self._runner = self._runner, None
        if runner is not None:
            self._leave.set()
            await runner

    async def cancel(self, frame: CancelFrame) -> None:
        """Leave at once: the socket is closed without waiting for finals."""
        await super().cancel(frame)
        await self._abandon()

    async def cleanup(self) -> None:
        """A pipeline torn down without ``EndFrame`` leaves the session at once."""
        await super().cleanup()
        await self._abandon()

    async def _abandon(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await self.cancel_task(runner)

    async def _run(self, opened: asyncio.Event) -> None:
        """Own the session from start to end (the transport's ``async with``)."""
        try:
            async with open_session(
                self._api_key,
                settings=self._pulse_settings(),
                base_url=self._base_url,
                encoding=self._encoding,
                sample_rate=self.sample_rate,
                **self._options,
            ) as session:
                session.event_handler("on_event")(self._on_event)
                self._session = session
                opened.set()
                await self._leave.wait()
        except AuthenticationError as exc:
            await self._failed(exc, ErrorCategory.AUTHENTICATION)
        except SessionFailedError as exc:
            category = ErrorCategory.CONNECTIVITY
            if exc.failure is not None and exc.failure.status in (400, 404):
                category = ErrorCategory.INVALID_REQUEST
            await self._failed(exc, category)
        except ConfigurationError as exc:
            await self._failed(exc, ErrorCategory.INVALID_REQUEST)
        finally:
            self._session = None
            opened.set()

    async def _failed(self, exc: Exception, category: ErrorCategory) -> None:
        await self.push_error(
            f"{self} session failed: {exc}",
            exception=exc,
            category=category,
            force_treat_as_permanent=True,
        )

    # -- audio and turns -------------------------------------------------------------

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Give the audio to the engine, which keeps it until a final confirms it."""
        session = self._session
        if session is not None and session.state not in _ENDED and not self._leave.is_set():
            with contextlib.suppress(SessionFailedError):  # reported once, by its end
                await session.send_audio(audio)
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pipecat's handling, plus the engine's view of the user's turns."""
        await super().process_frame(frame, direction)
        session = self._session
        if session is None or session.state in _ENDED or self._leave.is_set():
            return
        if isinstance(frame, VADUserStartedSpeakingFrame):
            await session.speech_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            # The engine finalizes the turn (when audio came since the last
            # one) and measures TTFS from here; Pipecat's metric stops at the
            # final that answers it.
            self.request_finalize()
            await session.speech_stopped()

    # -- what the session says -------------------------------------------------------

    async def _on_event(self, event: pulse_core.Event) -> None:
        await self._call_event_handler("on_pulse_event", event)
        if isinstance(event, Transcript):
            await self._on_transcript(event)
        elif isinstance(event, Connected):
            logger.debug(f"{self} connected (connection {event.connection})")
            await self._call_event_handler("on_connected")
        elif isinstance(event, Disconnected):
            logger.debug(f"{self} disconnected: {event.code} {event.reason}")
            await self._call_event_handler("on_disconnected")
        elif isinstance(event, ConnectionFailed):
            logger.warning(f"{self} connection failed: {event.reason}")
            await self._call_event_handler("on_connection_error", event.reason)
        elif isinstance(event, Reconnecting):
            logger.info(f"{self} reconnecting in {event.delay:.2f} s: {event.reason}")
        elif isinstance(event, AudioDropped):
            await self.push_error(
                f"{self} lost {event.bytes} bytes of audio "
                f"({event.start:.2f}-{event.end:.2f} s): {event.reason}",
                category=ErrorCategory.CONNECTIVITY,
            )
        elif isinstance(event, ServerError):
            await self.push_error(
                f"{self} server error: {event.message}", category=ErrorCategory.SERVER
            )
        elif isinstance(event, MalformedMessage):
            logger.warning(f"{self} ignored a server message: {event.error}")
        elif isinstance(event, FinalizeTimedOut):
            logger.warning(f"{self} turn {event.turn} got no final: {event.reason}")
        elif isinstance(event, SettingsApplied):
            logger.debug(f"{self} settings in force: {', '.join(event.changed)}")
        elif isinstance(event, Closed):
            latency = event.summary.latency
            logger.debug(
                f"{self} closed: {event.summary.finals} finals, "
                f"{event.summary.reconnects} reconnects, TTFS p50 {latency.p50} p99 {latency.p99}"
            )

    async def _on_transcript(self, event: Transcript) -> None:
        text = event.text.strip()
        if not text:
            return  # the final answering close_stream may be empty
        result = dict(event.raw)
        if not event.is_final:
            await self.push_frame(
                InterimTranscriptionFrame(
                    text, self._user_id, time_now_iso8601(), event.language, result=result
                )
            )
            return
        if event.finalized:
            self.confirm_finalize()  # marks the frame finalized: TTFS is reported now
        await self._handle_transcription(text, True, event.language)
        await self.emit_stt_usage_metrics()
        await self.push_frame(
            TranscriptionFrame(
                text, self._user_id, time_now_iso8601(), event.language, result=result
            )
        )

    @traced_stt
    async def _handle_transcription(
        self, transcript: str, is_final: bool, language: str | None = None
    ) -> None:
        """Where tracing attaches a final to the STT span."""


_ENDED = frozenset({State.CLOSING, State.CLOSED, State.FAILED})
