"""``pulse transcribe`` and ``pulse emulator``, once their arguments are parsed
(``_args`` parses them, and imports this module only then).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

import trio

from pulse_core import (
    AudioDropped,
    Closed,
    ConfigurationError,
    Connected,
    ConnectionConfig,
    ConnectionFailed,
    Disconnected,
    DropReason,
    Event,
    FinalizeTimedOut,
    LocalProtocolError,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SessionSummary,
    Settings,
    SpeechEnded,
    SpeechStarted,
    Transcript,
)
from pulse_trio import (
    AuthenticationError,
    ConnectionGaveUpError,
    PermissionDeniedError,
    Session,
    SessionFailedError,
    open_session,
)

from ._args import EXIT_AUTH, EXIT_INTERRUPTED, EXIT_OK, EXIT_SERVICE, EXIT_USAGE
from ._input import AudioSource, InputError, SilenceDetector, open_source
from ._output import Formatter, make_formatter
from ._terminal import LiveLine, use_color

__all__: list[str] = []

#: Settings fields whose option is not simply --field-name.
_OPTION_NAMES = {
    "itn_normalize": "--itn",
    "format": "--formatting",
    "api_key": "the API key",
    "sample_rate": "the sample rate",
    "encoding": "the encoding",
    "reconnect.max_attempts": "--reconnect-attempts",
    "max_attempts": "--reconnect-attempts",
}
_VALUE_SETTINGS = (
    "language",
    "model",
    "numerals",
    "eou_timeout_ms",
    "max_words",
    "external_session_id",
)
_LOCAL_KEY = "sk_local_emulator"
#: How to get the speech engine (emulator.INSTALL_HINT; restated so as not to import it).
_INSTALL_HINT = "python -m pip install 'pulse-stt[local]'"


# -- pulse emulator -----------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from pulse_trio.emulator import Emulator  # noqa: PLC0415 - imported when used: it loads slowly

    engine = args.chosen_engine
    prepare = getattr(engine, "prepare", None)
    if prepare is not None:
        await prepare()  # the speech model loads before the first client comes
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.certfile, args.keyfile)
        except OSError as exc:  # ssl.SSLError too
            print(
                f"pulse emulator: cannot use --certfile/--keyfile: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    emulator = Emulator(
        engine=engine,
        api_keys=set(args.api_keys) if args.api_keys else None,
        region=args.region,
        max_sessions=args.max_sessions,
    )
    # Ctrl-C is how it stops: taken as a signal here, so it ends the serving
    # cleanly wherever it comes, instead of surfacing in an exception group.
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(
                    lambda task_status: emulator.serve(
                        args.host, args.port, ssl_context=context, task_status=task_status
                    )
                )
            except OSError as exc:
                nursery.cancel_scope.cancel()
                print(f"pulse emulator: {_listen_error(args, exc)}", file=sys.stderr)
                return EXIT_USAGE
            scheme = "wss" if context else "ws"
            url = f"{scheme}://{args.host}:{emulator.port}"
            print(
                f"pulse emulator listening on {url} "
                f"(engine: {emulator.engine.name}, at most {emulator.max_sessions} sessions; "
                "Ctrl-C to stop)\n" + _emulator_hint(args, url),
                file=sys.stderr,
                flush=True,
            )
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    print("pulse emulator: stopped", file=sys.stderr)
    return EXIT_INTERRUPTED


def _emulator_hint(args: argparse.Namespace, url: str) -> str:
    """How to point ``pulse transcribe`` at the emulator, and what key it needs."""
    insecure = "" if url.startswith("wss") or _is_loopback(args.host) else " --allow-insecure"
    command = f"pulse transcribe FILE --base-url {url}{insecure}"
    if args.api_keys:
        return (
            "  it accepts only the keys given to --api-key: set SMALLEST_API_KEY to one, "
            f"then: {command}"
        )
    if _is_loopback(args.host):
        return f"  any API key is accepted, and none is needed: {command}"
    return f"  any API key is accepted (set SMALLEST_API_KEY to anything): {command}"


def _listen_error(args: argparse.Namespace, exc: OSError) -> str:
    where = f"cannot listen on {args.host}:{args.port}"
    if isinstance(exc, socket.gaierror):
        return f"{where}: {args.host} is not a host name or address that resolves"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is in use (another emulator?); choose another with "
            "--port, or --port 0 for any free one"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {args.host} is not an address of this machine (--host 127.0.0.1 "
            "serves this machine only, --host 0.0.0.0 every network it is on)"
        )
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges; try --port 8765)"
    return f"{where}: {exc.strerror or exc}"


def _emulator_command(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("pulse_trio").setLevel(
        logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    )
    if not 0 <= args.port <= 65535:
        print(f"pulse emulator: --port {args.port} is not a port (0 to 65535)", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.certfile) != bool(args.keyfile):
        print("pulse emulator: --certfile and --keyfile go together", file=sys.stderr)
        return EXIT_USAGE
    from pulse_trio.emulator import (  # noqa: PLC0415 - imported when used: it loads slowly
        EngineUnavailableError,
        choose_engine,
    )

    try:
        args.chosen_engine = choose_engine(args.engine)
    except EngineUnavailableError as exc:
        print(f"pulse emulator: --engine whisper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = trio.run(_serve, args)
    except ImportError as exc:  # the speech engine is installed but will not load
        print(f"pulse emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the signal was taken over, or after
        code = EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is None or group.split(KeyboardInterrupt)[1]:
            raise
        code = EXIT_INTERRUPTED
    return code


# -- pulse transcribe: setup -----------------------------------------------------------


class _UsageError(Exception):
    """A problem with the command line or its input: one line, exit status 2."""


def _config_message(exc: ConfigurationError) -> str:
    """A ConfigurationError in terms of the command's options."""
    field = exc.field
    option = _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
    message = f"invalid {option} {exc.value!r}: {exc.allowed}"
    if field == "api_key":
        message = f"invalid API key: {exc.allowed}"
    elif field == "base_url" and "allow_insecure" in exc.allowed:
        message = (
            f"--base-url {exc.value}: plain ws:// would send audio unencrypted; use wss://, "
            "or add --allow-insecure"
        )
    elif field == "base_url":
        message = f"invalid --base-url {exc.value}: {exc.allowed}"
    detail = str(exc).partition(f": {exc.allowed}")[2].strip()
    # The engine's advice names its Python options; say it in the command's.
    detail = re.sub(r"\bregion='(\w+)'", r"--region \1", detail)
    return message + (f" {detail}" if detail else "")


