"""Output formats for ``pulse transcribe``: text, jsonl, json, srt and vtt.

Each formatter turns events into text as they come, so every format but
``json`` (one document, written at the end) streams: what has been written
stays valid if the command is interrupted. Subtitles are cut from word
timestamps (or sentence timestamps, spread over their words): a cue ends at
sentence punctuation, at a pause longer than ``max_gap``, and where the
speaker changes. A stretch between those that would pass ``max_chars`` or
``max_seconds`` is cut into as few cues as fit, as even as they can be
(preferring cuts after a comma), so no cue is left holding the last word or
two; a one-word cue too short to read joins a neighbour when it fits. Two
lines are broken as evenly as they can be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Final

import attrs

from pulse_core import Transcript

from ._args import FORMATS

__all__ = [
    "FORMATS",
    "Cue",
    "Formatter",
    "Token",
    "build_cues",
    "make_formatter",
    "timestamp",
    "tokens",
]

_SENTENCE_END: Final = re.compile(r"[.!?…。！？؟।]+[\"'”’»)\]]*$")
_WORDISH: Final = re.compile(r"\S+\s*")
LINE_CHARS: Final = 42


def timestamp(seconds: float, *, sep: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT; ``sep="."`` for WebVTT), rounded to the millisecond."""
    total = max(0, round(seconds * 1000))
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


@attrs.frozen
class Token:
    """A piece of a transcript with its time span; ``text`` keeps its trailing space."""

    text: str
    start: float
    end: float
    speaker: int | str | None = None


@attrs.frozen
class Cue:
    start: float
    end: float
    text: str
    speaker: int | str | None = None


def _spread(text: str, start: float, end: float, speaker: int | str | None) -> list[Token]:
    """Timed pieces of ``text`` across ``start``-``end``, by character count."""
    pieces = _WORDISH.findall(text.strip())
    total = sum(len(piece.strip()) for piece in pieces) or 1
    out: list[Token] = []
    at = start
    for piece in pieces:
        step = (end - start) * len(piece.strip()) / total
        out.append(Token(piece, at, at + step, speaker))
        at += step
    return out


def tokens(event: Transcript) -> list[Token] | None:
    """The final's text cut into timed tokens, or ``None`` when it has no times.

    With word timestamps each word is found in the text, so punctuation and
    spacing come from the transcript; words that cannot be found are joined
    with spaces instead.
    """
    text = event.text.replace("\n", " ")
    timed = [
        (word.word, word.start, word.end, word.speaker)
        for word in event.words
        if word.start is not None and word.end is not None
    ]
    if timed and len(timed) == len(event.words):
        starts: list[int] = []
        cursor = 0
        for word, _, _, _ in timed:
            at = text.find(word, cursor) if word else -1
            if at < 0:
                break
            starts.append(at)
            cursor = at + len(word)
        if len(starts) == len(timed):
            starts[0] = 0
            ends = [*starts[1:], len(text)]
            return [
                Token(text[a:b], start, end, speaker)
                for (_, start, end, speaker), a, b in zip(timed, starts, ends, strict=True)
            ]
        return [Token(word + " ", start, end, speaker) for word, start, end, speaker in timed]
    utterances = [u for u in event.utterances if u.start is not None and u.end is not None]
    if utterances:
        out: list[Token] = []
        for utterance in utterances:
            start, end = utterance.start or 0.0, utterance.end or 0.0
            out.extend(_spread(utterance.text, start, end, utterance.speaker))
        return out
    if event.start is not None and event.end is not None:
        return _spread(text, event.start, event.end, event.speaker)
    return None


#: A one-word cue shorter than this joins a neighbour when it fits (seconds).
MIN_ORPHAN_SECONDS: Final = 1.0
_CLAUSE_END: Final = re.compile(r"[,;:—–]+[\"'”’»)\]]*$")


def build_cues(
    items: Sequence[Token],
    *,
    max_chars: int = 2 * LINE_CHARS,
    max_seconds: float = 7.0,
    max_gap: float = 1.5,
) -> list[Cue]:
    """Group tokens into cues (see the module documentation for the rules)."""
    runs: list[list[Token]] = []
    current: list[Token] = []
    for token in items:
        if current and (
            token.speaker != current[0].speaker or token.start - current[-1].end > max_gap
        ):
            runs.append(current)
            current = []
        current.append(token)
        if _SENTENCE_END.search(token.text.rstrip()):
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    groups = [piece for run in runs for piece in _split(run, max_chars, max_seconds)]
    groups = _join_orphans(groups, max_chars, max_seconds, max_gap)
    cues = []
    for group in groups:
        text = "".join(token.text for token in group).strip()
        if text:
            cues.append(Cue(group[0].start, group[-1].end, text, group[0].speaker))
    return cues


def _length(tokens: Sequence[Token]) -> int:
    return len("".join(token.text for token in tokens).strip())


