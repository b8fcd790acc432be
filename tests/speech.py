"""The shipped speech sample and the word error rate, for the suites that test the speech engine.

``examples/speech.wav`` is made by ``examples/make_speech.sh`` from
``examples/speech.txt``, its reference text. ``word_error_rate`` compares
normalised words (lower case, no punctuation), as speech recognition is
usually scored: substitutions, deletions and insertions over reference words.
"""

from __future__ import annotations

import array
import itertools
import re
import wave

from tests.command import ROOT

__all__ = [
    "REFERENCE",
    "SAMPLE",
    "normalise",
    "sample_pcm",
    "sample_sentences",
    "word_error_rate",
]

SAMPLE = ROOT / "examples" / "speech.wav"
REFERENCE = (ROOT / "examples" / "speech.txt").read_text(encoding="utf-8")


def sample_pcm() -> bytes:
    """The sample's 16 kHz mono 16-bit samples."""
    with wave.open(str(SAMPLE), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return wav.readframes(wav.getnframes())


def sample_sentences(pcm: bytes | None = None, *, gap: float = 0.8) -> list[bytes]:
    """The sample cut in the middle of each pause of at least ``gap`` seconds: one
    piece per sentence, each with some silence before and after."""
    samples = array.array("h", pcm if pcm is not None else sample_pcm())
    cuts: list[int] = []
    quiet_from: int | None = None
    for index, value in enumerate(samples):
        if abs(value) < 50:
            quiet_from = index if quiet_from is None else quiet_from
            continue
        if quiet_from is not None and index - quiet_from >= gap * 16000:
            cuts.append((quiet_from + index) // 2)
        quiet_from = None
    edges = [0, *cuts, len(samples)]
    return [samples[a:b].tobytes() for a, b in itertools.pairwise(edges)]


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word edit distance over the number of reference words."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, heard in enumerate(hyp, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != heard))
            )
        previous = current
    return previous[-1] / max(1, len(ref))
