"""Benchmark of the emulator's speech engine (a benchmark, not a test: it asserts nothing).

    python bench/local_bench.py [--streams 1 2 3] [--repeat N] [--wav FILE]
                                [--workers N] [--threads N]

Needs the local extra (``pip install '.[local]'``). For each count of
concurrent streams, that many clients send the speech sample (default
examples/speech.wav, ``--repeat`` times back to back) in real time, 100 ms
chunks, to one in-process emulator over loopback, and finalize each sentence
as a voice agent would (after 300 ms of quiet; the server's own endpointing is
off). Printed per stream count:

* real-time factor: wall time from the first chunk to the last final, over
  the audio's length (1.00 is keeping up; more is falling behind);
* finalize-to-final latency (p50, p95, max), as the client measured it;
* interim latency (p50, p95): an interim's arrival minus the moment its last
  word was spoken (how far the text on screen trails the speaker; a quick
  interim's word times are estimates that end where its audio ended);
* interims per stream per audio second;
* the model's work: mean seconds per full decode (finals) and per quick
  interim decode, and how many of each;
* memory: resident set after loading the model, and the peak.

Chunks go out as a live source sends them: each when its 100 ms have been
spoken. The machine's load average is printed too: other work on the machine
slows every number here.
"""

from __future__ import annotations

import argparse
import array
import functools
import os
import resource
import statistics
import sys
import time
import wave
from pathlib import Path
from typing import Any

import trio

from pulse_core import Transcript
from pulse_trio import open_session
from pulse_trio.emulator import Emulator
from pulse_trio.emulator._whisper_engine import WhisperEngine

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
CHUNK_SECONDS = 0.1
QUIET_LEVEL = 300  # 16-bit amplitude below which a chunk counts as quiet
QUIET_SECONDS = 0.3


class TimedEngine(WhisperEngine):
    """The speech engine, timing each job its worker threads run."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.jobs: dict[str, list[float]] = {"_decode": [], "_glance": []}

    async def _in_worker(self, job: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super()._in_worker(job)
        finally:
            name = job.func.__name__ if isinstance(job, functools.partial) else "other"
            self.jobs.setdefault(name, []).append(time.perf_counter() - started)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_sample(path: Path, repeat: int) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (RATE, 1, 2):
            raise SystemExit(f"{path}: need 16 kHz mono 16-bit")
        return wav.readframes(wav.getnframes()) * repeat


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def one_stream(url: str, pcm: bytes, results: dict[str, list[float]]) -> None:
    step = int(RATE * CHUNK_SECONDS) * 2
    spoken: list[float] = []  # wall time at audio time 0 (one chunk before the first send)
    done = trio.Event()
    async with open_session(
        "sk_local_bench",
        base_url=url,
        settings={"language": "en", "word_timestamps": True, "endpointing": False},
        close_timeout=120,
        finalize_timeout=60,
    ) as session:

        def seen(event: Any) -> None:
            if not isinstance(event, Transcript):
                return
            now = time.monotonic()
            if event.is_final:
                if event.latency is not None:
                    results["finalize"].append(event.latency)
                if event.is_last:
                    results["rtf"].append((now - spoken[0]) / (len(pcm) / 2 / RATE))
                    done.set()
            elif event.words and spoken and event.words[-1].end is not None:
                results["interim"].append(now - spoken[0] - event.words[-1].end)
                results["interims"].append(1.0)

        session.event_handler("on_event")(seen)
        start = trio.current_time()
        quiet = 0.0
        speaking = False
        spoken.append(time.monotonic())
        for index, offset in enumerate(range(0, len(pcm), step)):
            await trio.sleep_until(start + (index + 1) * CHUNK_SECONDS)
            chunk = pcm[offset : offset + step]
            await session.send_audio(chunk)
            samples = array.array("h", chunk)
            loud = max(map(abs, samples), default=0) >= QUIET_LEVEL
            quiet = 0.0 if loud else quiet + CHUNK_SECONDS
            speaking = speaking or loud
            if speaking and quiet >= QUIET_SECONDS:
                await session.finalize()
                speaking = False
    await done.wait()


async def run(streams: int, pcm: bytes, engine: TimedEngine) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"finalize": [], "interim": [], "rtf": [], "interims": []}
    emulator = Emulator(engine=engine, max_sessions=streams)
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        async with trio.open_nursery() as clients:
            for _ in range(streams):
                clients.start_soon(one_stream, emulator.url(), pcm, results)
        nursery.cancel_scope.cancel()
    return results


async def main_async(args: argparse.Namespace) -> None:
    pcm = read_sample(args.wav, args.repeat)
    seconds = len(pcm) / 2 / RATE
    before = rss_mb()
    loaded = time.monotonic()
    engine = TimedEngine(workers=args.workers, threads=args.threads)
    await engine.prepare()
    print(
        f"model loaded in {time.monotonic() - loaded:.2f} s; resident {rss_mb():.0f} MB "
        f"(+{rss_mb() - before:.0f} MB); {engine.workers} decode worker(s) x "
        f"{engine.threads} threads; emulator limit {engine.max_sessions} sessions"
    )
    print(f"sample: {args.wav.name}, {seconds:.1f} s per stream")
    print(
        "streams  RTF(max)  finalize p50/p95/max (s)  interim p50/p95 (s)  interims/s  peak MB"
        "  decode s (n)  quick s (n)  load"
    )
    for streams in args.streams:
        for jobs in engine.jobs.values():
            jobs.clear()
        results = await run(streams, pcm, engine)
        full, quick = engine.jobs["_decode"], engine.jobs["_glance"]
        fin = results["finalize"]
        inter = results["interim"]
        rate = len(results["interims"]) / (seconds * streams)
        print(
            f"{streams:>7}  {max(results['rtf']):8.2f}  "
            f"{percentile(fin, 0.5):5.2f} / {percentile(fin, 0.95):4.2f} / {max(fin):4.2f}"
            f"{'':7}{percentile(inter, 0.5):5.2f} / {percentile(inter, 0.95):4.2f}"
            f"{'':8}{rate:5.2f}  {peak_mb():7.0f}"
            f"  {statistics.mean(full or [0]):5.2f} ({len(full):3})"
            f"  {statistics.mean(quick or [0]):5.2f} ({len(quick):3})"
            f"  {os.getloadavg()[0]:4.1f}",
            flush=True,
        )
        if len(fin) < 2:
            print(f"  (only {len(fin)} finalize latencies: {statistics.mean(fin or [0]):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=2, help="sample copies per stream")
    parser.add_argument("--wav", type=Path, default=ROOT / "examples" / "speech.wav")
    parser.add_argument("--workers", type=int, help="decodes at once (default: cores / 2)")
    parser.add_argument("--threads", type=int, default=2, help="threads per decode (default 2)")
    args = parser.parse_args()
    trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