def _read_key(args: argparse.Namespace) -> str:
    if args.local:
        return _LOCAL_KEY
    if args.api_key_file:
        # The path is not echoed: people pass the key itself here by mistake.
        try:
            with open(args.api_key_file, encoding="utf-8") as file:
                key = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise _UsageError(
                f"--api-key-file: cannot read the key file ({reason}); it takes the path of "
                "a file holding the key"
            ) from None
        if not key:
            raise _UsageError("--api-key-file: the key file is empty")
        return key
    key = os.environ.get("SMALLEST_API_KEY", "").strip()
    if not key and args.base_url and _is_loopback(_hostname(args.base_url)):
        # A server on this machine is a test server (pulse emulator takes any key).
        if not args.quiet:
            print(
                f"pulse: no API key set: sending a placeholder key to {args.base_url}, a "
                "server on this machine (pulse emulator needs no key unless started with "
                "--api-key)",
                file=sys.stderr,
            )
        return _LOCAL_KEY
    if not key:
        raise _UsageError(
            "no API key: set SMALLEST_API_KEY or pass --api-key-file FILE, or use --local "
            "to transcribe with the built-in emulator; "
            "a --base-url on this machine (pulse emulator) needs none"
        )
    return key


def _settings(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    for field in Settings.FIELDS:
        value = getattr(args, f"setting_{field}", None)
        if value is not None:
            values[field] = value
    if args.keywords:
        values["keywords"] = ",".join(args.keywords)
    if args.format in ("srt", "vtt", "json") and "word_timestamps" not in values:
        values["word_timestamps"] = True
    try:
        return Settings.from_mapping(values)
    except ConfigurationError as exc:
        raise _UsageError(_config_message(exc)) from None


def _check_options(args: argparse.Namespace) -> None:
    if args.api_key is not None:
        raise _UsageError(
            "there is no --api-key option: a key on the command line shows in `ps` and "
            "shell history. Set SMALLEST_API_KEY, or use --api-key-file FILE"
        )
    if args.engine and not args.local:
        raise _UsageError("--engine chooses the --local emulator's recogniser: add --local")
    if args.local and args.base_url:
        raise _UsageError("--local and --base-url both say where to connect: give one")
    if (
        args.format in ("srt", "vtt")
        and args.setting_word_timestamps is False
        and not args.setting_sentence_timestamps
    ):
        raise _UsageError(
            f"--format {args.format} needs timestamps: drop --no-word-timestamps, "
            "or add --sentence-timestamps"
        )
    if args.output not in (None, "-") and args.path != "-":
        try:
            same = os.path.samefile(args.output, args.path)
        except OSError:
            same = False
        if same:
            raise _UsageError(f"--output {args.output} is the input file: it would be overwritten")


def _open_output(args: argparse.Namespace) -> tuple[TextIO, bool]:
    """The stream to write to, and whether it is stdout."""
    if args.output in (None, "-"):
        stdout = sys.stdout
        if hasattr(stdout, "reconfigure") and (stdout.encoding or "").lower() not in (
            "utf-8",
            "utf8",
        ):
            stdout.reconfigure(errors="replace")
        return stdout, True
    try:
        return open(args.output, "w", encoding="utf-8"), False
    except OSError as exc:
        raise _UsageError(f"--output {args.output}: {exc.strerror or exc}") from None


# -- pulse transcribe: the session ------------------------------------------------------


class _Console:
    """stdout/stderr for the command: output, notices, the live line, redaction."""

    def __init__(
        self,
        out: TextIO,
        *,
        out_is_terminal: bool,
        live: LiveLine | None,
        quiet: bool,
        secret: str | None,
    ) -> None:
        self.out = out
        self.out_is_terminal = out_is_terminal
        self.live = live
        self.quiet = quiet
        # (A "key" of a few characters would garble every message; it is no secret.)
        self._secret = secret if secret and len(secret) >= 6 and secret != _LOCAL_KEY else None

    def redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "<redacted>")
        return text

    def write(self, text: str) -> None:
        if not text:
            return
        if self.live is not None and self.out_is_terminal:
            with self.live.around():
                self.out.write(text)
                self.out.flush()
        else:
            self.out.write(text)
            self.out.flush()

    def _stderr(self, text: str) -> None:
        line = "pulse: " + self.redact(text) + "\n"
        if self.live is not None:
            with self.live.around():
                sys.stderr.write(line)
                sys.stderr.flush()
        else:
            sys.stderr.write(line)
            sys.stderr.flush()

    def notice(self, text: str) -> None:
        if not self.quiet:
            self._stderr(text)

    def error(self, text: str) -> None:
        self._stderr(text)

    def plain(self, lines: Sequence[str]) -> None:
        """Lines for stderr as they are (the --stats table)."""
        text = "".join(self.redact(line) + "\n" for line in lines)
        if self.live is not None:
            self.live.clear()
        sys.stderr.write(text)
        sys.stderr.flush()