def _split(run: list[Token], max_chars: int, max_seconds: float) -> list[list[Token]]:
    """``run`` in as few pieces as fit the limits, as even in length as can be.

    A token alone is a piece even if it passes the limits. Among the fewest
    pieces, the sum of their squared lengths is the smallest, less a bonus for
    a piece that ends after a comma or another clause mark.
    """
    if _length(run) <= max_chars and run[-1].end - run[0].start <= max_seconds:
        return [run]
    count = len(run)
    bonus = max_chars * max_chars / 8
    # best[end]: (pieces, cost, where the last piece begins) for run[:end].
    best: list[tuple[int, float, int]] = [(0, 0.0, 0)] + [(count + 1, 0.0, 0)] * count
    for end in range(1, count + 1):
        tail = run[end - 1].text.rstrip()
        length = len(tail)
        for begin in range(end - 1, -1, -1):
            if begin < end - 1:
                length += len(run[begin].text)
                if length > max_chars or run[end - 1].end - run[begin].start > max_seconds:
                    break
            pieces, cost, _ = best[begin]
            cost += length * length
            if end < count and _CLAUSE_END.search(tail):
                cost -= bonus
            if (pieces + 1, cost) < best[end][:2]:
                best[end] = (pieces + 1, cost, begin)
    pieces_: list[list[Token]] = []
    end = count
    while end:
        begin = best[end][2]
        pieces_.append(run[begin:end])
        end = begin
    return pieces_[::-1]


def _join_orphans(
    groups: list[list[Token]], max_chars: int, max_seconds: float, max_gap: float
) -> list[list[Token]]:
    """A one-word cue too short to read joins the neighbour it fits best with."""
    out = list(groups)
    index = 0
    while index < len(out):
        group = out[index]
        if len(group) != 1 or group[0].end - group[0].start >= MIN_ORPHAN_SECONDS:
            index += 1
            continue
        options = []
        for other in (index - 1, index + 1):
            if not 0 <= other < len(out):
                continue
            first, second = (out[other], group) if other < index else (group, out[other])
            joined = first + second
            if (
                second[0].speaker == first[-1].speaker
                and second[0].start - first[-1].end <= max_gap
                and _length(joined) <= max_chars
                and joined[-1].end - joined[0].start <= max_seconds
            ):
                options.append((_length(joined), other, joined))
        if not options:
            index += 1
            continue
        _, other, joined = min(options, key=lambda option: option[:2])
        low = min(index, other)
        out[low : low + 2] = [joined]
        index = low
    return out


def _wrap(text: str, width: int = LINE_CHARS) -> str:
    """One line, or two as even as they can be (after a comma or a sentence's
    end when that costs the longer line at most a few characters)."""
    if len(text) <= width:
        return text
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    if not spaces:
        return text

    def longer(cut: int) -> float:
        pause = 4 if text[cut - 1] in ",;:.!?" else 0
        return max(cut, len(text) - cut - 1) - pause

    cut = min(spaces, key=longer)
    return text[:cut] + "\n" + text[cut + 1 :]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def segment(event: Transcript) -> dict[str, Any]:
    """A final as a JSON object (the ``jsonl`` line and the ``json`` segment)."""
    obj: dict[str, Any] = {
        "text": event.text,
        "start": _round(event.start),
        "end": _round(event.end),
    }
    if event.speaker is not None:
        obj["speaker"] = event.speaker
    if event.language is not None:
        obj["language"] = event.language
    if event.words:
        obj["words"] = [
            {
                key: value
                for key, value in (
                    ("word", word.word),
                    ("start", _round(word.start)),
                    ("end", _round(word.end)),
                    ("confidence", word.confidence),
                    ("speaker", word.speaker),
                )
                if value is not None or key in ("start", "end")
            }
            for word in event.words
        ]
    if event.utterances:
        obj["sentences"] = [
            {
                "text": u.text,
                "start": _round(u.start),
                "end": _round(u.end),
                **({"speaker": u.speaker} if u.speaker is not None else {}),
            }
            for u in event.utterances
        ]
    if event.redacted_entities:
        obj["redacted_entities"] = list(event.redacted_entities)
    if event.full_transcript is not None:
        obj["full_transcript"] = event.full_transcript
    if event.turn is not None:
        obj["turn"] = event.turn
    if event.latency is not None:
        obj["latency"] = round(event.latency, 4)
    if event.is_last:
        obj["is_last"] = True
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


class Formatter:
    """Text to write for each event; ``""`` writes nothing."""

    #: Notes for the user (stderr), collected as the formatter works.
    warnings: list[str]

    def __init__(self) -> None:
        self.warnings = []

    def header(self) -> str:
        return ""

    def final(self, event: Transcript) -> str:
        raise NotImplementedError

    def interim(self, event: Transcript) -> str:
        return ""

    def voice(self, kind: str, timestamp: float) -> str:
        return ""

    def footer(self, info: dict[str, Any]) -> str:
        return ""


