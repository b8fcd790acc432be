"""``PulseConnection``: the sans-IO engine of one transcription session.

The engine never touches a socket, a clock or a random number generator. The
transport feeds it inputs (each with ``now``, monotonic seconds) and drains two
queues: ``commands()`` for the transport to carry out in order, and
``events()`` for the application. ``next_deadline()`` says when to call
``handle_timer()``.

One session spans as many WebSocket connections as it takes. The engine keeps
every byte of audio the server has not yet turned into a delivered final (up to
``replay_seconds``), and after a reconnect or a settings switch it sends that
audio again, with the finalize requests still owed, before any new audio. All
times in events are session time: seconds of audio since the session began.
See spec/PROTOCOL.md for the rules and their reasons.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Iterable
from typing import Any, Final, Protocol

from ._audio import OggPageSplitter, opus_packet_ticks
from ._commands import CloseConnection, Command, Connect, SendBinary, SendPing, SendText
from ._config import ConnectionConfig
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    AudioDropped,
    Closed,
    Connected,
    ConnectionFailed,
    Disconnected,
    DropReason,
    Event,
    FinalizeTimedOut,
    LatencySummary,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SessionSummary,
    SettingsApplied,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    UnhandledMessage,
)
from ._messages import (
    ErrorMessage,
    SpeechEndedMessage,
    SpeechStartedMessage,
    TranscriptionMessage,
    UnknownMessage,
    Utterance,
    Word,
    parse_server_message,
)
from ._settings import Settings
from ._state import SOCKET_STATES, TERMINAL_STATES, TRANSITIONS, State, Trigger

__all__ = ["JitterSource", "PulseConnection"]

FINALIZE: Final = '{"type":"finalize"}'
CLOSE_STREAM: Final = '{"type":"close_stream"}'
KEEPALIVE_PING: Final = b"pulse-keepalive"

#: Error codes after which reconnecting cannot help.
PERMANENT_ERROR_CODES: Final = frozenset({"LANGUAGE_NOT_ENABLED_IN_REGION"})
#: Close code the service uses when the account's concurrency limit is reached.
CONCURRENCY_LIMIT_CLOSE: Final = 1008
# Highest Opus bitrate (510 kbit/s), used to bound compressed audio in bytes.
_COMPRESSED_BYTES_PER_SECOND: Final = 64_000
_MAX_MARKS: Final = 4096
# Server times within this many seconds of a jump in session time are taken to
# be at it (the service rounds its timestamps; see _session_ticks).
_JUMP_SNAP: Final = 0.01
_HEADERS_LIMIT: Final = 256 * 1024
_NO_INPUT_STATES: Final = frozenset({State.CLOSING, State.CLOSED, State.FAILED})


class JitterSource(Protocol):
    """Anything with ``random() -> float`` in ``[0, 1)``, e.g. ``random.Random``."""

    def random(self) -> float: ...


class _Finalize:
    """One finalize request and what became of it."""

    __slots__ = ("deadline", "position", "requested_at", "sent_at", "timed_out", "turn", "user")

    def __init__(self, turn: int, position: int, now: float, deadline: float, user: bool) -> None:
        self.turn = turn
        #: Session tick the finalize follows (all audio before it belongs to the turn).
        self.position = position
        self.requested_at = now
        self.deadline = deadline
        self.user = user
        self.sent_at: float | None = None
        self.timed_out = False


class _Latency:
    """TTFS samples, bounded: percentiles over the most recent ``limit``."""

    def __init__(self, limit: int, budget: float) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=limit)
        self.budget = budget
        self.count = 0
        self.total = 0.0
        self.worst = 0.0
        self.over = 0

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.count += 1
        self.total += value
        self.worst = max(self.worst, value)
        if value > self.budget:
            self.over += 1

    def summary(self) -> LatencySummary:
        if not self.count:
            return LatencySummary(budget=self.budget)
        ordered = sorted(self.samples)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

        return LatencySummary(
            count=self.count,
            p50=rank(0.50),
            p90=rank(0.90),
            p99=rank(0.99),
            mean=self.total / self.count,
            max=self.worst,
            budget=self.budget,
            over_budget=self.over,
        )


def _span(words: Iterable[Word | Utterance]) -> tuple[float | None, float | None]:
    starts = [item.start for item in words if item.start is not None]
    ends = [item.end for item in words if item.end is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


class PulseConnection:
    """The protocol engine of one Pulse streaming session.

    Inputs: :meth:`start`, :meth:`connection_opened`, :meth:`connection_failed`,
    :meth:`connection_closed`, :meth:`receive_message`, :meth:`send_audio`,
    :meth:`speech_started`, :meth:`speech_stopped`, :meth:`finalize`,
    :meth:`update_settings`, :meth:`close`, :meth:`handle_timer`.

    Outputs: :meth:`commands` and :meth:`events`, drained after every input.
    """

    def __init__(self, config: ConnectionConfig, *, jitter: JitterSource | None = None) -> None:
        self._config = config
        self._jitter = jitter
        self._state = State.IDLE
        self._now = -math.inf
        self._commands: list[Command] = []
        self._events: list[Event] = []
        self._output_limit = config.max_pending_outputs

        # -- audio format -------------------------------------------------
        encoding = config.encoding
        self._width = encoding.sample_width or 0  # 0: compressed, frames are opaque
        self._tps = config.ticks_per_second
        self._ogg = OggPageSplitter() if encoding.value == "ogg_opus" else None
        self._silence = encoding.silence(config.sample_rate, config.keepalive_silence)
        bytes_per_second = self._tps * self._width if self._width else _COMPRESSED_BYTES_PER_SECOND
        self._retained_limit = max(1, int(config.replay_seconds * bytes_per_second))
        delay_bytes = int(config.max_chunk_delay * self._tps) * self._width
        # Coalesce up to the frame size, but never hold more than the delay bound.
        self._flush_at = max(self._width, min(config.chunk_bytes, delay_bytes))
        self._chunk_bytes = config.chunk_bytes

        # -- audio bookkeeping (positions are session ticks) --------------
        self._pending = bytearray()  # whole and partial samples not yet framed
        self._pending_since: float | None = None
        self._received = 0  # ticks framed so far: the session's write position
        self._retained: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._retained_bytes = 0
        self._replay_from = 0  # everything before is confirmed by a delivered final
        self._gap_end = 0  # [replay_from, gap_end) was sent on the live socket but evicted
        self._gap_bytes = 0
        self._drop: list[Any] | None = None  # [start, end, bytes, reason] not yet reported
        self._streaming = False  # OPEN: frames go out as soon as they are made
        self._sent_upto = 0  # session tick up to which the live socket has audio
        self._max_sent = 0

        # -- the current connection ---------------------------------------
        self._connections = 0
        self._attempt = 0  # consecutive failures
        self._connect_attempt = 0  # the attempt number of the last Connect
        self._opened_at = 0.0
        self._connect_deadline: float | None = None
        self._retry_at: float | None = None
        self._last_wire: float = 0.0  # last audio or keepalive on the socket
        self._last_received: float = -math.inf
        self._conn_base = 0  # session tick of this connection's first audio
        self._conn_ticks = 0  # ticks sent on this connection, keepalive included
        self._mark_starts: list[int] = []  # keepalive silence: where it began (conn ticks)
        self._mark_lens: list[int] = []
        self._mark_cum: list[int] = []  # silence ticks up to and including each mark
        self._mark_base = 0
        self._was_lost = False

        # -- settings -----------------------------------------------------
        self._active_settings: Settings | None = None  # those of the open socket
        self._previous_settings = config.settings  # those of the last socket (or the start)
        self._settings_changed = False  # announce SettingsApplied on next open

        # -- finalize bookkeeping -----------------------------------------
        self._turns = 0
        self._last_finalize_pos = 0
        self._owed: collections.deque[_Finalize] = collections.deque()
        self._inflight: collections.deque[_Finalize] = collections.deque()
        self._orphans = 0  # timed-out finalizes at the head of _inflight
        self._speaking = False

        # -- closing ------------------------------------------------------
        self._close_requested = False
        self._close_deadline: float | None = None

        # -- statistics ---------------------------------------------------
        self._latency = _Latency(config.latency_samples, config.ttfs_p99_latency)
        self._finals = 0
        self._finalized = 0
        self._timed_out = 0
        self._reconnects = 0
        self._dropped_bytes = 0
        self._dropped_ticks = 0
        self._keepalives = 0

    # ------------------------------------------------------------------
    # Introspection
    # ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def config(self) -> ConnectionConfig:
        """The configuration in force (its settings are the latest requested)."""
        return self._config

    @property
    def settings(self) -> Settings:
        return self._config.settings

    @property
    def buffered_bytes(self) -> int:
        """Audio held by the engine: kept for replay, or not yet framed."""
        return self._retained_bytes + len(self._pending)

    @property
    def pending_finalizes(self) -> int:
        """Finalize requests not yet answered or timed out."""
        return len(self._inflight) - self._orphans + len(self._owed)

    def summary(self) -> SessionSummary:
        """What has happened so far (also delivered in ``Closed``)."""
        return SessionSummary(
            audio_seconds_received=self._received / self._tps,
            audio_seconds_sent=self._max_sent / self._tps,
            finals=self._finals,
            finalized_turns=self._finalized,
            timed_out_turns=self._timed_out,
            connections=self._connections,
            reconnects=self._reconnects,
            dropped_bytes=self._dropped_bytes,
            dropped_seconds=self._dropped_ticks / self._tps,
            keepalives=self._keepalives,
            latency=self._latency.summary(),
        )

    # ------------------------------------------------------------------
    # Outputs
    # ------------------------------------------------------------------

    def commands(self) -> list[Command]:
        """Take the commands for the transport, oldest first."""
        commands, self._commands = self._commands, []
        return commands

    def events(self) -> list[Event]:
        """Take the events for the application, oldest first."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: no timer)."""
        if self._state in TERMINAL_STATES:
            return None
        candidates: list[float] = []
        if self._pending_since is not None and len(self._pending) >= self._width:
            candidates.append(self._pending_since + self._config.max_chunk_delay)
        if self._state in (State.OPEN, State.DRAINING):
            candidates.append(self._last_wire + self._config.keepalive_interval)
        finalize = self._next_finalize()
        if finalize is not None:
            candidates.append(finalize.deadline)
        candidates.extend(
            deadline
            for deadline in (self._connect_deadline, self._retry_at, self._close_deadline)
            if deadline is not None
        )
        return min(candidates) if candidates else None

    # ------------------------------------------------------------------
    # Inputs from the application
    # ------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the session: the engine asks for its first connection."""
        self._input(now)
        if self._state is not State.IDLE:
            raise LocalProtocolError(f"start() in state {self._state.value}: already started")
        self._transition(Trigger.START)
        self._connect(now)

    def send_audio(self, now: float, data: bytes | bytearray | memoryview) -> None:
        """Queue audio. It is sent at once when a socket is open, kept otherwise.

        Empty chunks are ignored. A chunk that ends mid-sample is fine: the
        remainder waits for the next chunk.
        """
        if self._close_requested or self._state in _NO_INPUT_STATES:
            raise LocalProtocolError(self._after_close("send_audio()"))
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} < {self._now}")
        self._now = now
        if len(self._commands) + len(self._events) > self._output_limit:
            raise LocalProtocolError("the transport is not draining commands() and events()")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"audio must be bytes-like, not {type(data).__name__}")
        if not data:
            return
        if not self._width:
            self._compressed_audio(now, data)
            return
        pending = self._pending
        if self._pending_since is None:
            self._pending_since = now
        pending += data
        if len(pending) >= self._flush_at:
            self._frame_pending(now)

    def speech_started(self, now: float) -> None:
        """Local VAD heard speech begin. Bookkeeping only; nothing is sent."""
        self._input(now)
        self._require_open_session("speech_started()")
        self._speaking = True

    def speech_stopped(self, now: float) -> None:
        """Local VAD heard speech end: finalize the turn (TTFS is measured from here)."""
        self._input(now)
        self._require_open_session("speech_stopped()")
        self._speaking = False
        self._request_finalize(now, user=True)

    def finalize(self, now: float) -> bool:
        """Ask for the current turn's final now.

        Returns ``False`` (and sends nothing) when no audio came since the last
        finalize: the server would only answer with an empty final.
        """
        self._input(now)
        self._require_open_session("finalize()")
        return self._request_finalize(now, user=True)

    def update_settings(self, now: float, **changes: Any) -> None:
        """Change settings mid-session (field names of :class:`Settings`).

        Invalid values raise ``ConfigurationError`` before anything happens.
        On an open connection the current turn is finalized first and its
        final delivered; then the engine switches to a connection with the new
        parameters. Audio that arrives meanwhile is kept and sent there.
        """
        self._input(now)
        self._require_open_session("update_settings()")
        target = self._config.settings.evolve(**changes)
        config = self._config.with_settings(target)  # checks the region
        changed = self._config.settings.changed_fields(target)
        if not changed:
            return
        self._config = config
        state = self._state
        if state is State.IDLE:
            self._previous_settings = target
            self._emit(SettingsApplied(settings=target, changed=changed))
            return
        self._settings_changed = True
        if state is State.CONNECTING:
            # The attempt in flight carries the old parameters: start over.
            self._commands.append(CloseConnection(code=1000, reason="settings changed"))
            self._connect_deadline = None
            self._transition(Trigger.SWITCH)
            self._connect(now)
        elif state is State.OPEN:
            # Finish the turn in progress on this connection first, so its
            # pending transcript is not lost with the socket (this frames audio
            # still held for coalescing, and sends nothing if there is none).
            self._request_finalize(now, user=False)
            if self._inflight_live():
                self._transition(Trigger.DRAIN)
                self._streaming = False
            else:
                self._switch(now)
        # BACKOFF: the next connection uses the new settings.
        # DRAINING: the switch already under way picks up the latest settings.

    def close(self, now: float) -> None:
        """End the session gracefully.

        Sends ``close_stream`` once all audio and owed finalizes are out, waits
        for the server's ``is_last`` final (at most ``close_timeout``), then
        closes the socket. Every final arrives before ``Closed``. Idempotent.
        """
        self._input(now)
        state = self._state
        if state in _NO_INPUT_STATES:
            return
        self._close_requested = True
        self._flush_audio(now, closing=True)
        if state is State.IDLE:
            # Never started: whatever audio was given can no longer be sent.
            self._abandon(now, DropReason.NOT_STARTED, "session closed before it started")
            self._finish(now, Trigger.CLOSE_DONE, error=None)
            return
        self._close_deadline = now + self._config.close_timeout
        if state in (State.OPEN, State.DRAINING):
            if state is State.DRAINING:
                # The settings switch is abandoned: send what was held back on
                # this connection rather than open another just to close it.
                self._send_unsent(now)
            self._transition(Trigger.CLOSE)
            self._begin_closing()
        elif not self._owes_anything():
            if state is State.CONNECTING:
                self._commands.append(CloseConnection(code=1000, reason="session closed"))
            self._finish(now, Trigger.CLOSE_DONE, error=None)
        self._flush_drop()
        # Otherwise CONNECTING or BACKOFF with audio still to deliver: the
        # engine carries on connecting and closes once it has replayed.

    # ------------------------------------------------------------------
    # Inputs from the transport
    # ------------------------------------------------------------------

    def connection_opened(self, now: float) -> None:
        """The WebSocket handshake of the last ``Connect`` succeeded."""
        self._input(now)
        if self._state is not State.CONNECTING:
            raise LocalProtocolError(
                f"connection_opened() in state {self._state.value}: no connection attempt"
            )
        self._transition(Trigger.OPENED)
        self._connect_deadline = None
        self._connections += 1
        reconnect = self._was_lost
        if reconnect:
            self._reconnects += 1
            self._was_lost = False
        self._opened_at = now
        self._last_wire = now
        self._last_received = now
        settings = self._config.settings
        self._emit(
            Connected(
                connection=self._connections,
                url=self._config.url(),
                reconnect=reconnect,
                settings=settings,
            )
        )
        if self._settings_changed:
            changed = self._previous_settings.changed_fields(settings)
            self._emit(SettingsApplied(settings=settings, changed=changed))
            self._settings_changed = False
        self._previous_settings = settings
        self._flush_drop()
        self._replay(now)
        self._streaming = True
        if self._close_requested:
            self._transition(Trigger.CLOSE)
            self._streaming = False
            self._begin_closing()

    def connection_failed(
        self,
        now: float,
        *,
        status: int | None = None,
        reason: str = "",
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        """The last ``Connect`` failed: an HTTP status instead of 101, or no
        answer at all (``status=None``: DNS, TCP, TLS or timeout).

        ``permanent=True`` says the transport knows retrying cannot help (for
        example, the server's certificate failed verification).
        """
        self._input(now)
        if self._state is not State.CONNECTING:
            if self._state in SOCKET_STATES:
                raise LocalProtocolError("connection_failed() for a connection that is open")
            return  # about an attempt the engine already abandoned
        self._connect_deadline = None
        self._connect_failed(
            now, status=status, reason=reason, retry_after=retry_after, refused=permanent
        )

    def connection_closed(self, now: float, *, code: int | None = None, reason: str = "") -> None:
        """The WebSocket closed without the engine asking (``code=None``: no
        close frame, e.g. the TCP connection dropped)."""
        self._input(now)
        state = self._state
        if state is State.CONNECTING:
            self._connect_deadline = None
            self._connect_failed(
                now,
                status=None,
                reason=f"closed during handshake: {reason}".rstrip(": "),
                retry_after=None,
            )
        elif state in SOCKET_STATES:
            text = "closed by the server" + (f" with code {code}" if code is not None else "")
            self._connection_lost(
                now,
                code=code,
                reason=reason or "closed by the server",
                summary=f"{text}: {reason}" if reason else text,
            )
        # Other states: a connection the engine already closed.

    def receive_message(self, now: float, data: str | bytes | bytearray | memoryview) -> None:
        """A frame arrived from the server."""
        self._input(now)
        if self._state not in SOCKET_STATES:
            return  # from a connection the engine already closed
        self._last_received = now
        if not isinstance(data, str):
            # The service only sends JSON text; a binary frame is a protocol error.
            self._emit(
                MalformedMessage(error="unexpected binary frame", data=repr(bytes(data[:60])))
            )
            return
        try:
            message = parse_server_message(data, max_size=self._config.max_message_size)
        except RemoteProtocolError as exc:
            self._emit(MalformedMessage(error=str(exc), data=data[:200]))
            return
        if isinstance(message, TranscriptionMessage):
            self._on_transcription(now, message)
        elif isinstance(message, SpeechStartedMessage):
            self._emit(
                SpeechStarted(
                    timestamp=self._session_time(message.timestamp), session_id=message.session_id
                )
            )
        elif isinstance(message, SpeechEndedMessage):
            self._emit(
                SpeechEnded(
                    timestamp=self._session_time(message.timestamp, end=True),
                    session_id=message.session_id,
                )
            )
        elif isinstance(message, ErrorMessage):
            self._on_error(now, message)
        else:
            assert isinstance(message, UnknownMessage)
            self._emit(UnhandledMessage(message_type=message.message_type, raw=message.raw))

    def handle_timer(self, now: float) -> None:
        """Time passed: do whatever was due by ``now``."""
        self._input(now)
        if self._state in TERMINAL_STATES:
            return
        config = self._config
        if (
            self._pending_since is not None
            and now >= self._pending_since + config.max_chunk_delay
            and len(self._pending) >= self._width
        ):
            self._frame_pending(now, everything=True)
        self._expire_finalizes(now)
        if self._state in TERMINAL_STATES:
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            self._close_timed_out(now)
            return
        if self._connect_deadline is not None and now >= self._connect_deadline:
            self._connect_deadline = None
            self._commands.append(CloseConnection(code=1000, reason="connect timed out"))
            self._connect_failed(now, status=None, reason="connect timed out", retry_after=None)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._transition(Trigger.RETRY_DUE)
            self._connect(now)
        if (
            self._state in (State.OPEN, State.DRAINING)
            and now >= self._last_wire + config.keepalive_interval
        ):
            self._keepalive(now)

    # ------------------------------------------------------------------
    # Internals: state and outputs
    # ------------------------------------------------------------------

    def _input(self, now: float) -> None:
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} < {self._now}")
        self._now = now
        if len(self._commands) + len(self._events) > self._output_limit:
            raise LocalProtocolError("the transport is not draining commands() and events()")

    def _after_close(self, what: str) -> str:
        if self._state is State.FAILED:
            return f"{what} after the session failed"
        return f"{what} after close()"

    def _require_open_session(self, what: str) -> None:
        if self._close_requested or self._state in _NO_INPUT_STATES:
            raise LocalProtocolError(self._after_close(what))

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[(self._state, trigger)]
        except KeyError:  # pragma: no cover - the engine only fires valid triggers
            raise AssertionError(f"no transition from {self._state} on {trigger}") from None
        if self._state is not State.OPEN:
            self._streaming = False

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _send_text(self, text: str) -> None:
        self._commands.append(SendText(text))

    # ------------------------------------------------------------------
    # Internals: audio
    # ------------------------------------------------------------------

    def _frame_pending(self, now: float, everything: bool = False) -> None:
        """Cut whole samples from the pending buffer into frames."""
        pending = self._pending
        size = len(pending)
        usable = size - size % self._width
        if not everything and usable < self._flush_at:
            return
        data = bytes(pending[:usable])
        del pending[:usable]
        # The clock runs from here while bytes stay held; only whole samples
        # make a deadline (next_deadline ignores a lone partial sample).
        self._pending_since = now if pending else None
        chunk = self._chunk_bytes
        if usable <= chunk:
            self._add_frame(now, data, usable // self._width)
            return
        for offset in range(0, usable, chunk):
            frame = data[offset : offset + chunk]
            self._add_frame(now, frame, len(frame) // self._width)

    def _compressed_audio(self, now: float, data: bytes | bytearray | memoryview) -> None:
        if self._ogg is None:
            # Raw Opus: every chunk is one packet, sent as it is (packets have
            # no framing of their own, so they are never merged or split).
            packet = bytes(data)
            self._add_frame(now, packet, opus_packet_ticks(packet))
            return
        for page, ticks in self._ogg.feed(data):
            self._add_frame(now, page, ticks)
        if len(self._ogg.headers) > _HEADERS_LIMIT:
            raise LocalProtocolError("Ogg stream headers exceed 256 KiB; is this Ogg Opus?")

    def _add_frame(self, now: float, data: bytes, ticks: int) -> None:
        start = self._received
        end = start + ticks
        self._received = end
        self._retained.append((start, end, data))
        self._retained_bytes += len(data)
        if self._streaming:
            self._commands.append(SendBinary(data))
            self._sent_upto = end
            self._conn_ticks += ticks
            self._last_wire = now
            self._max_sent = max(self._max_sent, end)
        if self._retained_bytes > self._retained_limit:
            self._evict()

    def _flush_audio(self, now: float, *, closing: bool = False) -> None:
        """Frame everything held (finalize and close must not wait for coalescing)."""
        if self._width:
            if len(self._pending) >= self._width:
                self._frame_pending(now, everything=True)
            if closing and self._pending:
                # Half a sample can never be sent: report it.
                start = self._received
                self._note_drop(start, start, len(self._pending), DropReason.PARTIAL_SAMPLE)
                self._pending.clear()
                self._pending_since = None
        elif closing and self._ogg is not None and self._ogg.pending:
            # An unfinished Ogg page at the end: send it as it is.
            self._add_frame(now, self._ogg.flush(), 0)

    def _evict(self) -> None:
        """Forget the oldest audio until the replay buffer fits its bound."""
        retained = self._retained
        live = self._state in SOCKET_STATES
        while self._retained_bytes > self._retained_limit and retained:
            start, end, data = retained.popleft()
            self._retained_bytes -= len(data)
            low = max(start, self._replay_from)
            if end <= low and end > start:
                continue  # already confirmed
            nbytes = self._span_bytes(start, end, len(data), low)
            if live and end <= self._sent_upto:
                # The server has it; it only becomes a loss if this socket dies
                # before a final confirms it.
                self._gap_end = end
                self._gap_bytes += nbytes
            else:
                self._note_drop(low, end, nbytes, DropReason.REPLAY_OVERFLOW)
                if self._gap_end <= self._replay_from:
                    self._replay_from = end
        if live:
            self._flush_drop()

    def _span_bytes(self, start: int, end: int, size: int, low: int) -> int:
        if low <= start:
            return size
        if self._width:
            return (end - low) * self._width
        return size * (end - low) // (end - start) if end > start else size

    def _note_drop(self, start: int, end: int, nbytes: int, reason: DropReason) -> None:
        drop = self._drop
        if drop is not None and drop[1] == start and drop[3] is reason:
            drop[1] = end
            drop[2] += nbytes
            return
        self._flush_drop()
        self._drop = [start, end, nbytes, reason]

    def _flush_drop(self) -> None:
        drop = self._drop
        if drop is None:
            return
        self._drop = None
        start, end, nbytes, reason = drop
        self._dropped_bytes += nbytes
        self._dropped_ticks += end - start
        self._emit(
            AudioDropped(bytes=nbytes, start=start / self._tps, end=end / self._tps, reason=reason)
        )

    def _confirm(self, position: int) -> None:
        """A delivered final covers the audio before ``position``: release it."""
        position = min(position, self._received)
        if position <= self._replay_from:
            return
        if self._gap_end > self._replay_from:
            if position >= self._gap_end:
                self._gap_end = 0
                self._gap_bytes = 0
            else:
                covered = position - self._replay_from
                total = self._gap_end - self._replay_from
                self._gap_bytes -= self._gap_bytes * covered // total
        self._replay_from = position
        retained = self._retained
        while retained and retained[0][1] <= position and retained[0][1] > retained[0][0]:
            self._retained_bytes -= len(retained.popleft()[2])
        # Zero-length frames (Ogg pages without a granule) go with the next one.
        while retained and retained[0][1] == retained[0][0] and retained[0][0] < position:
            self._retained_bytes -= len(retained.popleft()[2])

    def _owes_anything(self) -> bool:
        return self._replay_from < self._received or bool(self._owed) or self._inflight_live()

    # ------------------------------------------------------------------
    # Internals: connections
    # ------------------------------------------------------------------

    def _connect(self, now: float) -> None:
        config = self._config
        self._commands.append(
            Connect(
                url=config.url(),
                headers=config.headers(),
                attempt=self._attempt + 1,
                timeout=config.connect_timeout,
            )
        )
        self._connect_attempt = self._attempt + 1
        self._connect_deadline = now + config.connect_timeout

    def _replay(self, now: float) -> None:
        """Send, on a fresh socket, everything the server has not confirmed."""
        commands = self._commands
        if self._ogg is not None and self._ogg.headers:
            # A new connection is a new Ogg stream: it needs the header pages.
            commands.append(SendBinary(self._ogg.headers))
        position = self._replay_from
        owed = self._owed
        if self._last_finalize_pos > position and not (
            owed and owed[-1].position >= self._last_finalize_pos
        ):
            # The last finalize was never answered (it timed out) and its audio
            # is being replayed: ask again, so that turn's text comes now rather
            # than with whatever the speaker says next.
            self._turns += 1
            owed.append(
                _Finalize(
                    self._turns,
                    self._last_finalize_pos,
                    now,
                    now + self._config.finalize_timeout,
                    user=False,
                )
            )
        base: int | None = None
        ticks = 0
        last = self._max_sent
        for start, end, frame in self._retained:
            if end <= position and end > start:
                continue
            while owed and owed[0].position <= start:
                self._send_finalize(now, owed.popleft())
            first = start
            data = frame
            if start < position and self._width:
                data = frame[(position - start) * self._width :]
                first = position
            if base is None:
                base = first
            commands.append(SendBinary(data))
            ticks += end - first
            last = max(last, end)
        while owed:
            self._send_finalize(now, owed.popleft())
        self._conn_base = self._received - ticks if base is None else base
        self._conn_ticks = ticks
        self._sent_upto = self._received
        self._max_sent = last
        self._mark_starts.clear()
        self._mark_lens.clear()
        self._mark_cum.clear()
        self._mark_base = 0
        if ticks:
            self._last_wire = now

    def _send_unsent(self, now: float) -> None:
        """Send frames and finalizes held back on the live socket (DRAINING)."""
        owed = self._owed
        expected = self._sent_upto
        for start, end, data in self._retained:
            if start < self._sent_upto or (end == start and start < self._sent_upto):
                continue
            while owed and owed[0].position <= start:
                self._send_finalize(now, owed.popleft())
            if start > expected:
                # Held audio was dropped (replay bound): the session jumps ahead
                # while this socket's clock does not. Remember it for mapping.
                self._add_mark(expected - start)
            expected = end
            self._commands.append(SendBinary(data))
            self._conn_ticks += end - start
            self._last_wire = now
            self._max_sent = max(self._max_sent, end)
        while owed:
            self._send_finalize(now, owed.popleft())
        self._sent_upto = self._received

    def _switch(self, now: float) -> None:
        """Close the live socket on purpose and connect with the new settings."""
        if self._opened_at + self._config.reconnect.stable_after <= now:
            self._attempt = 0
        self._commands.append(CloseConnection(code=1000, reason="settings changed"))
        self._socket_gone(
            now, code=1000, reason="settings changed", local=True, will_reconnect=True
        )
        self._transition(Trigger.SWITCH if self._state is State.OPEN else Trigger.DRAINED)
        self._connect(now)

    def _socket_gone(
        self, now: float, *, code: int | None, reason: str, local: bool, will_reconnect: bool
    ) -> None:
        """Account for the end of an open socket."""
        self._streaming = False
        self._emit(
            Disconnected(
                connection=self._connections,
                code=code,
                reason=reason,
                local=local,
                will_reconnect=will_reconnect,
            )
        )
        # Finalizes sent on that socket are owed again (before newer ones);
        # timed-out ones are forgotten: their answers can no longer come.
        live = [f for f in self._inflight if not f.timed_out]
        self._inflight.clear()
        self._orphans = 0
        for item in reversed(live):
            item.sent_at = None
            self._owed.appendleft(item)
        # Audio the dead socket had but the replay buffer no longer holds is lost.
        if self._gap_end > self._replay_from:
            self._note_drop(
                self._replay_from, self._gap_end, self._gap_bytes, DropReason.REPLAY_OVERFLOW
            )
        self._gap_end = 0
        self._gap_bytes = 0
        # Everything before the oldest retained frame is now either confirmed
        # or reported dropped.
        oldest = self._retained[0][0] if self._retained else self._received
        self._replay_from = max(self._replay_from, oldest)
        self._sent_upto = self._replay_from
        self._flush_drop()

    def _connection_lost(
        self,
        now: float,
        *,
        code: int | None,
        reason: str,
        local: bool = False,
        summary: str | None = None,
    ) -> None:
        """A socket ended unexpectedly. ``reason`` is the close reason as given
        (for ``Disconnected``); ``summary`` describes the loss (for ``Reconnecting``)."""
        summary = summary or reason
        if self._state is State.CLOSING and not self._owes_anything():
            self._socket_gone(now, code=code, reason=reason, local=local, will_reconnect=False)
            self._finish(now, Trigger.CLOSE_DONE, error=None)
            return
        if self._opened_at + self._config.reconnect.stable_after <= now:
            self._attempt = 0
        self._attempt += 1
        policy = self._config.reconnect
        if policy.max_attempts is not None and self._attempt >= policy.max_attempts:
            self._socket_gone(now, code=code, reason=reason, local=local, will_reconnect=False)
            message = f"gave up after {policy.max_attempts} attempts: {summary}"
            self._emit(
                ConnectionFailed(
                    reason=message,
                    status=None,
                    permanent=True,
                    retry_after=None,
                    attempt=self._attempt,
                    gave_up=True,
                )
            )
            self._fail(now, message)
            return
        self._socket_gone(now, code=code, reason=reason, local=local, will_reconnect=True)
        delay = self._delay()
        if code == CONCURRENCY_LIMIT_CLOSE:
            delay = max(delay, policy.concurrency_delay)
        self._was_lost = True
        self._transition(Trigger.CONNECTION_LOST)
        self._schedule_retry(now, delay, summary)

    def _connect_failed(
        self,
        now: float,
        *,
        status: int | None,
        reason: str,
        retry_after: float | None,
        refused: bool = False,
    ) -> None:
        policy = self._config.reconnect
        self._attempt += 1
        reason = reason or (f"HTTP {status}" if status else "connection failed")
        permanent = refused or (
            status is not None and 400 <= status < 500 and status not in (408, 429)
        )
        if status == 429 and retry_after is not None and retry_after > policy.max_retry_after:
            permanent = True
            reason = f"{reason} (asked to retry after {retry_after:g} s)"
        gave_up = (
            not permanent
            and policy.max_attempts is not None
            and self._attempt >= policy.max_attempts
        )
        if gave_up:
            permanent = True
            reason = f"gave up after {policy.max_attempts} attempts: {reason}"
        self._emit(
            ConnectionFailed(
                reason=reason,
                status=status,
                permanent=permanent,
                retry_after=retry_after,
                attempt=self._attempt,
                gave_up=gave_up,
            )
        )
        if permanent:
            self._fail(now, reason)
            return
        delay = self._delay()
        if retry_after is not None:
            delay = max(delay, retry_after)
        self._was_lost = True
        self._transition(Trigger.CONNECT_FAILED)
        self._schedule_retry(now, delay, reason)

    def _delay(self) -> float:
        draw = self._jitter.random() if self._jitter is not None else 0.0
        return self._config.reconnect.delay(self._attempt, draw)

    def _schedule_retry(self, now: float, delay: float, reason: str) -> None:
        self._retry_at = now + delay
        self._emit(Reconnecting(attempt=self._attempt + 1, delay=delay, reason=reason))
        if self._close_requested and not self._owes_anything():
            self._retry_at = None
            self._finish(now, Trigger.CLOSE_DONE, error=None)

    def _keepalive(self, now: float) -> None:
        """No audio went out for a keepalive interval: send silence (or a ping)."""
        self._last_wire = now
        self._keepalives += 1
        silence = self._silence
        if silence is None:
            # Opus has no byte-level silence; a ping keeps the socket alive.
            self._commands.append(SendPing(KEEPALIVE_PING))
            return
        self._commands.append(SendBinary(silence))
        ticks = len(silence) // self._width
        # The silence shifts the server's clock but not the session's: remember
        # where it went so later timestamps can be mapped back.
        self._add_mark(ticks)
        self._conn_ticks += ticks

    def _add_mark(self, ticks: int) -> None:
        """At this connection's current position, ``ticks`` of connection time
        that are not session time (keepalive silence), or, when negative,
        session time the connection never got (audio dropped while held)."""
        if len(self._mark_starts) >= _MAX_MARKS:
            self._mark_base = self._mark_cum[0]
            del self._mark_starts[0], self._mark_lens[0], self._mark_cum[0]
        previous = self._mark_cum[-1] if self._mark_cum else self._mark_base
        self._mark_starts.append(self._conn_ticks)
        self._mark_lens.append(ticks)
        self._mark_cum.append(previous + ticks)

    def _session_ticks(self, seconds: float, *, end: bool = False) -> float:
        """Map connection time (the server's clock) to session ticks.

        At a jump (audio dropped while held, a negative mark) one connection
        instant is two session instants: the end of the audio before the gap
        and the start of the audio after it. The server rounds its times, so a
        time within ``_JUMP_SNAP`` seconds of a jump is taken to be at it:
        a start (``end=False``) on its far side, an end on its near side.
        """
        ticks = seconds * self._tps
        starts = self._mark_starts
        if not starts:
            return self._conn_base + ticks - self._mark_base
        lens = self._mark_lens
        snap = _JUMP_SNAP * self._tps
        index = bisect.bisect_right(starts, ticks) - 1
        if end:
            if index >= 0 and lens[index] < 0 and ticks - starts[index] <= snap:
                ticks = starts[index]  # the end of the audio before the jump
                index -= 1
        elif index + 1 < len(starts) and lens[index + 1] < 0 and starts[index + 1] - ticks <= snap:
            index += 1
            ticks = starts[index]  # the start of the audio after the jump
        if index < 0:
            adjusted = ticks - self._mark_base
        else:
            begin = starts[index]
            silence_before = self._mark_cum[index] - lens[index]
            if ticks < begin + lens[index]:
                adjusted = begin - silence_before  # inside keepalive silence
            else:
                adjusted = ticks - self._mark_cum[index]
        return self._conn_base + adjusted

    def _session_span(
        self, start: float | None, end: float | None
    ) -> tuple[float | None, float | None]:
        """Map an item's connection-time span to session time (seconds)."""
        tps = self._tps
        if start is None or end is None:
            return (
                None if start is None else self._session_ticks(start) / tps,
                None if end is None else self._session_ticks(end, end=True) / tps,
            )
        first = self._session_ticks(start)
        last = self._session_ticks(end, end=True)
        if first > last:
            # A short item across a jump, both its ends within the snap: put it
            # wholly on the side that holds more of it.
            before = (self._session_ticks(start, end=True), last)
            after = (first, self._session_ticks(end))
            first, last = before if before[1] - before[0] >= after[1] - after[0] else after
        return first / tps, last / tps

    def _session_time(self, seconds: float, *, end: bool = False) -> float:
        return self._session_ticks(seconds, end=end) / self._tps

    # ------------------------------------------------------------------
    # Internals: finalize
    # ------------------------------------------------------------------

    def _request_finalize(self, now: float, *, user: bool) -> bool:
        self._flush_audio(now)
        if self._received <= self._last_finalize_pos:
            return False
        self._turns += 1
        request = _Finalize(
            self._turns, self._received, now, now + self._config.finalize_timeout, user
        )
        self._last_finalize_pos = self._received
        if self.pending_finalizes >= self._config.max_pending_finalizes:
            oldest = self._next_finalize()
            assert oldest is not None
            self._time_out(now, oldest, "too many finalizes pending")
        if self._streaming:
            self._send_finalize(now, request)
        else:
            self._owed.append(request)
        return True

    def _send_finalize(self, now: float, request: _Finalize) -> None:
        self._send_text(FINALIZE)
        request.sent_at = now
        self._inflight.append(request)

    def _inflight_live(self) -> bool:
        return len(self._inflight) > self._orphans

    def _next_finalize(self) -> _Finalize | None:
        """The unanswered finalize that times out first."""
        if len(self._inflight) > self._orphans:
            return self._inflight[self._orphans]
        return self._owed[0] if self._owed else None

    def _time_out(self, now: float, request: _Finalize, reason: str) -> None:
        if request.sent_at is not None:
            request.timed_out = True  # its answer may still come: expect it
            self._orphans += 1
        else:
            self._owed.remove(request)
        self._timed_out += 1
        self._emit(
            FinalizeTimedOut(turn=request.turn, waited=now - request.requested_at, reason=reason)
        )

    def _expire_finalizes(self, now: float) -> None:
        while True:
            request = self._next_finalize()
            if request is None or now < request.deadline:
                break
            stalled = (
                request.sent_at is not None
                and self._state in (State.OPEN, State.CLOSING)
                and self._last_received < request.sent_at
            )  # (when DRAINING, the switch below replaces the socket anyway)
            self._time_out(now, request, "no final within finalize_timeout")
            if stalled:
                # Nothing at all came back since the finalize went out: the
                # connection is wedged. Replace it (the audio is replayed).
                self._commands.append(CloseConnection(code=1011, reason="server stopped answering"))
                self._connection_lost(now, code=1011, reason="server stopped answering", local=True)
                if self._state in TERMINAL_STATES:
                    return
        if self._state is State.DRAINING and not self._inflight_live():
            self._switch(now)

    # ------------------------------------------------------------------
    # Internals: server messages
    # ------------------------------------------------------------------

    def _on_transcription(self, now: float, message: TranscriptionMessage) -> None:
        word_list: list[Word] = []
        for w in message.words:
            first, last = self._session_span(w.start, w.end)
            word_list.append(
                Word(
                    word=w.word,
                    start=first,
                    end=last,
                    confidence=w.confidence,
                    speaker=w.speaker,
                    speaker_confidence=w.speaker_confidence,
                )
            )
        utterance_list: list[Utterance] = []
        for u in message.utterances:
            first, last = self._session_span(u.start, u.end)
            utterance_list.append(Utterance(text=u.text, start=first, end=last, speaker=u.speaker))
        words = tuple(word_list)
        utterances = tuple(utterance_list)
        start, end = _span(words) if words else _span(utterances)
        finalized = False
        late = False
        turn: int | None = None
        latency: float | None = None
        if message.is_final:
            self._finals += 1
            answers = message.from_finalize is True or (
                message.from_finalize is None and bool(self._inflight)
            )
            coverage: int | None = None
            if answers and self._inflight:
                request = self._inflight.popleft()
                coverage = request.position
                turn = request.turn
                if request.timed_out:
                    self._orphans -= 1
                    late = True
                else:
                    finalized = True
                    self._finalized += 1
                    if request.user:
                        latency = now - request.requested_at
                        self._latency.add(latency)
            if message.words and message.words[-1].end is not None:
                # Word timestamps say exactly how far the final reaches.
                last = round(self._session_ticks(message.words[-1].end, end=True))
                coverage = last if coverage is None else max(coverage, last)
            if message.is_last:
                coverage = self._received
            if coverage is not None:
                self._confirm(min(coverage, self._sent_upto))
        self._emit(
            Transcript(
                text=message.text,
                is_final=message.is_final,
                finalized=finalized,
                is_last=message.is_last,
                turn=turn,
                latency=latency,
                late=late,
                from_finalize=message.from_finalize,
                language=message.language,
                languages=message.languages,
                words=words,
                utterances=utterances,
                redacted_entities=message.redacted_entities,
                speaker=message.speaker,
                speaker_confidence=message.speaker_confidence,
                start=start,
                end=end,
                full_transcript=message.full_transcript,
                session_id=message.session_id,
                connection=self._connections,
                raw=message.raw,
            )
        )
        if message.is_last and self._state is State.CLOSING:
            self._close_complete(now)
        elif self._state is State.DRAINING and not self._inflight_live():
            self._switch(now)

    def _on_error(self, now: float, message: ErrorMessage) -> None:
        permanent = message.code in PERMANENT_ERROR_CODES
        self._emit(
            ServerError(
                message=message.message, code=message.code, permanent=permanent, raw=message.raw
            )
        )
        if permanent:
            # e.g. LANGUAGE_NOT_ENABLED_IN_REGION: every reconnect would get the
            # same answer.
            reason = f"{message.code}: {message.message}"
            self._commands.append(CloseConnection(code=1000, reason="permanent server error"))
            self._socket_gone(now, code=1000, reason=reason, local=True, will_reconnect=False)
            self._emit(
                ConnectionFailed(
                    reason=reason,
                    status=None,
                    permanent=True,
                    retry_after=None,
                    attempt=self._connect_attempt,
                )
            )
            self._fail(now, reason)

    # ------------------------------------------------------------------
    # Internals: the end
    # ------------------------------------------------------------------

    def _begin_closing(self) -> None:
        self._send_text(CLOSE_STREAM)

    def _close_complete(self, now: float) -> None:
        """``is_last`` arrived: every final is in."""
        for request in list(self._inflight):
            if not request.timed_out:
                self._timed_out += 1
                self._emit(
                    FinalizeTimedOut(
                        turn=request.turn,
                        waited=now - request.requested_at,
                        reason="session ended before its final",
                    )
                )
        self._inflight.clear()
        self._orphans = 0
        self._confirm(self._received)
        self._commands.append(CloseConnection(code=1000, reason="session closed"))
        self._emit(
            Disconnected(
                connection=self._connections,
                code=1000,
                reason="session closed",
                local=True,
                will_reconnect=False,
            )
        )
        self._finish(now, Trigger.CLOSE_DONE, error=None)

    def _close_timed_out(self, now: float) -> None:
        if self._state in SOCKET_STATES:
            self._commands.append(CloseConnection(code=1000, reason="close timed out"))
            self._socket_gone(
                now, code=1000, reason="close timed out", local=True, will_reconnect=False
            )
        elif self._state is State.CONNECTING:
            self._commands.append(CloseConnection(code=1000, reason="close timed out"))
        self._abandon(now, DropReason.CLOSE_TIMEOUT, "close timed out")
        self._finish(
            now,
            Trigger.CLOSE_TIMEOUT,
            error="close timed out before the server confirmed all audio",
        )

    def _fail(self, now: float, reason: str) -> None:
        self._abandon(now, DropReason.SESSION_FAILED, "session failed")
        self._finish(now, Trigger.GIVE_UP, error=reason)

    def _abandon(self, now: float, drop_reason: DropReason, finalize_reason: str) -> None:
        """Report everything that will now never be transcribed."""
        self._flush_audio(now, closing=True)
        for request in [*self._inflight, *self._owed]:
            if not request.timed_out:
                self._timed_out += 1
                self._emit(
                    FinalizeTimedOut(
                        turn=request.turn, waited=now - request.requested_at, reason=finalize_reason
                    )
                )
        self._inflight.clear()
        self._owed.clear()
        self._orphans = 0
        # The socket, if any, is already accounted for (_socket_gone), so every
        # unconfirmed tick from replay_from on is still in the replay buffer.
        position = self._replay_from
        if position < self._received:
            nbytes = sum(
                self._span_bytes(start, end, len(data), position)
                for start, end, data in self._retained
                if end > position or end == start
            )
            self._note_drop(position, self._received, nbytes, drop_reason)
            self._replay_from = self._received
        self._retained.clear()
        self._retained_bytes = 0
        self._flush_drop()

    def _finish(self, now: float, trigger: Trigger, *, error: str | None) -> None:
        self._flush_drop()
        self._transition(trigger)
        self._connect_deadline = None
        self._retry_at = None
        self._close_deadline = None
        self._pending_since = None
        self._emit(Closed(summary=self.summary(), error=error))