class _LogHandler(logging.Handler):
    """pulse_trio's log records (with -v) as notices, redacted."""

    def __init__(self, console: _Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.error(f"[{record.levelname.lower()}] {record.getMessage()}")
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _local_engine(choice: str | None) -> tuple[Any, str]:
    """The recognition engine for ``--local`` (``--engine``, or the best installed),
    ready to use, and what to tell the user. Runs before the event loop starts,
    so loading the speech model holds nothing up."""
    from pulse_trio.emulator import (  # noqa: PLC0415 - imported when used: it loads slowly
        EngineUnavailableError,
        choose_engine,
    )

    try:
        engine = choose_engine(choice)
        load = getattr(engine, "load", None)
        if load is not None:
            load()
    except (EngineUnavailableError, ImportError) as exc:
        raise _UsageError(f"--local: {exc}") from None
    if engine.name == "token":
        return engine, (
            "token audio. It recognises only token audio "
            "(made with pulse_trio.emulator.token_audio), not speech"
        )
    return engine, "speech (Whisper tiny.en, English)"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def stats_lines(summary: SessionSummary, elapsed: float, *, finals: int | None = None) -> list[str]:
    """The --stats table; ``finals`` counts the finals with text (the lines of
    the transcript), when the caller knows it: an empty final is no line."""
    sent = summary.audio_seconds_sent
    speed = f" ({sent / elapsed:.1f}× real time)" if elapsed > 0 else ""
    latency = summary.latency
    if latency.count:
        measured = (
            f"p50 {_ms(latency.p50)}, p90 {_ms(latency.p90)}, p99 {_ms(latency.p99)} "
            f"over {_plural(latency.count, 'finalize')} (max {_ms(latency.max)}; "
            f"{latency.over_budget} over the {latency.budget:g} s budget)"
        )
    else:
        measured = "no finalize was answered, nothing to measure"
    dropped = (
        f"{summary.dropped_seconds:.2f} s of audio ({summary.dropped_bytes} bytes)"
        if summary.dropped_bytes
        else "none"
    )
    shown = summary.finals if finals is None else finals
    empty = f" with text ({summary.finals} in all)" if shown != summary.finals else ""
    return [
        "pulse: stats",
        f"  audio        {sent:.1f} s sent in {elapsed:.1f} s{speed}",
        f"  finals       {shown}{empty}; {_plural(summary.finalized_turns, 'finalize')} "
        f"answered, {summary.timed_out_turns} timed out",
        f"  latency      time to final after finalize: {measured}",
        f"  connections  {summary.connections} ({_plural(summary.reconnects, 'reconnect')}, "
        f"{_plural(summary.keepalives, 'keepalive')})",
        f"  dropped      {dropped}",
    ]


class _Transcriber:
    """One run of ``pulse transcribe``: the session, the input, the output, Ctrl-C."""

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        key: str,
        settings: Settings,
        source: AudioSource,
        console: _Console,
        formatter: Formatter,
        show_interims: bool,
        show_progress: bool,
        detector: SilenceDetector | None,
    ) -> None:
        self.args = args
        self.key = key
        self.settings = settings
        self.source = source
        self.console = console
        self.formatter = formatter
        self.show_interims = show_interims
        self.show_progress = show_progress
        self.detector = detector
        self.speed: float | None = 1.0 if args.realtime else args.speed
        self.input_scope = trio.CancelScope()
        self.abort_scope = trio.CancelScope()
        self.interrupted = False
        self.aborted = False
        self.broken_pipe = False
        self.output_error: str | None = None
        self.failure: SessionFailedError | None = None
        self.summary: SessionSummary | None = None
        self.session: Session | None = None
        self.sent = 0.0
        self.fed_all = False
        self.words = 0
        self.finals = 0  # finals with text
        self.drops: list[float] = []  # seconds of each drop reported
        self.connect_failed = False
        self.reached = False  # a connection opened at some point
        self.started = time.monotonic()
        self.base_url: str | None = args.base_url
        #: The --local emulator's engine and what to say of it (set before the run).
        self.local_engine: tuple[Any, str] | None = None

    # -- running ------------------------------------------------------------------

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch_signals)
            try:
                with self.abort_scope:
                    await self._run(nursery)
            finally:
                nursery.cancel_scope.cancel()
        return self._finish()

    async def _watch_signals(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                if not self.interrupted:
                    self.interrupted = True
                    self.console.notice(
                        "interrupted: finishing the transcript of what was sent "
                        "(Ctrl-C again to stop at once)"
                    )
                    self.input_scope.cancel()
                else:
                    self.aborted = True
                    self.abort_scope.cancel()

    async def _run(self, nursery: trio.Nursery) -> None:
        args = self.args
        if args.local:
            from pulse_trio.emulator import Emulator  # noqa: PLC0415 - only for --local

            assert self.local_engine is not None
            engine, about = self.local_engine
            emulator = Emulator(engine=engine, region=args.region)
            await nursery.start(emulator.serve)
            self.base_url = emulator.url()
            self.console.notice(
                f"--local: transcribing with the built-in emulator; engine: {about}"
            )
        if args.verbose or self.show_progress:
            length = f", {self.source.duration:.1f} s" if self.source.duration else ""
            self.console.notice(f"{self.source.label}: {self.source.description}{length}")
        options: dict[str, Any] = {
            "reconnect": {"max_attempts": args.reconnect_attempts},
            "allow_insecure": args.allow_insecure,
        }
        if args.region:
            options["region"] = args.region
        if self.source.duration and (self.speed is None or self.speed > 1):
            # Sent faster than real time, the service may still be working through
            # a backlog when the input ends: wait for it rather than give up.
            backlog = self.source.duration * (1 - 1 / self.speed if self.speed else 1)
            options["close_timeout"] = options["finalize_timeout"] = 5.0 + backlog
        done = trio.Event()
        try:
            async with open_session(
                self.key,
                settings=self.settings,
                base_url=self.base_url,
                encoding=self.source.encoding,
                sample_rate=self.source.sample_rate,
                **options,
            ) as session:
                self.session = session
                nursery.start_soon(self._consume, session, done)
                if self.show_progress:
                    nursery.start_soon(self._tick)
                with self.input_scope:
                    await self._feed(session)
                self.fed_all = True
                if self.sent:
                    await session.finalize()  # the last turn's final, timed for --stats
            await done.wait()
        except SessionFailedError as exc:
            self.failure = exc
        except LocalProtocolError as exc:  # pragma: no cover - the engine refused an input
            self.failure = SessionFailedError(str(exc))
        finally:
            if self.session is not None:
                self.summary = self.session.engine.summary()

    async def _feed(self, session: Session) -> None:
        source = self.source
        chunk = 0.05 if self.speed else 0.5
        start = trio.current_time()
        self.started = time.monotonic()
        while not source.eof:
            data, seconds = await trio.to_thread.run_sync(
                source.read, chunk, abandon_on_cancel=True
            )
            if self.speed:
                await trio.sleep_until(start + (self.sent + seconds) / self.speed)
            if not data:
                continue
            if self.detector is None:
                await session.send_audio(data)
            else:
                for piece, then in self.detector.split(data):
                    if piece:
                        await session.send_audio(piece)
                    if then == "start":
                        await session.speech_started()
                    elif then == "stop":
                        await session.speech_stopped()
            self.sent += seconds

    async def _consume(self, session: Session, done: trio.Event) -> None:
        try:
            async for event in session.events():
                self._on_event(event)
        except BrokenPipeError:
            self.broken_pipe = True
            self.abort_scope.cancel()
        except OSError as exc:  # e.g. the disk filled up
            self.output_error = f"cannot write the output: {exc.strerror or exc}"
            self.abort_scope.cancel()
        finally:
            done.set()

    async def _tick(self) -> None:
        live = self.console.live
        assert live is not None
        while True:
            live.progress = self._progress()
            live.render()
            await trio.sleep(0.1)

    def _progress(self) -> str:
        elapsed = time.monotonic() - self.started
        total = self.source.duration
        sent = f"{self.sent:.1f}" + (f"/{total:.1f}" if total else "") + " s sent"
        if self.fed_all:
            sent = f"all {self.sent:.1f} s sent, finishing"
        speed = f" · {self.sent / elapsed:.1f}× real time" if elapsed > 0.05 and self.sent else ""
        return f"{sent} · {elapsed:.1f} s elapsed{speed}"

    # -- events -------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        console = self.console
        if isinstance(event, Transcript):
            if event.is_final:
                if console.live is not None:
                    console.live.interim = ""
                self.words += len(event.text.split())
                self.finals += bool(event.text.strip())
                console.write(self.formatter.final(event))
                for warning in self.formatter.warnings:
                    console.notice(warning)
                self.formatter.warnings.clear()
            else:
                console.write(self.formatter.interim(event))
                if self.show_interims and console.live is not None:
                    console.live.interim = event.text
                    console.live.render()
        elif isinstance(event, SpeechStarted | SpeechEnded):
            kind = "speech_started" if isinstance(event, SpeechStarted) else "speech_ended"
            console.write(self.formatter.voice(kind, event.timestamp))
        elif isinstance(event, ConnectionFailed):
            self.connect_failed = True
        elif isinstance(event, Reconnecting):
            what = "could not connect" if self.connect_failed else "connection lost"
            console.notice(
                f"{what} ({event.reason}); trying again in {event.delay:.1f} s "
                f"(attempt {event.attempt})"
            )
        elif isinstance(event, Disconnected):
            self.connect_failed = False
        elif isinstance(event, Connected):
            self.connect_failed = False
            self.reached = True
            if event.reconnect:
                console.notice(f"reconnected (connection {event.connection}); nothing is lost")
        elif isinstance(event, ServerError):
            if not event.permanent:
                code = f" ({event.code})" if event.code else ""
                console.notice(f"the server reported an error{code}: {event.message}")
        elif isinstance(event, MalformedMessage):
            console.notice(f"skipped a malformed message from the server: {event.error}")
        elif isinstance(event, AudioDropped):
            # Every drop is told, so that what the notices add up to is what
            # --stats reports, however the session ended.
            self.drops.append(event.end - event.start)
            console.notice(
                f"{event.end - event.start:.2f} s of audio ({event.start:.2f}-"
                f"{event.end:.2f} s) will not be transcribed: {self._drop_reason(event.reason)}"
            )
        elif isinstance(event, FinalizeTimedOut):
            # Before any connection the turn was never asked for: the notices
            # about connecting say what is wrong.
            if event.reason.startswith("no final") and self.reached:
                console.notice(
                    f"no final within {event.waited:.1f} s for turn {event.turn}; "
                    "its words will come in a later final"
                )
        elif isinstance(event, Closed):
            self.summary = event.summary

    def _drop_reason(self, reason: DropReason) -> str:
        if reason is DropReason.REPLAY_OVERFLOW:
            kept = self.session.engine.config.replay_seconds if self.session else None
            bound = f" ({kept:g} s)" if kept is not None else ""
            return f"more audio waited for the service than is kept for replay{bound}"
        if reason is DropReason.SESSION_FAILED:
            return "the session failed before the service had transcribed it"
        if reason is DropReason.CLOSE_TIMEOUT:
            return "the service had not transcribed it when the close timed out"
        if reason is DropReason.PARTIAL_SAMPLE:
            return "the input ended inside a sample"
        return reason.value

    # -- the end ---------------------------------------------------------------------

    def _finish(self) -> int:
        console = self.console
        live = console.live
        if live is not None:
            live.progress = ""
            live.interim = ""
            live.clear()
        elapsed = time.monotonic() - self.started
        if self.broken_pipe:
            return EXIT_OK
        if self.output_error is not None:
            console.error(self.output_error)
            return EXIT_USAGE
        info: dict[str, Any] = {"duration": round(self.sent, 3)}
        try:
            console.write(self.formatter.footer(info))
        except BrokenPipeError:
            self.broken_pipe = True
            return EXIT_OK
        except OSError as exc:
            console.error(f"cannot write the output: {exc.strerror or exc}")
            return EXIT_USAGE
        if len(self.drops) > 1:
            console.notice(f"in all, {sum(self.drops):.2f} s of audio will not be transcribed")
        if self.failure is not None and not self.fed_all:
            # The session failed while the input was still being read: what
            # was never given to it is not in any AudioDropped, say it here.
            total = self.source.duration
            if total:
                unsent = max(0.0, total - self.sent)
                if unsent > 0:
                    console.notice(f"the input's last {unsent:.2f} s were never sent")
            elif not self.source.eof:
                console.notice("the rest of the input was never sent")
        if self.args.stats and self.summary is not None:
            console.plain(stats_lines(self.summary, elapsed, finals=self.finals))
        elif self.show_progress and self.failure is None and not self.aborted:
            speed = f" ({self.sent / elapsed:.1f}× real time)" if elapsed > 0 else ""
            console.notice(
                f"{self.source.label}: {self.sent:.1f} s of audio transcribed in "
                f"{elapsed:.1f} s{speed}"
            )
        if self.failure is not None:
            return self._report_failure(self.failure)
        if self.args.local and not self.words and not self.aborted:
            console.notice(
                "no words were recognised: the built-in emulator reads only token audio "
                "(pulse_trio.emulator.token_audio), not speech; for speech install the "
                f"local extra: {_INSTALL_HINT}"
                if self.local_engine is not None and self.local_engine[0].name == "token"
                else "no words were recognised: the speech engine heard no English speech"
            )
        if self.aborted:
            console.notice("stopped before the transcript was finished")
        if self.aborted or self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK

    def _report_failure(self, failure: SessionFailedError) -> int:
        where = self.base_url or _host_of(self.args.region)
        message = f"{where}: {failure}"
        said = f" ({failure.failure.reason})" if failure.failure is not None else ""
        if isinstance(failure, PermissionDeniedError):
            self.console.error(
                f"{where}: this key may not do that{said}; check its plan or workspace"
            )
            return EXIT_AUTH
        if isinstance(failure, AuthenticationError):
            source = (
                "the file given to --api-key-file"
                if self.args.api_key_file
                else "SMALLEST_API_KEY (none was set, so a placeholder was sent)"
                if self.key == _LOCAL_KEY and not self.args.local
                else "SMALLEST_API_KEY"
            )
            self.console.error(f"{where}: the API key was refused{said}; check {source}")
            return EXIT_AUTH
        if isinstance(failure, ConnectionGaveUpError):
            self.console.error(message + " (check the network, --base-url and --region)")
            return EXIT_SERVICE
        self.console.error(message)
        return EXIT_SERVICE


def _is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine only (a name or an address)."""
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # the configuration check says what is wrong with it
        return None


def _host_of(region: str | None) -> str:
    config = ConnectionConfig(api_key=_LOCAL_KEY, region=region)
    return config.resolved_base_url


def _transcribe_command(args: argparse.Namespace) -> int:
    try:
        _check_options(args)
        key = _read_key(args)
        settings = _settings(args)
    except _UsageError as exc:
        print(f"pulse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console: _Console | None = None
    try:
        source = open_source(
            args.path, encoding=args.encoding, sample_rate=args.sample_rate, channels=args.channels
        )
    except InputError as exc:
        print(f"pulse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    out: TextIO | None = None
    try:
        detector = None
        if args.finalize_after_silence:
            try:
                detector = SilenceDetector(
                    source.encoding, source.sample_rate, args.finalize_after_silence / 1000
                )
            except ValueError:
                raise _UsageError(
                    f"--finalize-after-silence needs PCM or G.711 audio, not {source.encoding}"
                ) from None
        try:
            ConnectionConfig(
                api_key=key,
                settings=settings,
                base_url="ws://127.0.0.1:1" if args.local else args.base_url,
                region=args.region,
                encoding=source.encoding,
                sample_rate=source.sample_rate,
                reconnect={"max_attempts": args.reconnect_attempts},
                allow_insecure=args.allow_insecure,
            )
        except ConfigurationError as exc:
            raise _UsageError(_config_message(exc)) from None
        out, to_stdout = _open_output(args)
        stderr_terminal = sys.stderr.isatty()
        out_terminal = to_stdout and out.isatty()
        live: LiveLine | None = None
        if stderr_terminal and not args.quiet:
            live = LiveLine(sys.stderr, color=use_color(sys.stderr))
        elif out_terminal and args.format == "text":
            live = LiveLine(out, color=use_color(out))
        console = _Console(
            out, out_is_terminal=out_terminal, live=live, quiet=args.quiet, secret=key
        )
        _setup_logging(args.verbose, console)
        formatter = make_formatter(
            args.format,
            interims=bool(args.interims),
            speakers=bool(args.setting_diarize),
            max_chars=args.max_cue_chars,
            max_seconds=args.max_cue_seconds,
        )
        console.write(formatter.header())
        runner = _Transcriber(
            args,
            key=key,
            settings=settings,
            source=source,
            console=console,
            formatter=formatter,
            show_interims=args.interims is not False and live is not None,
            show_progress=live is not None and live.stream is sys.stderr and not source.streaming,
            detector=detector,
        )
        if args.local:
            runner.local_engine = _local_engine(args.engine)
        code = trio.run(runner.run)
        if runner.broken_pipe:
            _silence_stdout()
        return code
    except _UsageError as exc:
        print(f"pulse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    finally:
        source.close()
        if out is not None and out is not sys.stdout:
            out.close()


def _setup_logging(verbose: int, console: _Console) -> None:
    logger = logging.getLogger("pulse_trio")
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, _LogHandler):
            logger.removeHandler(handler)
    if verbose:
        logger.addHandler(_LogHandler(console))
        logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    else:
        logger.setLevel(logging.CRITICAL + 1)


def _silence_stdout() -> None:
    """After a broken pipe, keep the interpreter's final flush from complaining."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover
        pass
