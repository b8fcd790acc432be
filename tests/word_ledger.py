"""The word ledger: every word given comes back once, or its audio was dropped.

Two generated suites give a session unique token-audio words (``w1``, ``w2``,
...) and read back what became of them: the engine's state machine
(tests/core/test_properties_core.py) and the adapter's fault schedules
(tests/adapter/test_chaos_adapter.py). This is their one account of the words:
what was given (each word's audio span in session ticks), what was dropped
(every ``AudioDropped`` range) and what came back (each word of each final, in
order). It lives here, beside both folders, because both use it.

The rules it checks, numbered as in both suites:

1. an answer to a finalize has no word given after that finalize, and every
   word given before it has come back (or its audio was dropped);
2. the finals' words are the words given, in order, none repeated; a word is
   missing only when an ``AudioDropped`` covers its audio, and a word cut by a
   dropped range may come back in part, as a fragment inside its own span,
   and nothing else; no audio is dropped twice, and never audio already
   transcribed;
3. word times are session time: where the word's audio was given, and never
   going backwards.

The ledger raises nothing: each method returns the problems it found, as
messages naming the rule, and each suite fails in its own way (the state
machine asserts at once; the chaos checker reports through its ``check``).
Times are in ticks (samples); ``tolerance`` is how far a time may be off
(the service rounds times to 0.1 ms: at most 0.4 tick at 8 kHz).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from pulse_core import AudioDropped, DropReason, Transcript

__all__ = ["GivenWord", "WordLedger", "overlaps"]


@attrs.define
class GivenWord:
    """A word the test gave: its text and audio span in session ticks."""

    name: str
    start: int
    end: int


def overlaps(start: float, end: float, ranges: list[tuple[int, int]]) -> bool:
    return any(start < high and end > low for low, high in ranges)


class WordLedger:
    """The words of one session: given, dropped, and come back in finals."""

    def __init__(self, rate: int, *, width: int = 2, tolerance: float = 0.5) -> None:
        self.rate = rate
        self.width = width
        self.tolerance = tolerance
        self.words: list[GivenWord] = []
        self.index: dict[str, int] = {}  # name -> position in words
        self.drops: list[tuple[int, int]] = []  # dropped tick ranges, as reported
        self.dropped_bytes = 0
        self.delivered: set[int] = set()  # positions of the words that came back
        self.fragments = 0  # pieces of cut words that came back
        self.last_index = -1  # the last word that came back
        self.last_end = 0.0  # where the last word that came back ended
        self._problems: list[str] = []

    # -- what the test gave ----------------------------------------------------------------

    def give(self, start: int, make_audio: Callable[[str], bytes]) -> bytes:
        """Enter the next word (``w1``, ``w2``, ...), its audio given from tick
        ``start``; returns that audio (``make_audio(name)``)."""
        name = f"w{len(self.words) + 1}"
        audio = make_audio(name)
        self.index[name] = len(self.words)
        self.words.append(GivenWord(name, start, start + len(audio) // self.width))
        return audio

    def is_dropped(self, word: GivenWord) -> bool:
        """Some of ``word``'s audio lies in a dropped range."""
        return overlaps(word.start, word.end, self.drops)

    # -- what the session reported -----------------------------------------------------------

    def dropped(self, item: AudioDropped) -> list[str]:
        """An ``AudioDropped``: a range not dropped before, covering no word already
        transcribed (a partial sample at the very end drops no range)."""
        start, end = round(item.start * self.rate), round(item.end * self.rate)
        if item.reason is DropReason.PARTIAL_SAMPLE:
            self._check(item.bytes < self.width and start == end, f"invariant 2: {item!r}")
            self.dropped_bytes += item.bytes
            return self._report()
        self._check(end > start, f"invariant 2: an empty drop {item!r}")
        self._check(
            item.bytes == (end - start) * self.width, f"invariant 2: drop bytes wrong: {item!r}"
        )
        self._check(
            not overlaps(start, end, self.drops), f"invariant 2: audio dropped twice: {item!r}"
        )
        for index in self.delivered:
            word = self.words[index]
            if start < word.end and end > word.start:
                self._problem(f"invariant 2: {item!r} covers {word.name}, already transcribed")
        self.drops.append((start, end))
        self.dropped_bytes += item.bytes
        return self._report()

    def final(self, item: Transcript, *, answers: int | None = None) -> list[str]:
        """A final transcript's words, in order. ``answers`` is the tick of the
        finalize it answers, when it is the answer to one."""
        self._check(
            item.text == " ".join(word.word for word in item.words),
            f"the final's text and words disagree: {item!r}",
        )
        for word in item.words:
            if word.start is None or word.end is None:
                self._problem(f"invariant 3: {word.word} has no times in {item!r}")
                continue
            self._word(word.word, word.start * self.rate, word.end * self.rate)
        if answers is not None:
            for word in item.words:
                self._check(
                    word.end is not None and word.end * self.rate <= answers + self.tolerance,
                    f"invariant 1: the answer to turn {item.turn} has {word.word}, given after "
                    "its finalize",
                )
            self._require_delivered(
                lambda given: given.end <= answers,
                f"the answer to turn {item.turn} (finalize at tick {answers})",
            )
        return self._report()

    def end(self, given_ticks: int, *, failed: bool) -> list[str]:
        """The session is over, ``given_ticks`` of audio given: every word whose audio
        was not dropped came back exactly once (a word not given in full, only
        when the session failed, and then never)."""
        for index, word in enumerate(self.words):
            came_back = index in self.delivered
            if word.end > given_ticks:
                self._check(
                    failed, f"{word.name} was never given in full, yet the session did not fail"
                )
                self._check(
                    not came_back,
                    f"invariant 2: {word.name} was never given in full, yet came back",
                )
            elif not came_back and not self.is_dropped(word):
                self._problem(
                    f"invariant 2: {word.name} (ticks {word.start}-{word.end}) never "
                    f"transcribed, and no AudioDropped covers it (drops: {self.drops})"
                )
        return self._report()

    # -- the bookkeeping -----------------------------------------------------------------------

    def _word(self, text: str, start: float, end: float) -> None:
        tolerance = self.tolerance
        self._check(
            start >= self.last_end - tolerance,
            f"invariant 3: {text} at tick {start:g} goes back before tick {self.last_end:g}",
        )
        self.last_end = end
        index = self.index.get(text)
        given = None if index is None else self.words[index]
        if given is None or self.is_dropped(given):
            # A word cut by a dropped range may come back in part: what is left of
            # it decodes as a fragment, or as the word when the cut took less than
            # half a symbol. Nothing else may come back.
            cut = [
                number
                for number, word in enumerate(self.words)
                if self.is_dropped(word)
                and start >= word.start - tolerance
                and end <= word.end + tolerance
            ]
            self._check(
                bool(cut), f"invariant 2: {text!r} at ticks {start:g}-{end:g} is not a word given"
            )
            self.fragments += 1
            if index is None:
                return
            self._check(index in cut, f"invariant 2: {text!r} at ticks {start:g}-{end:g}")
        else:
            self._check(
                abs(start - given.start) <= tolerance and abs(end - given.end) <= tolerance,
                f"invariant 3: {text} at ticks {start:g}-{end:g}, "
                f"given at {given.start}-{given.end}",
            )
        assert given is not None and index is not None
        # (A second delivery of a word, dropped in part or not, is caught here.)
        self._check(index not in self.delivered, f"invariant 2: {text} transcribed twice")
        self._check(
            index > self.last_index,
            f"invariant 2: {text} after {self.words[self.last_index].name}",
        )
        self._require_delivered(lambda word: word.end <= given.start, text)
        self.delivered.add(index)
        self.last_index = index

    def _require_delivered(self, before: Callable[[GivenWord], bool], what: str) -> None:
        for index, word in enumerate(self.words):
            if before(word) and index not in self.delivered and not self.is_dropped(word):
                self._problem(
                    f"invariant 2: {word.name} is missing before {what}, and no AudioDropped "
                    "covers it"
                )

    def _check(self, condition: bool, message: str) -> None:
        if not condition:
            self._problem(message)

    def _problem(self, message: str) -> None:
        self._problems.append(message)

    def _report(self) -> list[str]:
        problems, self._problems = self._problems, []
        return problems
