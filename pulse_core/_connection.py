"""``PulseConnection``: the sans-IO engine of one transcription session.

The engine never touches a socket, a clock or a random number generator. The
transport feeds it inputs (each with ``now``, monotonic seconds) and drains two
queues: ``commands()`` for the transport to carry out in order, and
``events()`` for the application. ``next_deadline()`` says when to call
``handle_timer()``. All times in events are session time: seconds of audio
since the session began.

One session spans as many WebSocket connections as it takes. This class is the
conductor: it checks each input, moves the state table (``_state``), asks the
parts and queues their answers. Each part keeps one kind of bookkeeping, states
its invariants and emits nothing: the audio (``_ledger``), the connection's
clock (``_timeline``), finalize requests (``_turns``), whether and when to
connect again (``_retry``), keepalive and liveness (``_liveness``), what the
live socket is sent (``_outbound``, ``_replay``), what a server frame says
(``_inbound``) and what a final means (``_finals``), how a socket is lost
(``_losses``), when new settings are in force (``_switch``), how the session
ends (``_closing``), its counts (``_tally``) and the key (``_secrets``).
docs/architecture.md says which rule lives where and how data flows;
spec/PROTOCOL.md states the rules and their reasons.
"""

from __future__ import annotations

import math
from typing import Any, Final

from ._closing import Closing, Ending
from ._commands import CLOSE_STREAM, CloseConnection, Command, Connect, SendPing, SendText
from ._config import ConnectionConfig
from ._errors import LocalProtocolError
from ._events import Connected, Disconnected, Event, MalformedMessage, ServerError, SessionSummary
from ._finals import Transcribed, confirmed_upto, repeat, spoken, transcript
from ._inbound import malformed, read
from ._ledger import AudioLedger
from ._liveness import LIVENESS_PING, Check, Liveness
from ._losses import STALLED, Loss, broke_protocol, closed_by_server, handshake, silent
from ._messages import ErrorMessage, TranscriptionMessage
from ._outbound import Outbound
from ._retry import JitterSource, Retry, Verdict, refusal_reason, retry_after_seconds
from ._secrets import Redactor
from ._settings import Settings
from ._state import SOCKET_STATES, TERMINAL_STATES, TRANSITIONS, State, Trigger
from ._switch import SettingsSwitch
from ._tally import Tally
from ._timeline import Timeline
from ._turns import Latency, Turns

__all__ = ["JitterSource", "PulseConnection"]


