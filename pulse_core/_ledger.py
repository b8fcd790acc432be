"""``AudioLedger``: where every tick of the application's audio is.

Positions are *session ticks* (one per sample; for Opus, 48 kHz ticks): tick
``n`` is the ``n``-th sample the application gave, whatever connection carried
it. Along the session's audio the ledger keeps these marks, in this order::

    0 ... replay_from ... sent_upto ... received ... (+ pending bytes)
          confirmed  |  on the live socket | framed, held | not yet framed

* ``pending``: bytes given but not yet cut into frames (coalescing up to
  ``chunk_bytes``, at most ``max_chunk_delay``; a partial sample waits for
  the rest of it);
* ``received``: ticks framed so far, the session's write position;
* ``sent_upto``: ticks the live socket has (after a reconnect, the replay
  brings it up to ``received``);
* ``replay_from``: everything before is confirmed by a delivered final, or
  reported dropped, and is forgotten;
* ``retained``: the frames from ``replay_from`` on, kept for replay, at most
  ``replay_seconds`` worth of bytes (spec/PROTOCOL.md §6 rules 6 and 10).

Invariants:

* ``replay_from <= sent_upto <= received`` while a socket is open, and
  ``retained_bytes`` is the byte size of ``retained`` and at most the bound
  after every input;
* every tick is, in the end, confirmed by a final or reported in exactly one
  ``AudioDropped`` (through ``on_drop``); a frame the live socket has that the bound
  evicts is only a *gap* (``gap_end``): it becomes a drop if that socket dies
  before a final confirms it;
* drop ranges that touch and share a reason are reported as one;
* ``passed``: audio before ``replay_from`` that an automatic final of the live
  socket stepped over (between what was confirmed and its first word), at
  most :data:`MAX_PASSED` ranges, disjoint and in order. It is taken to be
  silence (PROTOCOL §9: finals come in audio order), unless a final of the same
  socket lands inside it: then the server is sending finals out of order, and
  whatever of it no final covered when that socket ends is reported dropped
  (``DropReason.OUT_OF_ORDER``), never silently forgotten.

The ledger never decides when to send: it cuts frames and the engine sends
them, then tells the ledger (:meth:`sent`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Final

from ._audio import OggPageSplitter, opus_packet_ticks
from ._config import ConnectionConfig
from ._errors import LocalProtocolError
from ._events import AudioDropped, DropReason

__all__ = ["MAX_PASSED", "PASSED_SLACK", "AudioLedger", "Frame"]

#: A frame of audio: its first and end session ticks, and its bytes.
Frame = tuple[int, int, bytes]

# Highest Opus bitrate (510 kbit/s), used to bound compressed audio in bytes.
_COMPRESSED_BYTES_PER_SECOND: Final = 64_000
# Ogg header pages are kept for every new connection: refuse absurd ones.
_HEADERS_LIMIT: Final = 256 * 1024
#: Ranges of passed-over audio remembered for the live socket. Past it the
#: earliest is forgotten: only a server sending finals out of order for a
#: stretch older than this many gaps between finals could then lose it unreported.
MAX_PASSED: Final = 256
#: The service rounds its times to 10 ms (PROTOCOL §5): a gap this short
#: before a final's first word, or a final reaching this little into one, is
#: rounding, not audio passed over or a final out of order.
PASSED_SLACK: Final = 0.01


class AudioLedger:
    """The audio of one session: framing, replay buffer and drops."""

    __slots__ = (
        "_chunk_bytes",
        "_drop",
        "_drop_reason",
        "_flush_at",
        "_gap_bytes",
        "_gap_end",
        "_limit",
        "_ogg",
        "_on_drop",
        "_out_of_order",
        "_passed",
        "_pending",
        "_slack",
        "_tps",
        "_width",
        "dropped_bytes",
        "dropped_ticks",
        "max_sent",
        "pending_since",
        "received",
        "replay_from",
        "retained",
        "retained_bytes",
        "sent_upto",
    )

    def __init__(self, config: ConnectionConfig, on_drop: Callable[[AudioDropped], None]) -> None:
        encoding = config.encoding
        self._width = encoding.sample_width or 0  # 0: compressed, frames are opaque
        self._tps = config.ticks_per_second
        self._ogg = OggPageSplitter() if encoding.value == "ogg_opus" else None
        bytes_per_second = self._tps * self._width if self._width else _COMPRESSED_BYTES_PER_SECOND
        self._limit = max(1, int(config.replay_seconds * bytes_per_second))
        delay_bytes = int(config.max_chunk_delay * self._tps) * self._width
        # Coalesce up to the frame size, but never hold more than the delay bound.
        self._flush_at = max(self._width, min(config.chunk_bytes, delay_bytes))
        self._chunk_bytes = config.chunk_bytes
        self._on_drop = on_drop

        self._pending = bytearray()
        #: When the oldest pending byte arrived (``None``: nothing pending).
        self.pending_since: float | None = None
        self.received = 0
        self.retained: collections.deque[Frame] = collections.deque()
        self.retained_bytes = 0
        self.replay_from = 0
        self.sent_upto = 0
        #: The furthest tick any socket was sent (for the summary).
        self.max_sent = 0
        self._gap_end = 0  # [replay_from, gap_end) was sent on the live socket but evicted
        self._gap_bytes = 0
        self._drop: list[int] | None = None  # [start, end, bytes] not yet reported
        self._drop_reason = DropReason.REPLAY_OVERFLOW
        #: Totals of what was reported dropped.
        self.dropped_bytes = 0
        self.dropped_ticks = 0
        # [start, end, bytes] the live socket's finals passed over, in order.
        self._passed: list[list[int]] = []
        self._out_of_order = False  # a final of the live socket landed in passed-over audio
        self._slack = max(1, round(PASSED_SLACK * self._tps))

    # -- what is held -----------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: kept for replay, or not yet framed."""
        return self.retained_bytes + len(self._pending)

    @property
    def unconfirmed(self) -> bool:
        """Framed audio no final has confirmed (and not reported dropped)."""
        return self.replay_from < self.received

    @property
    def stream_headers(self) -> bytes:
        """Ogg header pages a new connection must be sent first (else empty)."""
        return self._ogg.headers if self._ogg is not None else b""

    def coalescing_deadline(self, delay: float) -> float | None:
        """When held whole samples must be framed (a lone partial sample waits)."""
        if self.pending_since is not None and len(self._pending) >= self._width:
            return self.pending_since + delay
        return None

    # -- new audio --------------------------------------------------------------

    def hold(self, now: float, data: bytes | bytearray | memoryview) -> list[tuple[bytes, int]]:
        """Take the application's audio; return the frames it completes.

        PCM is held until a frame's worth (or until the coalescing deadline);
        raw Opus packets are frames as they are; Ogg pages are cut whole.
        """
        if not self._width:
            return self._compressed(data)
        if self.pending_since is None:
            self.pending_since = now
        self._pending += data
        if len(self._pending) >= self._flush_at:
            return self.cut(now)
        return []

    def cut(self, now: float, *, everything: bool = False) -> list[tuple[bytes, int]]:
        """Cut whole samples from the pending bytes into frames of at most
        ``chunk_bytes``. Without ``everything``, only once a frame's worth is held."""
        pending = self._pending
        size = len(pending)
        usable = size - size % self._width if self._width else 0
        if usable == 0 or (not everything and usable < self._flush_at):
            return []
        data = bytes(pending[:usable])
        del pending[:usable]
        # The clock runs from here while bytes stay held.
        self.pending_since = now if pending else None
        chunk = self._chunk_bytes
        if usable <= chunk:
            return [(data, usable // self._width)]
        frames = []
        for offset in range(0, usable, chunk):
            frame = data[offset : offset + chunk]
            frames.append((frame, len(frame) // self._width))
        return frames

    def _compressed(self, data: bytes | bytearray | memoryview) -> list[tuple[bytes, int]]:
        if self._ogg is None:
            # Raw Opus: every chunk is one packet, sent as it is (packets have
            # no framing of their own, so they are never merged or split).
            packet = bytes(data)
            return [(packet, opus_packet_ticks(packet))]
        frames = list(self._ogg.feed(data))
        if len(self._ogg.headers) > _HEADERS_LIMIT:
            raise LocalProtocolError("Ogg stream headers exceed 256 KiB; is this Ogg Opus?")
        return frames

    def flush(self, now: float, *, closing: bool = False) -> list[tuple[bytes, int]]:
        """Frame everything held (finalize and close must not wait for coalescing).

        When ``closing``, an unfinished Ogg page is sent as it is. Half a
        sample may stay pending: once the frames are appended,
        :meth:`drop_partial_sample` reports it.
        """
        if self._width:
            return self.cut(now, everything=True)
        if closing and self._ogg is not None and self._ogg.pending:
            return [(self._ogg.flush(), 0)]
        return []

    def drop_partial_sample(self) -> None:
        """The audio has ended: half a sample still pending can never be sent.

        Called after the last frames are appended, so the loss is placed at
        the very end of the audio, after any overflow those frames caused.
        """
        if self._pending:
            start = self.received
            self.note_drop(start, start, len(self._pending), DropReason.PARTIAL_SAMPLE)
            self._pending.clear()
            self.pending_since = None

    def append(self, data: bytes, ticks: int) -> Frame:
        """Add a cut frame at the write position; returns it with its ticks."""
        start = self.received
        end = start + ticks
        self.received = end
        frame = (start, end, data)
        self.retained.append(frame)
        self.retained_bytes += len(data)
        return frame

    def sent(self, end: int) -> None:
        """The live socket has the audio up to ``end``."""
        self.sent_upto = end
        self.max_sent = max(self.max_sent, end)

    # -- the replay bound -----------------------------------------------------

    @property
    def over_bound(self) -> bool:
        return self.retained_bytes > self._limit

    def evict(self, *, live: bool) -> None:
        """Forget the oldest audio until the replay buffer fits its bound.

        Audio the live socket has (``live``) is only a gap: it is lost only
        if that socket ends before a final confirms it. Anything else is
        dropped now.
        """
        retained = self.retained
        while self.retained_bytes > self._limit and retained:
            start, end, data = retained.popleft()
            self.retained_bytes -= len(data)
            low = max(start, self.replay_from)
            if end <= low and (end > start or start < self.replay_from):
                # Already confirmed (a granule-less page behind replay_from
                # belongs to the partly confirmed frame after it: its audio is
                # confirmed, and the rest of that frame is replayed whole).
                continue
            nbytes = self._span_bytes(start, end, len(data), low)
            if live and end <= self.sent_upto:
                self._gap_end = end
                self._gap_bytes += nbytes
            else:
                self.note_drop(low, end, nbytes, DropReason.REPLAY_OVERFLOW)
                if self._gap_end <= self.replay_from:
                    self.replay_from = end

    def _span_bytes(self, start: int, end: int, size: int, low: int) -> int:
        """Bytes of the frame ``[start, end)`` (``size`` bytes) from ``low`` on."""
        if low <= start:
            return size
        if self._width:
            return (end - low) * self._width
        return size * (end - low) // (end - start) if end > start else size

    # -- confirmation and loss -------------------------------------------------

    def confirm(self, position: int, *, first_word: int | None = None) -> None:
        """A delivered final covers the audio before ``position``: release it.

        ``first_word``: where the words of an automatic final begin. The audio
        from what was confirmed up to there is passed over: taken as silence,
        and remembered in case a final for it arrives after all (see
        :meth:`heard`).
        """
        position = min(position, self.received)
        if position <= self.replay_from:
            return
        if first_word is not None:
            self._pass_over(self.replay_from, min(first_word, position))
        if self._gap_end > self.replay_from:
            if position >= self._gap_end:
                self._gap_end = 0
                self._gap_bytes = 0
            else:
                covered = position - self.replay_from
                total = self._gap_end - self.replay_from
                self._gap_bytes -= self._gap_bytes * covered // total
        self.replay_from = position
        # Release every frame that ends by ``position``. A zero-length frame (an
        # Ogg page without a granule: its packet goes on in the next page) goes
        # with the next frame, never before it, so a replay never starts on
        # the second half of a packet.
        retained = self.retained
        release = 0
        for index, (start, end, _) in enumerate(retained):
            if end > start:
                if end > position:
                    break
                release = index + 1
        for _ in range(release):
            self.retained_bytes -= len(retained.popleft()[2])

    # -- audio passed over (PROTOCOL §9) ------------------------------------------

    def _pass_over(self, start: int, end: int) -> None:
        """Remember ``[start, end)``, about to be confirmed with no word in it."""
        if end - start <= self._slack:
            return
        self._passed.append([start, end, self._bytes_between(start, end)])
        if len(self._passed) > MAX_PASSED:
            del self._passed[0]

    def _bytes_between(self, low: int, high: int) -> int:
        """Bytes of the unconfirmed audio ``[low, high)`` (``low >= replay_from``).

        Compressed frames are opaque: a part of one is counted by its share of
        the frame's ticks (so is a part of a stretch that a final covers later).
        """
        if self._width:
            return (high - low) * self._width
        total = 0
        if self._gap_end > low:
            # Evicted while live: its bytes are only known in sum.
            inside = min(high, self._gap_end) - low
            total += self._gap_bytes * inside // (self._gap_end - self.replay_from)
        for start, end, data in self.retained:
            if start >= high:
                break
            inside = min(end, high) - max(start, low)
            if inside > 0:  # a granule-less Ogg page has no ticks of its own
                total += len(data) * inside // (end - start)
        return total

    def heard(self, start: int, end: int) -> None:
        """A final of the live socket transcribed ``[start, end)``: audio passed
        over that it covers was not silence after all. One that lands in such
        audio shows finals arriving out of order."""
        passed = self._passed
        if not passed or end <= passed[0][0] or start >= passed[-1][1]:
            return
        kept: list[list[int]] = []
        for low, high, nbytes in passed:
            inside = min(high, end) - max(low, start)
            if inside <= 0:
                kept.append([low, high, nbytes])
                continue
            if inside > self._slack:
                self._out_of_order = True
            size = high - low
            if start > low:
                kept.append([low, start, nbytes * (start - low) // size])
            if end < high:
                kept.append([end, high, nbytes * (high - end) // size])
        # A final inside a stretch splits it in two: keep the bound.
        self._passed = kept[-MAX_PASSED:]

    def covered(self, position: int) -> None:
        """The server says it transcribed everything before ``position`` (a
        finalize's answer, or ``is_last``): no final is still to come for
        audio passed over before it."""
        self._passed = [item for item in self._passed if item[1] > position]
        if self._passed and self._passed[0][0] < position:
            low, high, nbytes = self._passed[0]
            self._passed[0] = [position, high, nbytes * (high - position) // (high - low)]

    def socket_ended(self) -> None:
        """The live socket is gone: what it had but the buffer no longer
        holds is lost; the next socket starts from the oldest retained frame.

        If its finals came out of order, the audio they passed over and no
        final covered is lost too: the earlier finals will never come.
        """
        if self._out_of_order:
            for low, high, nbytes in self._passed:
                self.note_drop(low, high, nbytes, DropReason.OUT_OF_ORDER)
        self._passed.clear()
        self._out_of_order = False
        if self._gap_end > self.replay_from:
            self.note_drop(
                self.replay_from, self._gap_end, self._gap_bytes, DropReason.REPLAY_OVERFLOW
            )
        self._gap_end = 0
        self._gap_bytes = 0
        oldest = self.retained[0][0] if self.retained else self.received
        self.replay_from = max(self.replay_from, oldest)
        self.sent_upto = self.replay_from

    def abandon(self, reason: DropReason) -> None:
        """Nothing unconfirmed will be sent any more: report it all dropped.

        The socket, if any, must already be accounted for (:meth:`socket_ended`),
        so every unconfirmed tick from ``replay_from`` on is retained.
        """
        position = self.replay_from
        if position < self.received:
            nbytes = sum(
                self._span_bytes(start, end, len(data), position)
                for start, end, data in self.retained
                if end > position or end == start
            )
            self.note_drop(position, self.received, nbytes, reason)
            self.replay_from = self.received
        self.retained.clear()
        self.retained_bytes = 0

    def note_drop(self, start: int, end: int, nbytes: int, reason: DropReason) -> None:
        """Record a loss. It is merged with the previous one when they touch
        and share a reason; otherwise the previous one is reported first."""
        drop = self._drop
        if drop is not None and drop[1] == start and self._drop_reason is reason:
            drop[1] = end
            drop[2] += nbytes
            return
        self.report_drop()
        self._drop = [start, end, nbytes]
        self._drop_reason = reason

    def report_drop(self) -> None:
        """Report the loss recorded so far (through ``on_drop``), if any.

        The engine calls this when the loss is known to be final for now: a
        socket opened or ended, the session ended, or the live socket's
        buffer overflowed. Until then touching losses merge into one report.
        """
        drop = self._drop
        if drop is None:
            return
        self._drop = None
        start, end, nbytes = drop
        self.dropped_bytes += nbytes
        self.dropped_ticks += end - start
        tps = self._tps
        self._on_drop(
            AudioDropped(bytes=nbytes, start=start / tps, end=end / tps, reason=self._drop_reason)
        )

    # -- replay -----------------------------------------------------------------

    def replay_frames(self) -> Iterator[tuple[int, int, int, bytes]]:
        """Frames a new socket must be sent: ``(start, first, end, data)``.

        ``first`` is where the sent bytes begin: a PCM frame partly confirmed
        by an automatic final is sent from ``replay_from`` on (its confirmed
        head would be transcribed twice).
        """
        position = self.replay_from
        for start, end, frame in self.retained:
            if end <= position and end > start:
                continue
            if start < position and self._width:
                yield start, position, end, frame[(position - start) * self._width :]
            else:
                yield start, start, end, frame

    def unsent_frames(self) -> Iterator[Frame]:
        """Frames held back from the live socket (during a settings drain)."""
        sent = self.sent_upto
        for start, end, data in self.retained:
            if start < sent or (end == start and start < sent):
                continue
            yield start, end, data
