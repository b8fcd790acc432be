"""``Timeline``: the map from one connection's clock to session time.

The server times everything by the audio *its connection* carried. Session time
counts the audio the *application* gave. The two differ in three ways, and this
module holds all three (spec/PROTOCOL.md §5):

* a connection starts at some session position (the first tick it replays or
  sends): the *base*;
* keepalive silence goes on the wire but is not the application's audio: the
  server's clock moves, the session's does not (a positive *mark*);
* audio dropped while held back (the replay bound overflowed during a settings
  drain) was never sent: the session's clock jumps, the server's does not (a
  negative mark, a *jump*).

Invariants:

* marks are in connection-tick order, and ``_cum[i]`` is the sum of the lengths
  of marks ``0..i`` plus ``_base`` (the lengths of marks forgotten to respect
  :data:`MAX_MARKS`);
* mapping is monotonic: a later connection time never maps to an earlier
  session time, except that at a jump an end maps before it and a start after
  it (one connection instant is two session instants there).

Positions are integer ticks (one tick per sample; see ``ConnectionConfig``);
server times are float seconds.
"""

from __future__ import annotations

import bisect
from typing import Final

from ._errors import RemoteProtocolError
from ._messages import Utterance, Word

__all__ = ["JUMP_SNAP", "MAX_MARKS", "TIME_TOLERANCE", "Timeline"]

#: Marks kept per connection. A connection that outlives this many keepalives
#: forgets the oldest; its silence is folded into the base, which is exact for
#: every later time (the service does not send times that old).
MAX_MARKS: Final = 4096
#: Server times within this many seconds of a jump are taken to be at it: the
#: service rounds its timestamps (to 10 ms), so a word ending just before a jump
#: may be reported a hair after it, and would otherwise map across the gap.
JUMP_SNAP: Final = 0.01
#: Server times at most this many seconds outside the audio the connection
#: carried are rounding, and are clamped to it; further out they are nonsense
#: (a negative time, ``1e305``) and the message is malformed (PROTOCOL §5).
TIME_TOLERANCE: Final = 0.5


class Timeline:
    """Connection time to session time for the live connection."""

    __slots__ = ("_base", "_cum", "_lens", "_origin", "_starts", "_ticks", "_tps")

    def __init__(self, ticks_per_second: int) -> None:
        self._tps = ticks_per_second
        self._origin = 0  # session tick of the connection's first audio
        self._ticks = 0  # connection ticks so far, keepalive silence included
        self._starts: list[int] = []  # where each mark begins (connection ticks)
        self._lens: list[int] = []  # its length: > 0 silence, < 0 a jump
        self._cum: list[int] = []  # mark lengths up to and including each
        self._base = 0  # lengths of marks forgotten (MAX_MARKS)

    @property
    def ticks(self) -> int:
        """Connection ticks carried so far (audio and keepalive silence)."""
        return self._ticks

    @property
    def marks(self) -> int:
        """Marks remembered for this connection (at most :data:`MAX_MARKS`)."""
        return len(self._starts)

    def restart(self, origin: int, ticks: int) -> None:
        """A new connection: its audio begins at session tick ``origin`` and
        ``ticks`` of it are already on the wire (the replay)."""
        self._origin = origin
        self._ticks = ticks
        self._starts.clear()
        self._lens.clear()
        self._cum.clear()
        self._base = 0

    def fit(self, seconds: float, what: str) -> float:
        """A server time checked against the audio this connection carried:
        clamped to it within :data:`TIME_TOLERANCE`, refused beyond."""
        carried = self._ticks / self._tps
        if seconds < 0.0 or seconds > carried:
            if seconds < -TIME_TOLERANCE or seconds > carried + TIME_TOLERANCE:
                raise RemoteProtocolError(
                    f"{what} {seconds:g} s is outside the {carried:g} s of audio "
                    "this connection carried"
                )
            return min(max(seconds, 0.0), carried)
        return seconds

    def advance(self, ticks: int) -> None:
        """``ticks`` of the application's audio went out on this connection."""
        self._ticks += ticks

    def silence(self, ticks: int) -> None:
        """Keepalive silence went out: connection time only."""
        self._mark(ticks)
        self._ticks += ticks

    def jump(self, ticks: int) -> None:
        """``ticks`` of session time were dropped before reaching this connection."""
        self._mark(-ticks)

    def _mark(self, length: int) -> None:
        if len(self._starts) >= MAX_MARKS:
            self._base = self._cum[0]
            del self._starts[0], self._lens[0], self._cum[0]
        previous = self._cum[-1] if self._cum else self._base
        self._starts.append(self._ticks)
        self._lens.append(length)
        self._cum.append(previous + length)

    def session_ticks(self, seconds: float, *, end: bool = False) -> float:
        """Map a server time (seconds of connection time) to session ticks.

        Near a jump (within :data:`JUMP_SNAP`) an end is put at the end of the
        audio before it and a start at the start of the audio after it.
        """
        ticks = seconds * self._tps
        starts = self._starts
        if not starts:
            return self._origin + ticks - self._base
        lens = self._lens
        snap = JUMP_SNAP * self._tps
        index = bisect.bisect_right(starts, ticks) - 1
        if end:
            if index >= 0 and lens[index] < 0 and ticks - starts[index] <= snap:
                ticks = starts[index]  # the end of the audio before the jump
                index -= 1
        elif index + 1 < len(starts) and lens[index + 1] < 0 and starts[index + 1] - ticks <= snap:
            index += 1
            ticks = starts[index]  # the start of the audio after the jump
        if index < 0:
            adjusted = ticks - self._base
        else:
            begin = starts[index]
            inside = ticks < begin + lens[index]  # inside keepalive silence: where it began
            adjusted = (
                begin - (self._cum[index] - lens[index]) if inside else ticks - self._cum[index]
            )
        return self._origin + adjusted

    def session_time(self, seconds: float, *, end: bool = False) -> float:
        """:meth:`session_ticks` in seconds."""
        return self.session_ticks(seconds, end=end) / self._tps

    def session_span(
        self, start: float | None, end: float | None
    ) -> tuple[float | None, float | None]:
        """Map an item's connection-time span to session seconds.

        A short item across a jump, both ends within the snap, would come out
        with its start after its end: it goes wholly to the side holding more
        of it, so a start never follows its end.
        """
        tps = self._tps
        if start is None or end is None:
            return (
                None if start is None else self.session_ticks(start) / tps,
                None if end is None else self.session_ticks(end, end=True) / tps,
            )
        first = self.session_ticks(start)
        last = self.session_ticks(end, end=True)
        if first > last:
            before = (self.session_ticks(start, end=True), last)
            after = (first, self.session_ticks(end))
            first, last = before if before[1] - before[0] >= after[1] - after[0] else after
        return first / tps, last / tps

    def words(self, words: tuple[Word, ...]) -> tuple[Word, ...]:
        """The server's words with their times in session seconds."""
        mapped = []
        for w in words:
            first, last = self.session_span(w.start, w.end)
            mapped.append(
                Word(
                    word=w.word,
                    start=first,
                    end=last,
                    confidence=w.confidence,
                    speaker=w.speaker,
                    speaker_confidence=w.speaker_confidence,
                )
            )
        return tuple(mapped)

    def utterances(self, utterances: tuple[Utterance, ...]) -> tuple[Utterance, ...]:
        """The server's utterances (sentences) with their times in session seconds."""
        mapped = []
        for u in utterances:
            first, last = self.session_span(u.start, u.end)
            mapped.append(Utterance(text=u.text, start=first, end=last, speaker=u.speaker))
        return tuple(mapped)