_WIRE_STATES: Final = frozenset({State.OPEN, State.DRAINING})  # keepalive runs


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
        self._tally = Tally(config.ticks_per_second)
        self._outbound = Outbound(self._ledger, self._timeline, self._liveness, self._turns)
        self._settings_switch = SettingsSwitch(config.settings)
        self._closing = Closing(config.close_timeout)

    # ------------------------------------------------------------------
    # Introspection and outputs
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
        return self._tally.summary(self._ledger, self._turns, self._liveness)

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
        state = self._state
        deadlines = (
            self._ledger.coalescing_deadline(self._config.max_chunk_delay),
            self._liveness.deadline() if state in _WIRE_STATES else None,  # keepalive
            self._liveness.check_deadline() if state in SOCKET_STATES else None,
            self._turns.deadline(),
            self._retry.deadline(),
            self._closing.deadline,
        )
        return min((deadline for deadline in deadlines if deadline is not None), default=None)

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
        self._closing.refuse_input("send_audio()", self._state)
        self._input(now)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"audio must be bytes-like, not {type(data).__name__}")
        if not data:
            return
        self._add_frames(now, self._ledger.hold(now, data))

    def speech_started(self, now: float) -> None:
        """Local VAD heard speech begin. Checked, but nothing is sent: the
        service needs no word of it (turns end with :meth:`speech_stopped`)."""
        self._input(now)
        self._closing.refuse_input("speech_started()", self._state)

    def speech_stopped(self, now: float) -> None:
        """Local VAD heard speech end: finalize the turn (TTFS is measured from here)."""
        self._input(now)
        self._closing.refuse_input("speech_stopped()", self._state)
        self._request_finalize(now, user=True)

    def finalize(self, now: float) -> bool:
        """Ask for the current turn's final now.

        Returns ``False`` (and sends nothing) when no audio came since the last
        finalize: the server would only answer with an empty final.
        """
        self._input(now)
        self._closing.refuse_input("finalize()", self._state)
        return self._request_finalize(now, user=True)

    def update_settings(self, now: float, **changes: Any) -> None:
        """Change settings mid-session (field names of :class:`Settings`).

        Invalid values raise ``ConfigurationError`` before anything happens.
        On an open connection the current turn is finalized first and its
        final delivered; then the engine switches to a connection with the new
        parameters. Audio that arrives meanwhile is kept and sent there.
        """
        self._input(now)
        self._closing.refuse_input("update_settings()", self._state)
        target = self._config.settings.evolve(**changes)
        config = self._config.with_settings(target)  # checks the region
        changed = self._config.settings.changed_fields(target)
        if not changed:
            return
        self._config = config
        state = self._state
        applied = self._settings_switch.changed(target, changed, started=state is not State.IDLE)
        if applied is not None:
            self._emit(applied)
        elif state is State.CONNECTING:
            # The attempt in flight carries the old parameters: start over.
            self._commands.append(CloseConnection(code=1000, reason="settings changed"))
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
        if self._closing.over(state):
            return
        self._closing.request(now)
        self._flush_audio(now, closing=True)
        if state is State.IDLE:
            self._end(now, Ending.not_started())  # whatever audio was given can no longer be sent
            return
        if state in _WIRE_STATES:
            if state is State.DRAINING:
                # The settings switch is abandoned: send what was held back on
                # this connection rather than open another just to close it.
                self._commands += self._outbound.held(now)
            self._transition(Trigger.CLOSE)
            self._commands.append(SendText(CLOSE_STREAM))
        elif not self._owes_anything():
            if state is State.CONNECTING:
                self._commands.append(CloseConnection(code=1000, reason="session closed"))
            self._end(now, Ending.clean())
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
        reconnect = self._tally.opened()
        self._retry.opened(now)
        self._liveness.opened(now)
        number, url, settings = self._tally.connections, self._config.url(), self._config.settings
        self._emit(Connected(connection=number, url=url, reconnect=reconnect, settings=settings))
        applied = self._settings_switch.opened(settings)
        if applied is not None:
            self._emit(applied)
        self._ledger.report_drop()
        self._commands += self._outbound.opened(now)
        if self._closing.requested:
            self._transition(Trigger.CLOSE)
            self._commands.append(SendText(CLOSE_STREAM))

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
        self._connect_failed(
            now, status=status, reason=reason, retry_after=retry_after, final=permanent
        )

    def connection_refused(
        self,
        now: float,
        *,
        status: int,
        body: bytes | str = b"",
        retry_after: str | bytes | float | None = None,
    ) -> None:
        """The server answered the last ``Connect`` with HTTP ``status``
        instead of 101: ``body`` and ``retry_after`` (the ``Retry-After``
        header) as they came. The engine words the refusal (the body redacted,
        then cut) and reads the header (seconds; a date is left to the
        policy), then judges it as :meth:`connection_failed` does."""
        self.connection_failed(
            now,
            status=status,
            reason=refusal_reason(self._redactor, status, body),
            retry_after=retry_after_seconds(retry_after),
        )

    def connection_closed(self, now: float, *, code: int | None = None, reason: str = "") -> None:
        """The WebSocket closed without the engine asking (``code=None``: no
        close frame, e.g. the TCP connection dropped)."""
        self._input(now)
        # WebSocket libraries hand over their own enums for the codes they know;
        # events carry plain ints, whatever the transport.
        code = None if code is None else int(code)
        reason = self._redactor.text(reason)  # a close reason may echo the key (§6 rule 12)
        if self._state is State.CONNECTING:
            self._connect_failed(now, reason=handshake("closed", reason))
        elif self._state in SOCKET_STATES:
            self._connection_lost(now, closed_by_server(code, reason))
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
        if self._state is State.CONNECTING:
            self._connect_failed(now, reason=handshake("protocol error", reason))
        elif self._state in SOCKET_STATES:
            # The frame is reported, and the audio replayed on a new socket (PROTOCOL §4).
            self._emit(MalformedMessage(error=reason, data=""))
            self._connection_lost(now, broke_protocol(code, reason))
        # Other states: a connection the engine already closed.

    def receive_message(self, now: float, data: str | bytes | bytearray | memoryview) -> None:
        """A frame arrived from the server."""
        self._input(now)
        if self._state not in SOCKET_STATES:
            return  # from a connection the engine already closed
        self._liveness.received(now)
        message = read(
            data,
            max_size=self._config.max_message_size,
            redactor=self._redactor,
            timeline=self._timeline,
        )
        if isinstance(message, TranscriptionMessage):
            assert isinstance(data, str)  # only text is parsed
            self._on_transcription(now, message, data)
        elif isinstance(message, ErrorMessage):
            self._on_error(now, message)
        else:
            self._emit(message)  # it only reports something

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
        coalescing = self._ledger.coalescing_deadline(self._config.max_chunk_delay)
        if coalescing is not None and now >= coalescing:
            self._add_frames(now, self._ledger.cut(now, everything=True))
        self._expire_finalizes(now)
        if self._state in TERMINAL_STATES:
            return
        if self._closing.due(now):
            self._close_timed_out(now)
            return
        if self._retry.timed_out(now):
            self._commands.append(CloseConnection(code=1000, reason="connect timed out"))
            self._connect_failed(now, reason="connect timed out")
        if self._retry.due(now):
            self._transition(Trigger.RETRY_DUE)
            self._connect(now)
        if self._state in SOCKET_STATES:
            # Probe a silent server; replace a socket that stays silent.
            check = self._liveness.check(now)
            if check is Check.PING:
                self._commands.append(SendPing(LIVENESS_PING))
            elif check is Check.DEAD:
                self._connection_lost(now, silent(now - self._liveness.last_heard))
        if self._state in _WIRE_STATES and self._liveness.due(now):
            self._commands.append(self._outbound.keepalive(now))

    # ------------------------------------------------------------------
    # Internals: state, outputs and audio
    # ------------------------------------------------------------------

    def _input(self, now: float) -> None:
        if now < self._now:
            raise LocalProtocolError(f"time went backwards: {now} < {self._now}")
        self._now = now
        if len(self._commands) + len(self._events) > self._output_limit:
            raise LocalProtocolError("the transport is not draining commands() and events()")

    def _transition(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[(self._state, trigger)]
        except KeyError:  # pragma: no cover - the engine only fires valid triggers
            raise AssertionError(f"no transition from {self._state} on {trigger}") from None
        if self._state is not State.OPEN:
            self._outbound.streaming = False

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _owes_anything(self) -> bool:
        """Audio or finalizes the server has not answered yet."""
        return self._ledger.unconfirmed or self._turns.owed or self._turns.awaiting

    def _add_frames(self, now: float, frames: list[tuple[bytes, int]]) -> None:
        self._commands += self._outbound.frames(now, frames, live=self._state in SOCKET_STATES)

    def _flush_audio(self, now: float, *, closing: bool = False) -> None:
        """Frame everything held (finalize and close must not wait for coalescing)."""
        self._add_frames(now, self._ledger.flush(now, closing=closing))
        if closing:
            self._ledger.drop_partial_sample()

    # ------------------------------------------------------------------
    # Internals: connections and the end
    # ------------------------------------------------------------------

    def _connect(self, now: float) -> None:
        config, timeout = self._config, self._config.connect_timeout
        attempt = self._retry.dial(now, timeout)
        url, headers = config.url(), config.headers()
        self._commands.append(Connect(url=url, headers=headers, attempt=attempt, timeout=timeout))

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
        self._disconnected(code, reason, local=local, will_reconnect=will_reconnect)
        # Finalizes sent on that socket are owed again (before newer ones).
        self._turns.socket_ended()
        # Audio the dead socket had but the replay buffer no longer holds is lost.
        self._ledger.socket_ended()
        self._ledger.report_drop()

    def _disconnected(
        self, code: int | None, reason: str, *, local: bool, will_reconnect: bool
    ) -> None:
        """The open socket is closed (PROTOCOL §6 rule 9: one ``Disconnected`` each)."""
        self._outbound.streaming = False
        number = self._tally.connections
        self._emit(
            Disconnected(
                connection=number,
                code=code,
                reason=reason,
                local=local,
                will_reconnect=will_reconnect,
            )
        )

    def _connection_lost(self, now: float, loss: Loss) -> None:
        """The live socket ended without the session asking."""
        if loss.close is not None:
            self._commands.append(loss.close)
        code, reason, local = loss.code, loss.reason, loss.local
        if self._state is State.CLOSING and not self._owes_anything():
            self._socket_gone(code=code, reason=reason, local=local, will_reconnect=False)
            self._end(now, Ending.clean(is_last_missing=True))
            return
        verdict = self._retry.lost(now, code=code, reason=loss.summary)
        self._socket_gone(code=code, reason=reason, local=local, will_reconnect=not verdict.final)
        if verdict.final:
            self._emit(verdict.failure())
            self._end(now, Ending.failed(verdict.reason))
        else:
            self._retry_later(now, verdict, Trigger.CONNECTION_LOST)

    def _connect_failed(
        self,
        now: float,
        *,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
        final: bool = False,
    ) -> None:
        """The attempt in flight failed."""
        verdict = self._retry.refused(
            now, status=status, reason=reason, retry_after=retry_after, final=final
        )
        self._emit(verdict.failure(status=status, retry_after=retry_after))
        if verdict.final:
            self._end(now, Ending.failed(verdict.reason))
        else:
            self._retry_later(now, verdict, Trigger.CONNECT_FAILED)

    def _retry_later(self, now: float, verdict: Verdict, trigger: Trigger) -> None:
        """Wait in backoff for the next attempt, unless a close has nothing to wait for."""
        self._tally.failed()
        self._transition(trigger)
        self._emit(verdict.reconnecting())
        if self._closing.requested and not self._owes_anything():
            self._end(now, Ending.clean())

    # ------------------------------------------------------------------
    # Internals: turns and server messages
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
        if self._outbound.streaming:
            self._commands.append(self._outbound.finalize(now, request))
        else:
            turns.owe(request)
        return True

    def _expire_finalizes(self, now: float) -> None:
        stalled = True
        while stalled:
            # When DRAINING, the switch below replaces the socket anyway.
            judged = self._state in (State.OPEN, State.CLOSING)
            expired, stalled = self._turns.expire(
                now, heard=self._liveness.messages if judged else None
            )
            self._events += expired
            if stalled:
                # Nothing at all came back since the finalize went out: the
                # connection is wedged. Replace it (the audio is replayed).
                self._connection_lost(now, STALLED)
                if self._state in TERMINAL_STATES:
                    return
        if self._state is State.DRAINING and not self._turns.awaiting:
            self._switch(now)

    def _on_transcription(self, now: float, message: TranscriptionMessage, data: str) -> None:
        closing = self._state is State.CLOSING
        connection = self._tally.connections
        if message.is_final and (
            error := repeat(self._transcribed, message, connection, self._timeline)
        ):
            # Reported, not delivered: its text would be transcribed twice
            # (PROTOCOL §5). It answers and confirms nothing, but is_last in it
            # is still the server saying it is done.
            self._emit(malformed(self._redactor, error, data))
            if message.is_last and closing:
                self._close_complete(now)
            return
        answer = None
        if message.is_final:
            self._tally.final()
            answer = self._turns.answer(now, message.from_finalize)
            ledger = self._ledger
            words = spoken(message, self._timeline)
            if words is not None:
                ledger.heard(*words)  # it may lie in audio passed over (PROTOCOL §9)
            upto = confirmed_upto(message, answer, self._timeline, ledger, closing=closing)
            if upto is not None:
                first = words[0] if words is not None and answer is None else None
                ledger.confirm(upto, first_word=first)
            if answer is not None:
                # The server has transcribed all before the finalize (§6 rule 3).
                ledger.covered(answer.position)
        self._emit(transcript(message, answer, self._timeline, connection))
        if message.is_last and closing:
            self._close_complete(now)
        elif self._state is State.DRAINING and not self._turns.awaiting:
            self._switch(now)

    def _on_error(self, now: float, message: ErrorMessage) -> None:
        verdict = self._retry.server_error(message.code, message.message)
        self._emit(
            ServerError(
                message=message.message,
                code=message.code,
                permanent=verdict is not None,
                raw=message.raw,
            )
        )
        if verdict is not None:
            self._commands.append(CloseConnection(code=1000, reason="permanent server error"))
            self._socket_gone(code=1000, reason=verdict.reason, local=True, will_reconnect=False)
            self._emit(verdict.failure())
            self._end(now, Ending.failed(verdict.reason))

    def _close_complete(self, now: float) -> None:
        """``is_last`` arrived: every final is in."""
        self._events += self._turns.end(now, "session ended before its final", owed=False)
        self._ledger.confirm(self._ledger.received)
        self._ledger.covered(self._ledger.received)
        self._commands.append(CloseConnection(code=1000, reason="session closed"))
        self._disconnected(1000, "session closed", local=True, will_reconnect=False)
        self._end(now, Ending.clean())

    def _close_timed_out(self, now: float) -> None:
        """``close_timeout`` ran out before ``is_last`` (PROTOCOL §6 rule 8)."""
        state = self._state
        ending = Ending.close_timed_out(
            state,
            connected=self._tally.connections > 0,
            unconfirmed=self._ledger.unconfirmed,  # the live socket's evicted audio included
            failures=self._retry.attempt,
            last_failure=self._retry.reason,
        )
        if state in SOCKET_STATES:
            self._commands.append(CloseConnection(code=1000, reason="close timed out"))
            self._socket_gone(code=1000, reason="close timed out", local=True, will_reconnect=False)
        elif state is State.CONNECTING:
            self._commands.append(CloseConnection(code=1000, reason="close timed out"))
        self._end(now, ending)

    def _end(self, now: float, ending: Ending) -> None:
        """The session is over: report what will never be transcribed, then ``Closed``."""
        if ending.dropped is not None:
            self._flush_audio(now, closing=True)
            self._events += self._turns.end(now, ending.unanswered, owed=True)
            self._ledger.abandon(ending.dropped)
        self._ledger.report_drop()
        self._transition(ending.trigger)
        self._retry.stop()
        self._closing.stop()
        self._ledger.pending_since = None
        self._emit(ending.closed(self.summary()))
