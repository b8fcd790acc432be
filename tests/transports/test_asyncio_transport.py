"""The asyncio transport (examples/asyncio_transport.py) on its own: its one
edge, its errors, events(), cancellation and the key.

The end-to-end behaviour (finals, replay, settings, close, liveness) is in
test_scenarios.py; these run against the emulator on loopback too, served in a
thread of its own (``pulse_trio.emulator.scenarios.serving``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import pytest
import trustme
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Response

from examples.asyncio_transport import (
    AuthenticationError,
    SessionFailedError,
    _RedactingLogger,
    engine_input,
    open_session,
)
from pulse_core import (
    Closed,
    ConfigurationError,
    Connected,
    Disconnected,
    Event,
    LocalProtocolError,
    MalformedMessage,
    Redactor,
    Transcript,
)
from pulse_trio.emulator.scenarios import serving
from pulse_trio.emulator.token_audio import encode

KEY = "sk_live_abcdefghijklmnopqrstuvwxyz"
REDACT = Redactor(KEY).text


def _status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> InvalidStatus:
    return InvalidStatus(Response(code, "", Headers(headers or {}), body))


@pytest.mark.parametrize(
    ("exc", "opened", "expected"),
    [
        (
            _status(401, b"bad key " + KEY.encode()),
            False,
            # Whole: the engine redacts the body before it cuts it.
            ("connection_refused", {"status": 401, "body": b"bad key " + KEY.encode()}),
        ),
        (
            _status(429, headers={"Retry-After": "3"}),
            False,
            ("connection_refused", {"status": 429, "body": b"", "retry_after": "3"}),
        ),
        (
            ConnectionRefusedError(111, "refused"),
            False,
            (
                "connection_failed",
                {"status": None, "reason": "ConnectionRefusedError: [Errno 111] refused"},
            ),
        ),
        (
            ssl.SSLCertVerificationError(1, "bad"),
            False,
            ("connection_failed", {"status": None, "permanent": True}),
        ),
        (InvalidURI("ws://[", "bad"), False, ("connection_failed", {"permanent": True})),
        (
            ConnectionClosedError(Close(1011, f"oops {KEY}"), None),
            True,
            ("connection_closed", {"code": 1011, "reason": "oops <redacted>"}),
        ),
        (
            ConnectionClosedError(None, Close(1009, "frame too big")),
            True,
            ("protocol_violation", {"code": 1009, "reason": "frame too big"}),
        ),
        (
            ConnectionClosedError(None, None),
            True,
            ("connection_closed", {"code": None}),
        ),
        (ConnectionResetError("reset"), True, ("connection_closed", {"code": None})),
    ],
    ids=[
        "401-redacted",
        "429-retry-after",
        "refused",
        "certificate",
        "bad-uri",
        "closed-by-server",
        "protocol-violation",
        "no-close-frame",
        "reset-while-open",
    ],
)
def test_each_exception_becomes_one_engine_input(
    exc: BaseException, opened: bool, expected: tuple[str, dict[str, Any]]
) -> None:
    name, arguments = engine_input(exc, opened, REDACT)
    assert name == expected[0]
    for field, value in expected[1].items():
        assert arguments[field] == value, (field, arguments)
    if name != "connection_refused":  # the engine words a refusal (tests/core/test_retry.py)
        assert KEY[:8] not in str(arguments)


def test_the_certificate_error_is_found_behind_the_error_that_wraps_it() -> None:
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as inner:
            raise OSError("TLS failed") from inner
    except OSError as outer:
        name, arguments = engine_input(outer, False, REDACT)
    assert name == "connection_failed" and arguments["permanent"] is True


def test_websockets_log_lines_never_show_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="websockets.client")
    _RedactingLogger(REDACT).debug("< CLOSE 1011 (%s) [%d bytes]", f"echo {KEY}", 40)
    assert caplog.messages == ["< CLOSE 1011 (echo <redacted>) [%d bytes]".replace("%d", "40")]


def _run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


def test_a_refused_key_raises_the_documented_error_after_closed() -> None:
    with serving(lambda emulator: emulator.faults.refuse(3, status=401)) as (url, log):
        events: list[Event] = []

        async def main() -> None:
            async with open_session(KEY, base_url=url) as session:
                session.event_handler("on_event")(events.append)
                await session.send_audio(encode("unheard"))
                await asyncio.sleep(20)  # the failure ends the wait

        with pytest.raises(AuthenticationError) as caught:
            _run(main())
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert isinstance(caught.value, SessionFailedError)
    assert caught.value.failure is not None and caught.value.failure.status == 401
    assert isinstance(events[-1], Closed) and events[-1].error is not None
    assert log.handshakes == 1  # a 401 is never retried
    assert KEY[:8] not in str(caught.value)


def test_events_are_kept_from_the_start_for_one_iterator() -> None:
    with serving() as (url, _log):

        async def main() -> list[Event]:
            async with open_session(KEY, base_url=url) as session:
                await session.send_audio(encode("kept for the iterator", trail=0.3))
                await session.speech_stopped()
                await asyncio.sleep(0.3)  # events arrive before anyone reads them
                closing = asyncio.create_task(session.aclose())
                seen = [event async for event in session.events()]
                await closing
                with pytest.raises(LocalProtocolError):
                    async for _ in session.events():
                        pass
                return seen

        seen = _run(main())
    assert isinstance(seen[0], Connected) and isinstance(seen[-1], Closed)
    finals = [e.text for e in seen if isinstance(e, Transcript) and e.is_final and e.text]
    assert finals == ["kept for the iterator"]


def test_an_oversized_frame_is_a_protocol_violation_and_the_socket_is_replaced() -> None:
    with serving() as (url, _log):
        events: list[Event] = []

        async def main() -> None:
            async with open_session(
                KEY,
                base_url=url,
                max_message_size=300,  # a final with word timestamps is longer
                reconnect={"base_delay": 0.05, "max_attempts": 2},
                close_timeout=1.0,
            ) as session:
                session.event_handler("on_event")(events.append)
                await session.send_audio(encode("these words make a long final", trail=0.3))
                await session.speech_stopped()
                await asyncio.sleep(1.0)

        with pytest.raises(SessionFailedError):
            _run(main())
    lost = [e for e in events if isinstance(e, Disconnected)]
    assert lost and lost[0].code == 1009
    assert any(isinstance(e, MalformedMessage) for e in events)
    assert sum(isinstance(e, Connected) for e in events) >= 2


def test_cancellation_leaves_at_once_and_ends_every_task() -> None:
    with serving(lambda emulator: emulator.faults.stall()) as (url, _log):

        async def main() -> None:
            async def session_body() -> None:
                async with open_session(KEY, base_url=url) as session:
                    await session.send_audio(encode("cancelled"))
                    await asyncio.sleep(30)

            task = asyncio.create_task(session_body())
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)  # not the close_timeout
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert others == []

        _run(main())


@pytest.mark.parametrize("bound", ["outgoing_buffer", "event_buffer"])
def test_bounds_are_checked_before_any_connection(bound: str) -> None:
    with serving() as (url, log):

        async def main() -> None:
            async with open_session(KEY, base_url=url, **{bound: 0}):
                pass

        with pytest.raises(ConfigurationError):
            _run(main())
    assert log.handshakes == 0


def test_a_redirect_is_not_followed_it_is_the_engine_s_to_judge() -> None:
    async def main() -> tuple[int, list[Event]]:
        requests = 0

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal requests
            requests += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:9/elsewhere\r\n"
                b"Content-Length: 0\r\n\r\n"
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        events: list[Event] = []
        try:
            with pytest.raises(SessionFailedError) as caught:
                async with open_session(
                    KEY, base_url=f"ws://127.0.0.1:{port}", reconnect={"base_delay": 0.01}
                ) as session:
                    session.event_handler("on_event")(events.append)
                    await asyncio.sleep(5)
            assert "301" in str(caught.value)
        finally:
            server.close()
            await server.wait_closed()
        return requests, events

    requests, events = _run(main())
    assert requests == 1  # neither retried nor followed
    assert isinstance(events[-1], Closed)


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """The emulator's server context, a client context that trusts it, and one
    that trusts another CA."""
    ca, other = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    trusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(trusting)
    untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    other.configure_trust(untrusting)
    return server, trusting, untrusting


def test_wss_carries_the_session_and_an_unknown_certificate_is_final() -> None:
    server, trusting, untrusting = _tls_contexts()
    with serving(ssl_context=server) as (url, log):
        assert url.startswith("wss://")

        async def transcribe(context: ssl.SSLContext) -> list[str]:
            finals: list[str] = []
            async with open_session(KEY, base_url=url, ssl_context=context) as session:
                session.event_handler("on_final_transcript")(lambda e: finals.append(e.text))
                await session.send_audio(encode("over tls", trail=0.3))
                await session.speech_stopped()
            return [text for text in finals if text]

        assert _run(transcribe(trusting)) == ["over tls"]
        with pytest.raises(SessionFailedError, match="certificate failed verification"):
            _run(transcribe(untrusting))
    assert log.handshakes == 1  # the refused certificate was not retried


def test_an_ssl_context_for_a_plain_url_is_refused_up_front() -> None:
    async def main() -> None:
        async with open_session(
            KEY, base_url="ws://127.0.0.1:9", ssl_context=ssl.create_default_context()
        ):
            pass

    with pytest.raises(ConfigurationError, match="ssl_context"):
        _run(main())


def test_debug_logging_of_a_whole_session_never_shows_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with serving() as (url, _log):

        async def main() -> None:
            async with open_session(KEY, base_url=url) as session:
                await session.send_audio(encode("logged", trail=0.3))
                await session.speech_stopped()

        _run(main())
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("> Authorization") for line in lines)  # websockets logs headers
    assert not [line for line in lines if KEY[:8] in line or KEY[-8:] in line]


def test_past_event_buffer_handlers_get_every_event_and_a_late_iterator_is_refused() -> None:
    with serving() as (url, _log):

        async def main() -> tuple[list[Event], LocalProtocolError | None]:
            seen: list[Event] = []
            refused = None
            async with open_session(KEY, base_url=url, event_buffer=4) as session:
                session.event_handler("on_event")(seen.append)
                await session.send_audio(encode("more events than the buffer holds", trail=0.3))
                await session.speech_stopped()
                await session.aclose()
                try:
                    async for _ in session.events():
                        pass
                except LocalProtocolError as exc:
                    refused = exc
            return seen, refused

        seen, refused = _run(main())
    assert refused is not None and "overflowed" in str(refused)
    finals = [e.text for e in seen if isinstance(e, Transcript) and e.is_final and e.text]
    assert finals == ["more events than the buffer holds"]
    assert len(seen) > 4 and isinstance(seen[-1], Closed)
