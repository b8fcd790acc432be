"""The side-by-side benchmark still runs: one short pulse session, end to end,
beside its event loop's pacing floor.

``bench/side_by_side.py`` is a benchmark, not a test, and its full run takes
half an hour in virtual environments of its own. This runs it the cheapest
way that still goes through every part (``--current``: the pulse driver in
this interpreter with this checkout, one session, 2 s of audio, a finalize
every second) and checks that the JSON it writes holds sane figures, so that
the harness cannot rot unnoticed. It asserts nothing about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pulse_core import Encoding
from pulse_trio.emulator.token_audio import TokenDecoder, encode
from tests.command import ROOT, command_env

BENCH = ROOT / "bench"


def test_one_pulse_session_gives_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    process = subprocess.run(
        [
            sys.executable,
            str(BENCH / "side_by_side.py"),
            "--current",
            "--clients",
            "pulse-20ms",
            "trio-pacing",
            "--workloads",
            "w1",
            "--sessions",
            "1",
            "--seconds",
            "2",
            "--finalize-every",
            "1",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=command_env(),
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(out.read_text())
    run, pacing = results["runs"]
    assert (run["workload"], run["client"]) == ("W1 N=1", "pulse-20ms")
    figures = run["figures"]
    assert figures["errors"] == []
    # Two seconds of 16 kHz linear16 reached the server, and both turns' finals came back.
    assert run["server"]["bytes"] == 2 * 16000 * 2
    assert figures["received"] == pytest.approx(1.0)
    assert figures["finals"] == 1.0
    assert figures["finished"] == 1
    assert figures["kept_up"] is True
    assert figures["cpu"] > 0
    assert figures["cpu_per_audio_hour"] == pytest.approx(figures["cpu"] * 1800)
    assert figures["peak_rss_mb"] > 5
    assert results["idle_rss_kb"]["pulse-20ms"] > 0
    for name in ("delivery_p50", "delivery_p99", "finalize_p50", "finalize_p99"):
        assert 0 <= figures[name] < 5, name
    assert figures["finalize_p50"] >= figures["delivery_p50"]
    assert "| W1 N=1 | pulse-20ms |" in process.stdout
    # The engine held the turn's audio for replay until its final came.
    assert 0 < figures["replay_kb"] <= 2 * 16000 * 2 / 1024
    # The pacing floor walked the same schedule, sent nothing, and its cost is
    # taken from pulse's in the added figures.
    assert pacing["client"] == "trio-pacing"
    assert pacing["server"]["bytes"] == 0
    assert pacing["figures"]["cpu_per_audio_hour"] > 0
    assert pacing["figures"]["received"] == pytest.approx(1.0)
    added = results["added"]["W1 N=1"]["pulse-20ms"]["cpu"]
    assert added == [
        pytest.approx(figures["cpu_per_audio_hour"] - pacing["figures"]["cpu_per_audio_hour"])
    ]
    assert results["machine"]["nproc"] >= 1


def test_the_bench_server_hears_the_words_the_token_engine_does() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _sbs_server import _SilenceSkipping  # noqa: PLC0415 - bench is no package
    finally:
        sys.path.remove(str(BENCH))
    # As the drivers send a turn: silence, two words, silence, in 20 ms frames.
    audio = bytes(32000) + encode(["s7", "t12"], trail=0.1) + bytes(32000)
    frames = [audio[start : start + 640] for start in range(0, len(audio), 640)]
    plain, skipping = (
        TokenDecoder(Encoding.LINEAR16, 16000),
        _SilenceSkipping(Encoding.LINEAR16, 16000),
    )
    heard = [
        [word for frame in frames for word in stream.feed(frame)] for stream in (plain, skipping)
    ]
    assert [word.word for word in heard[1]] == ["s7", "t12"]
    # The same words at the same times (to float rounding: skipped time is added back).
    assert [(w.word, pytest.approx(w.start), pytest.approx(w.end)) for w in heard[0]] == [
        (w.word, w.start, w.end) for w in heard[1]
    ]
    assert skipping.seconds == pytest.approx(plain.seconds) == len(audio) / 32000