class TextFormatter(Formatter):
    """One line per final; with ``speakers``, one line per speaker turn."""

    def __init__(self, *, speakers: bool = False) -> None:
        super().__init__()
        self.speakers = speakers

    def final(self, event: Transcript) -> str:
        text = event.text.replace("\n", " ").strip()
        if not text:
            return ""
        if not self.speakers:
            return text + "\n"
        pieces = tokens(event)
        if not pieces or all(p.speaker is None for p in pieces):
            label = f"[speaker {event.speaker}] " if event.speaker is not None else ""
            return label + text + "\n"
        lines: list[str] = []
        run: list[Token] = []
        for piece in [*pieces, None]:
            if run and (piece is None or piece.speaker != run[0].speaker):
                body = "".join(t.text for t in run).strip()
                lines.append(f"[speaker {run[0].speaker}] {body}\n")
                run = []
            if piece is not None:
                run.append(piece)
        return "".join(lines)


class JsonlFormatter(Formatter):
    """One JSON object per line: finals, and interims and voice activity when asked."""

    def __init__(self, *, interims: bool = False) -> None:
        super().__init__()
        self.interims = interims

    def final(self, event: Transcript) -> str:
        if not event.text.strip():
            return ""
        return _dumps({"type": "final", **segment(event)}) + "\n"

    def interim(self, event: Transcript) -> str:
        if not self.interims:
            return ""
        return (
            _dumps(
                {
                    "type": "interim",
                    "text": event.text,
                    "start": _round(event.start),
                    "end": _round(event.end),
                }
            )
            + "\n"
        )

    def voice(self, kind: str, timestamp: float) -> str:
        return _dumps({"type": kind, "timestamp": round(timestamp, 3)}) + "\n"


class JsonFormatter(Formatter):
    """One document at the end: the whole text, then every segment."""

    def __init__(self) -> None:
        super().__init__()
        self.segments: list[dict[str, Any]] = []

    def final(self, event: Transcript) -> str:
        if event.text.strip():
            self.segments.append(segment(event))
        return ""

    def footer(self, info: dict[str, Any]) -> str:
        language = next((s["language"] for s in self.segments if "language" in s), None)
        document = {
            "text": " ".join(s["text"].strip() for s in self.segments),
            "language": language,
            **info,
            "segments": self.segments,
        }
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


class SubtitleFormatter(Formatter):
    """SubRip (``srt``) or WebVTT (``vtt``) cues, numbered and in time order."""

    def __init__(
        self,
        kind: str,
        *,
        max_chars: int = 2 * LINE_CHARS,
        max_seconds: float = 7.0,
        speakers: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.max_chars = max_chars
        self.max_seconds = max_seconds
        self.speakers = speakers
        self.count = 0
        self.last_end = 0.0
        self._estimated = False

    def header(self) -> str:
        return "WEBVTT\n\n" if self.kind == "vtt" else ""

    def final(self, event: Transcript) -> str:
        text = event.text.replace("\n", " ").strip()
        if not text:
            return ""
        pieces = tokens(event)
        if pieces is None:
            if not self._estimated:
                self._estimated = True
                self.warnings.append(
                    "the service sent a final without timestamps; its cue times are estimates"
                )
            words = len(text.split())
            pieces = _spread(text, self.last_end, self.last_end + 0.4 * words, event.speaker)
        cues = build_cues(pieces, max_chars=self.max_chars, max_seconds=self.max_seconds)
        return "".join(self._cue(cue) for cue in cues)

    def _cue(self, cue: Cue) -> str:
        start = max(cue.start, self.last_end)
        end = max(cue.end, start + 0.2) if cue.end <= start else cue.end
        self.last_end = end
        self.count += 1
        text = _wrap(cue.text)
        if self.kind == "vtt":
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            if self.speakers and cue.speaker is not None:
                text = f"<v Speaker {cue.speaker}>{text}"
            return f"{timestamp(start, sep='.')} --> {timestamp(end, sep='.')}\n{text}\n\n"
        if self.speakers and cue.speaker is not None:
            text = f"[speaker {cue.speaker}] {text}"
        return f"{self.count}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n\n"


def make_formatter(
    kind: str,
    *,
    interims: bool = False,
    speakers: bool = False,
    max_chars: int = 2 * LINE_CHARS,
    max_seconds: float = 7.0,
) -> Formatter:
    if kind == "text":
        return TextFormatter(speakers=speakers)
    if kind == "jsonl":
        return JsonlFormatter(interims=interims)
    if kind == "json":
        return JsonFormatter()
    if kind in ("srt", "vtt"):
        return SubtitleFormatter(
            kind, max_chars=max_chars, max_seconds=max_seconds, speakers=speakers
        )
    raise ValueError(f"unknown format {kind!r}; one of {', '.join(FORMATS)}")
