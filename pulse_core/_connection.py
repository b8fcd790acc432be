"""``PulseConnection``: the sans-IO engine of one transcription session.

The engine never touches a socket, a clock or a random number generator. The
transport feeds it inputs (each with ``now``, monotonic seconds) and drains two
queues: ``commands()`` for the transport to carry out in order, and
``events()`` for the application. ``next_deadline()`` says when to call
``handle_timer()``.

One session spans as many WebSocket connections as it takes. This class is the
conductor: it checks each input, moves the state table (``_state``), and asks
its parts, each of which holds one kind of bookkeeping and its invariants:

* ``_ledger.AudioLedger``: where every tick of audio is (held, sent,
  confirmed, kept for replay, dropped);
* ``_timeline.Timeline``: the live connection's clock against session time;
* ``_turns.Turns``: finalize requests, their answers and TTFS latency;
* ``_retry.Retry``: whether and when to connect again.

It turns their answers into commands and events. All times in events are
session time: seconds of audio since the session began. See spec/PROTOCOL.md
for the rules and their reasons; docs/architecture.md for how data flows.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

from ._commands import (
    CLOSE_STREAM,
    FINALIZE,
    CloseConnection,
    Command,
    Connect,
    SendBinary,
    SendPing,
    SendText,
)
from ._config import ConnectionConfig
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    Closed,
    Connected,
    ConnectionFailed,
    Disconnected,
    DropReason,
    Event,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SessionSummary,
    SettingsApplied,
    SpeechEnded,
    SpeechStarted,
    UnhandledMessage,
)
from ._finals import Transcribed, confirmed_upto, transcript, within_connection
from ._ledger import AudioLedger
from ._liveness import KEEPALIVE_PING, LIVENESS_PING, Check, Liveness
from ._messages import (
    ErrorMessage,
    SpeechEndedMessage,
    SpeechStartedMessage,
    TranscriptionMessage,
    UnknownMessage,
    parse_server_message,
)
from ._replay import replay, send_held
from ._retry import PERMANENT_ERROR_CODES, JitterSource, Retry, Verdict
from ._secrets import Redactor, hide_in_message
from ._settings import Settings
from ._state import SOCKET_STATES, TERMINAL_STATES, TRANSITIONS, State, Trigger
from ._timeline import Timeline
from ._turns import Finalize, Latency, Turns

__all__ = ["JitterSource", "PulseConnection"]


_NO_INPUT_STATES: Final = frozenset({State.CLOSING, State.CLOSED, State.FAILED})
_WIRE_STATES: Final = frozenset({State.OPEN, State.DRAINING})  # keepalive runs
# How much of a malformed frame an event shows: the first _SHOWN_CHARS, taken
# after redacting a longer window, so a piece of the key across the cut is hidden.
_SHOWN_CHARS: Final = 200
_SHOWN_BYTES: Final = 4096


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
        self._redactor = Redactor(config.api_key)
        self._state = State.IDLE
        self._now = -math.inf
        self._commands: list[Command] = []
        self._events: list[Event] = []
        self._output_limit = config.max_pending_outputs

        # -- the parts (see the module docstring) ---------------------------
        self._ledger = AudioLedger(config, self._emit)
        self._timeline = Timeline(config.ticks_per_second)
        self._transcribed = Transcribed()
        self._turns = Turns(
            timeout=config.finalize_timeout,
            max_pending=config.max_pending_finalizes,
            latency=Latency(config.latency_samples, config.ttfs_p99_latency),
        )
        self._retry = Retry(config.reconnect, jitter)
        self._liveness = Liveness(config)

        # -- the live connection --------------------------------------------
        self._streaming = False  # OPEN: frames go out as soon as they are made
        self._connections = 0
        self._connect_deadline: float | None = None
        self._retry_at: float | None = None
        self._was_lost = False  # the next Connected is a reconnect

        # -- settings --------------------------------------------------------
        self._previous_settings = config.settings  # those of the last socket (or the start)
        self._settings_changed = False  # announce SettingsApplied on next open

        # -- closing ---------------------------------------------------------
        self._close_requested = False
        self._close_deadline: float | None = None

        # -- statistics (the parts keep their own) ----------------------------
        self._finals = 0
        self._reconnects = 0

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
    def redactor(self) -> Redactor:
        """What hides the API key in text (PROTOCOL §6 rule 12): the engine
        applies it to everything a server sends; transports apply it to what
        their own stack logs."""
        return self._redactor

    @property
    def settings(self) -> Settings:
        return self._config.settings

    @property
    def buffered_bytes(self) -> int:
        """Audio held by the engine: kept for replay, or not yet framed."""
        return self._ledger.buffered_bytes

    @property
    def pending_finalizes(self) -> int:
        """Finalize requests not yet answered or timed out."""
        return self._turns.pending

    def summary(self) -> SessionSummary:
        """What has happened so far (also delivered in ``Closed``)."""
        ledger = self._ledger
        turns = self._turns
        tps = self._config.ticks_per_second
        return SessionSummary(
            audio_seconds_received=ledger.received / tps,
            audio_seconds_sent=ledger.max_sent / tps,
            finals=self._finals,
            finalized_turns=turns.finalized,
            timed_out_turns=turns.timed_out,
            connections=self._connections,
            reconnects=self._reconnects,
            dropped_bytes=ledger.dropped_bytes,
            dropped_seconds=ledger.dropped_ticks / tps,
            keepalives=self._liveness.count,
            latency=turns.latency.summary(),
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
        config = self._config
        candidates: list[float] = []
        coalescing = self._ledger.coalescing_deadline(config.max_chunk_delay)
        if coalescing is not None:
            candidates.append(coalescing)
        if self._state in _WIRE_STATES:
            candidates.append(self._liveness.deadline())
        if self._state in SOCKET_STATES:
            candidates.append(self._liveness.check_deadline())
        finalize = self._turns.next()
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
        self._input(now)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"audio must be bytes-like, not {type(data).__name__}")
        if not data:
            return
        for frame, ticks in self._ledger.hold(now, data):
            self._add_frame(now, frame, ticks)

    def speech_started(self, now: float) -> None:
        """Local VAD heard speech begin. Checked, but nothing is sent: the
        service needs no word of it (turns end with :meth:`speech_stopped`)."""
        self._input(now)
        self._require_open_session("speech_started()")

    def speech_stopped(self, now: float) -> None:
        """Local VAD heard speech end: finalize the turn (TTFS is measured from here)."""
        self._input(now)
        self._require_open_session("speech_stopped()")
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
            if self._turns.awaiting:
                self._transition(Trigger.DRAIN)
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
        if state in _WIRE_STATES:
            if state is State.DRAINING:
                # The settings switch is abandoned: send what was held back on
                # this connection rather than open another just to close it.
                held = send_held(
                    now,
                    self._ledger,
                    self._turns,
                    self._timeline,
                    heard=self._liveness.messages,
                )
                if any(isinstance(command, SendBinary) for command in held):
                    self._liveness.wrote(now)
                self._commands += held
            self._transition(Trigger.CLOSE)
            self._send_text(CLOSE_STREAM)
        elif not self._owes_anything():
            if state is State.CONNECTING:
                self._commands.append(CloseConnection(code=1000, reason="session closed"))
            self._finish(now, Trigger.CLOSE_DONE, error=None)
        self._ledger.report_drop()
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
        self._retry.opened(now)
        self._liveness.opened(now)
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
        self._ledger.report_drop()
        self._commands += replay(now, self._ledger, self._turns, self._timeline)
        if self._timeline.ticks:
            self._liveness.wrote(now)
        self._streaming = True
        if self._close_requested:
            self._transition(Trigger.CLOSE)
            self._send_text(CLOSE_STREAM)

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
        reason = self._redactor.text(reason)  # a refusal body may echo the key (§6 rule 12)
        if self._state is not State.CONNECTING:
            if self._state in SOCKET_STATES:
                raise LocalProtocolError("connection_failed() for a connection that is open")
            return  # about an attempt the engine already abandoned
        self._connect_deadline = None
        self._connect_failed(
            now, status=status, reason=reason, retry_after=retry_after, final=permanent
        )

    def connection_closed(self, now: float, *, code: int | None = None, reason: str = "") -> None:
        """The WebSocket closed without the engine asking (``code=None``: no
        close frame, e.g. the TCP connection dropped)."""
        self._input(now)
        # WebSocket libraries hand over their own enums for the codes they know;
        # events carry plain ints, whatever the transport.
        code = None if code is None else int(code)
        reason = self._redactor.text(reason)  # a close reason may echo the key (§6 rule 12)
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

    def protocol_violation(self, now: float, *, code: int, reason: str) -> None:
        """The transport failed the WebSocket because the server broke the
        protocol: it sent its own close frame with ``code`` (1007 for a text
        frame that is not UTF-8, 1009 for a message over ``max_message_size``,
        1002 for a malformed frame) and reads nothing more from that socket.

        What the server sent is a ``MalformedMessage``; the socket is gone,
        closed by this side, and is replaced like a lost one (PROTOCOL §4).
        """
        self._input(now)
        code = int(code)  # a WebSocket library's enum: events carry plain ints
        state = self._state
        if state is State.CONNECTING:
            self._connect_deadline = None
            self._connect_failed(
                now,
                status=None,
                reason=f"protocol error during handshake: {reason}".rstrip(": "),
                retry_after=None,
            )
        elif state in SOCKET_STATES:
            # RFC 6455 §7.1.7 and §8.1: such a connection is failed, not read
            # on; the frame is reported and the audio replayed on a new one.
            self._emit(MalformedMessage(error=reason, data=""))
            self._connection_lost(
                now,
                code=code,
                reason=reason,
                local=True,
                summary=f"closed with code {code}: the server broke the protocol ({reason})",
            )
        # Other states: a connection the engine already closed.

    def receive_message(self, now: float, data: str | bytes | bytearray | memoryview) -> None:
        """A frame arrived from the server."""
        self._input(now)
        if self._state not in SOCKET_STATES:
            return  # from a connection the engine already closed
        self._liveness.received(now)
        hide = self._redactor
        if not isinstance(data, str):
            # The service only sends JSON text; a binary frame is a protocol
            # error. Shown redacted, then cut (PROTOCOL §6 rule 12).
            shown = hide.text(repr(bytes(data[:_SHOWN_BYTES])))[:_SHOWN_CHARS]
            self._emit(MalformedMessage(error="unexpected binary frame", data=shown))
            return
        timeline = self._timeline
        try:
            message = parse_server_message(data, max_size=self._config.max_message_size)
            # Every string redacted before anything sees it (PROTOCOL §6 rule 12).
            message = hide_in_message(hide, message, data)
            # Times are checked before they steer anything (PROTOCOL §5).
            if isinstance(message, TranscriptionMessage):
                message = within_connection(message, timeline)
            elif isinstance(message, SpeechStartedMessage | SpeechEndedMessage):
                message = attrs.evolve(
                    message, timestamp=timeline.fit(message.timestamp, "timestamp")
                )
        except RemoteProtocolError as exc:
            self._emit(
                MalformedMessage(error=hide.text(str(exc)), data=self._shown(data))
            )
            return
        if isinstance(message, TranscriptionMessage):
            self._on_transcription(now, message, data)
        elif isinstance(message, SpeechStartedMessage):
            self._emit(
                SpeechStarted(
                    timestamp=timeline.session_time(message.timestamp),
                    session_id=message.session_id,
                )
            )
        elif isinstance(message, SpeechEndedMessage):
            self._emit(
                SpeechEnded(
                    timestamp=timeline.session_time(message.timestamp, end=True),
                    session_id=message.session_id,
                )
            )
        elif isinstance(message, ErrorMessage):
            self._on_error(now, message)
        else:
            assert isinstance(message, UnknownMessage)
            self._emit(UnhandledMessage(message_type=message.message_type, raw=message.raw))

    def pong_received(self, now: float) -> None:
        """The server answered a ping: the connection is alive.

        Report every pong of the live connection (the liveness rule counts
        them as hearing from the server, like any message).
        """
        self._input(now)
        if self._state in SOCKET_STATES:
            self._liveness.heard(now)

    def handle_timer(self, now: float) -> None:
        """Time passed: do whatever was due by ``now``."""
        self._input(now)
        if self._state in TERMINAL_STATES:
            return
        config = self._config
        coalescing = self._ledger.coalescing_deadline(config.max_chunk_delay)
        if coalescing is not None and now >= coalescing:
            for frame, ticks in self._ledger.cut(now, everything=True):
                self._add_frame(now, frame, ticks)
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
        if self._state in SOCKET_STATES:
            self._check_liveness(now)
        if self._state in _WIRE_STATES and self._liveness.due(now):
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

    def _owes_anything(self) -> bool:
        """Audio or finalizes the server has not answered yet."""
        return self._ledger.unconfirmed or self._turns.owed or self._turns.awaiting

    # ------------------------------------------------------------------
    # Internals: audio (the ledger keeps it; the timeline maps it)
    # ------------------------------------------------------------------

    def _add_frame(self, now: float, data: bytes, ticks: int) -> None:
        ledger = self._ledger
        _, end, _ = ledger.append(data, ticks)
        if self._streaming:
            self._commands.append(SendBinary(data))
            ledger.sent(end)
            self._timeline.advance(ticks)
            self._liveness.wrote(now)
        if ledger.over_bound:
            live = self._state in SOCKET_STATES
            ledger.evict(live=live)
            if live:
                ledger.report_drop()

    def _flush_audio(self, now: float, *, closing: bool = False) -> None:
        """Frame everything held (finalize and close must not wait for coalescing)."""
        for frame, ticks in self._ledger.flush(now, closing=closing):
            self._add_frame(now, frame, ticks)
        if closing:
            self._ledger.drop_partial_sample()

    def _check_liveness(self, now: float) -> None:
        """Probe a silent server; replace a connection that stays silent."""
        check = self._liveness.check(now)
        if check is Check.PING:
            self._commands.append(SendPing(LIVENESS_PING))
        elif check is Check.DEAD:
            silent = now - self._liveness.last_heard
            reason = "server stopped answering"
            self._commands.append(CloseConnection(code=1011, reason=reason))
            self._connection_lost(
                now,
                code=1011,
                reason=reason,
                local=True,
                summary=f"no answer from the server for {silent:.1f} s, not even to a ping",
            )

    def _keepalive(self, now: float) -> None:
        """No audio went out for a keepalive interval: send silence (or a ping)."""
        silence = self._liveness.keepalive(now)
        if silence is None:
            # Opus has no byte-level silence; a ping keeps the socket alive.
            self._commands.append(SendPing(KEEPALIVE_PING))
            return
        self._commands.append(SendBinary(silence))
        # The silence shifts the server's clock but not the session's.
        self._timeline.silence(self._liveness.silence_ticks)

    # ------------------------------------------------------------------
    # Internals: connections
    # ------------------------------------------------------------------

    def _connect(self, now: float) -> None:
        config = self._config
        self._commands.append(
            Connect(
                url=config.url(),
                headers=config.headers(),
                attempt=self._retry.dial(),
                timeout=config.connect_timeout,
            )
        )
        self._connect_deadline = now + config.connect_timeout

    def _switch(self, now: float) -> None:
        """Close the live socket on purpose and connect with the new settings."""
        self._retry.settle(now)
        self._commands.append(CloseConnection(code=1000, reason="settings changed"))
        self._socket_gone(code=1000, reason="settings changed", local=True, will_reconnect=True)
        self._transition(Trigger.SWITCH if self._state is State.OPEN else Trigger.DRAINED)
        self._connect(now)

    def _socket_gone(
        self, *, code: int | None, reason: str, local: bool, will_reconnect: bool
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
        # Finalizes sent on that socket are owed again (before newer ones).
        self._turns.socket_ended()
        # Audio the dead socket had but the replay buffer no longer holds is lost.
        self._ledger.socket_ended()
        self._ledger.report_drop()

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
            self._socket_gone(code=code, reason=reason, local=local, will_reconnect=False)
            self._finish(now, Trigger.CLOSE_DONE, error=None, is_last_missing=True)
            return
        verdict = self._retry.lost(now, code=code, reason=summary)
        self._socket_gone(code=code, reason=reason, local=local, will_reconnect=not verdict.give_up)
        if verdict.give_up:
            self._emit(self._failure(verdict, status=None, retry_after=None))
            self._fail(now, verdict.reason)
            return
        self._was_lost = True
        self._transition(Trigger.CONNECTION_LOST)
        self._schedule_retry(now, verdict)

    def _connect_failed(
        self,
        now: float,
        *,
        status: int | None,
        reason: str,
        retry_after: float | None,
        final: bool = False,
    ) -> None:
        verdict = self._retry.refused(
            status=status, reason=reason, retry_after=retry_after, final=final
        )
        self._emit(self._failure(verdict, status=status, retry_after=retry_after))
        if verdict.give_up:
            self._fail(now, verdict.reason)
            return
        self._was_lost = True
        self._transition(Trigger.CONNECT_FAILED)
        self._schedule_retry(now, verdict)

    @staticmethod
    def _failure(
        verdict: Verdict, *, status: int | None, retry_after: float | None
    ) -> ConnectionFailed:
        return ConnectionFailed(
            reason=verdict.reason,
            status=status,
            permanent=verdict.give_up,
            retry_after=retry_after,
            attempt=verdict.attempt,
            gave_up=verdict.gave_up,
        )

    def _schedule_retry(self, now: float, verdict: Verdict) -> None:
        self._retry_at = now + verdict.delay
        self._emit(
            Reconnecting(attempt=verdict.attempt + 1, delay=verdict.delay, reason=verdict.reason)
        )
        if self._close_requested and not self._owes_anything():
            self._retry_at = None
            self._finish(now, Trigger.CLOSE_DONE, error=None)

    # ------------------------------------------------------------------
    # Internals: finalize (the turns keep the requests)
    # ------------------------------------------------------------------

    def _request_finalize(self, now: float, *, user: bool) -> bool:
        self._flush_audio(now)
        turns = self._turns
        request = turns.open(now, self._ledger.received, user=user)
        if request is None:
            return False
        timed_out = turns.make_room(now)
        if timed_out is not None:
            self._emit(timed_out)
        if self._streaming:
            self._send_finalize(now, request)
        else:
            turns.owe(request)
        return True

    def _send_finalize(self, now: float, request: Finalize) -> None:
        self._send_text(FINALIZE)
        self._turns.sent(now, request, heard=self._liveness.messages)

    def _expire_finalizes(self, now: float) -> None:
        turns = self._turns
        while (request := turns.due(now)) is not None:
            stalled = (
                request.sent_at is not None
                and self._state in (State.OPEN, State.CLOSING)
                and self._liveness.messages == request.heard
            )  # (when DRAINING, the switch below replaces the socket anyway)
            self._emit(turns.time_out(now, request, "no final within finalize_timeout"))
            if stalled:
                # Nothing at all came back since the finalize went out: the
                # connection is wedged. Replace it (the audio is replayed).
                self._commands.append(CloseConnection(code=1011, reason="server stopped answering"))
                self._connection_lost(now, code=1011, reason="server stopped answering", local=True)
                if self._state in TERMINAL_STATES:
                    return
        if self._state is State.DRAINING and not turns.awaiting:
            self._switch(now)

    # ------------------------------------------------------------------
    # Internals: server messages
    # ------------------------------------------------------------------

    def _on_transcription(self, now: float, message: TranscriptionMessage, data: str) -> None:
        closing = self._state is State.CLOSING
        if message.is_final and self._repeated(message, data):
            # A repeat answers nothing and confirms nothing, but is_last in it
            # is still the server saying it is done.
            if message.is_last and closing:
                self._close_complete(now)
            return
        answer = None
        if message.is_final:
            self._finals += 1
            answer = self._turns.answer(now, message.from_finalize)
            upto = confirmed_upto(
                message,
                answer,
                self._timeline,
                self._ledger,
                closing=closing,
            )
            if upto is not None:
                self._ledger.confirm(upto)
        self._emit(transcript(message, answer, self._timeline, self._connections))
        if message.is_last and closing:
            self._close_complete(now)
        elif self._state is State.DRAINING and not self._turns.awaiting:
            self._switch(now)

    def _repeated(self, message: TranscriptionMessage, data: str) -> bool:
        """A final whose words this connection's finals already transcribed is
        reported, not delivered: its text would be transcribed twice (PROTOCOL §5)."""
        span = self._transcribed.repeats(message, self._connections)
        if span is None:
            return False
        start, end = self._timeline.session_span(*span)
        self._emit(
            MalformedMessage(
                error=f"a final repeating words already transcribed ({start:.2f}-{end:.2f} s)",
                data=self._shown(data),
            )
        )
        return True

    def _shown(self, data: str) -> str:
        """A frame as an event shows it: redacted, then cut (PROTOCOL §6 rule 12)."""
        return self._redactor.text(data[:_SHOWN_BYTES])[:_SHOWN_CHARS]

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
            self._socket_gone(code=1000, reason=reason, local=True, will_reconnect=False)
            self._emit(
                ConnectionFailed(
                    reason=reason,
                    status=None,
                    permanent=True,
                    retry_after=None,
                    attempt=self._retry.dialled,
                )
            )
            self._fail(now, reason)

    # ------------------------------------------------------------------
    # Internals: the end
    # ------------------------------------------------------------------

    def _close_complete(self, now: float) -> None:
        """``is_last`` arrived: every final is in."""
        for event in self._turns.end(now, "session ended before its final", owed=False):
            self._emit(event)
        self._ledger.confirm(self._ledger.received)
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
        """``close_timeout`` ran out before ``is_last`` (PROTOCOL §6 rule 8).

        What that means depends on what the server had done: confirmed every
        tick (a clean close that only lacks ``is_last``), left some audio
        unconfirmed (dropped: the close failed), or never been reached (the
        session failed to connect, whatever the close waited for).
        """
        state = self._state
        lost = self._ledger.unconfirmed  # the live socket's evicted audio included
        if state in SOCKET_STATES:
            self._commands.append(CloseConnection(code=1000, reason="close timed out"))
            self._socket_gone(code=1000, reason="close timed out", local=True, will_reconnect=False)
        elif state is State.CONNECTING:
            self._commands.append(CloseConnection(code=1000, reason="close timed out"))
        if not self._connections:
            self._fail(now, self._unreachable(), trigger=Trigger.UNREACHABLE)
            return
        self._abandon(now, DropReason.CLOSE_TIMEOUT, "close timed out")
        error = None
        if lost:
            error = "close timed out before the server confirmed all audio"
            if state not in SOCKET_STATES and self._retry.reason:
                error += f" (while reconnecting after: {self._retry.reason})"
        self._finish(
            now, Trigger.CLOSE_TIMEOUT, error=error, is_last_missing=state is State.CLOSING
        )

    def _unreachable(self) -> str:
        """Why a session that never connected ends: the last attempt's failure."""
        failed = self._retry.attempt
        if not failed:
            return "could not reach the service: no connection opened within close_timeout"
        attempts = "attempt" if failed == 1 else "attempts"
        return f"could not reach the service after {failed} failed {attempts}: {self._retry.reason}"

    def _fail(self, now: float, reason: str, *, trigger: Trigger = Trigger.GIVE_UP) -> None:
        self._abandon(now, DropReason.SESSION_FAILED, "session failed")
        self._finish(now, trigger, error=reason)

    def _abandon(self, now: float, drop_reason: DropReason, finalize_reason: str) -> None:
        """Report everything that will now never be transcribed."""
        self._flush_audio(now, closing=True)
        for event in self._turns.end(now, finalize_reason, owed=True):
            self._emit(event)
        self._ledger.abandon(drop_reason)
        self._ledger.report_drop()

    def _finish(
        self, now: float, trigger: Trigger, *, error: str | None, is_last_missing: bool = False
    ) -> None:
        self._ledger.report_drop()
        self._transition(trigger)
        self._connect_deadline = None
        self._retry_at = None
        self._close_deadline = None
        self._ledger.pending_since = None
        self._emit(Closed(summary=self.summary(), error=error, is_last_missing=is_last_missing))
