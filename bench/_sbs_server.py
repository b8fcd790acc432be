"""The side-by-side benchmark's server: the emulator, counting and stamping.

    python bench/_sbs_server.py STATS.json [--max-sessions N]

Run by ``bench/side_by_side.py`` in a process of its own (pinned to its own
core), with the checkout on ``PYTHONPATH``. It prints ``READY <url>`` once it
listens on loopback, and on SIGTERM or SIGINT writes ``STATS.json``:

* per connection, the audio bytes it received and when the first and last of
  them arrived (``time.time()``): the harness counts a client's CPU against
  the audio the server got, not the audio the client was given;
* for every final it sent, its transcript and the ``time.time()`` at which it
  went to the socket: the client records when it got that final, and the
  difference is the delivery latency (the benchmark's transcripts are unique
  per session and turn, so the text is the key);
* the server's own CPU seconds between the first connection and the end of
  the last one, so a reader can tell when the server, not the client, was the
  bottleneck (it has one core).

The recogniser is the token engine with one shortcut: a frame of all-zero
samples while the decoder is idle (a whole silent frame already seen since the
last sound, so no word is in progress) is counted, not read sample by sample.
The words, their times and the end-of-utterance decisions are the same; the
server's cost per silent frame drops from a Python loop over its samples to
one ``bytes.count``. Without it one core serves about a hundred 20 ms
sessions; the benchmark asks for five hundred.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from pulse_core import Encoding
from pulse_trio.emulator import Emulator, RecognitionStream, ServerSession
from pulse_trio.emulator.token_audio import DecodedWord, TokenDecoder


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _SilenceSkipping:
    """A token decoder that counts idle silent frames instead of reading them."""

    def __init__(self, encoding: Encoding, sample_rate: int) -> None:
        self._decoder = TokenDecoder(encoding, sample_rate)
        self._width = encoding.sample_width if encoding is Encoding.LINEAR16 else None
        self._skipped = 0  # samples counted, not read
        self._idle = False  # the last frame read was all silence

    @property
    def seconds(self) -> float:
        return self._decoder.seconds + self._skipped / self._decoder.rate

    def feed(self, data: bytes) -> list[DecodedWord]:
        silent = self._width is not None and data.count(0) == len(data) and len(data) % 2 == 0
        if silent and self._idle:
            self._skipped += len(data) // 2
            return []
        self._idle = silent
        return [self._shift(word) for word in self._decoder.feed(data)]

    def end_word(self) -> list[DecodedWord]:
        return [self._shift(word) for word in self._decoder.end_word()]

    def _shift(self, word: DecodedWord) -> DecodedWord:
        # Skipping happens only between words, so a word's time moves by all of it.
        offset = self._skipped / self._decoder.rate
        return DecodedWord(word.word, word.start + offset, word.end + offset)


class _SkippingEngine:
    name = "token"

    def stream(self, encoding: Encoding, sample_rate: int) -> RecognitionStream:
        return _SilenceSkipping(encoding, sample_rate)


class BenchEmulator(Emulator):
    """The emulator, recording audio received and stamping each final sent."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(engine=_SkippingEngine(), **kwargs)
        self.sessions: list[dict[str, Any]] = []
        self.finals: dict[str, float] = {}
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self.wall_first: float | None = None
        self.wall_last: float | None = None

    def _stamp(self, outputs: list[Any]) -> list[Any]:
        """Stamp each final as the server hands it to the socket: the send
        follows at once, in this task. (A stamp taken after the send returned
        could come after the client already had it, when many sessions wait
        for the server's one core.)"""
        now = time.time()
        for item in outputs:
            if isinstance(item, dict) and item.get("is_final"):
                self.finals[item["transcript"]] = now
        return outputs

    async def _run(self, ws: WebSocketConnection, session: ServerSession) -> None:
        if self.cpu_first is None:
            self.cpu_first, self.wall_first = _cpu(), time.time()
        record: dict[str, Any] = {"bytes": 0, "first": None, "last": None}
        self.sessions.append(record)
        audio, control = session.audio, session.control

        def on_audio(data: bytes) -> list[Any]:
            now = time.time()
            if record["first"] is None:
                record["first"] = now
            record["last"] = now
            return self._stamp(audio(data))

        def on_control(text: str) -> list[Any]:
            return self._stamp(control(text))

        session.audio = on_audio  # type: ignore[method-assign]
        session.control = on_control  # type: ignore[method-assign]
        try:
            await super()._run(ws, session)
        finally:
            record["bytes"] = session.audio_bytes
            self.cpu_last, self.wall_last = _cpu(), time.time()

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "finals": self.finals,
            "bytes": sum(record["bytes"] for record in self.sessions),
            "cpu": (self.cpu_last or 0.0) - (self.cpu_first or 0.0),
            "wall": (self.wall_last or 0.0) - (self.wall_first or 0.0),
            "refused": self.handshakes - self.connections,
        }


async def main(stats: Path, max_sessions: int) -> None:
    emulator = BenchEmulator(max_sessions=max_sessions)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(emulator.serve)
            print(f"READY {emulator.url()}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    stats.write_text(json.dumps(emulator.stats()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stats", type=Path)
    parser.add_argument("--max-sessions", type=int, default=2000)
    args = parser.parse_args()
    trio.run(main, args.stats, args.max_sessions)
    sys.exit(0)
