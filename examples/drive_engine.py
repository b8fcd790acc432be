"""Drive pulse_core.PulseConnection by hand, with no network at all.

The "server" here is a few lines that answer the way the Pulse service does, so
the example shows the whole cycle a transport runs: feed an input with the time,
carry out the commands, read the events. Run it:

    python examples/drive_engine.py
"""

from __future__ import annotations

import json
import random

from pulse_core import (
    CloseConnection,
    Closed,
    Connect,
    ConnectionConfig,
    PulseConnection,
    SendBinary,
    SendText,
    Transcript,
)


class TinyServer:
    """Answers finalize and close_stream like the service (it does not recognise speech)."""

    def __init__(self) -> None:
        self.audio_bytes = 0

    def handle(self, command: SendBinary | SendText) -> list[str]:
        if isinstance(command, SendBinary):
            self.audio_bytes += len(command.data)
            return []
        kind = json.loads(command.text)["type"]
        seconds = self.audio_bytes / 32000  # 16 kHz, 16-bit mono
        text = f"{seconds:.2f} seconds of audio"
        reply = {
            "type": "transcription",
            "transcript": text,
            "is_final": True,
            "from_finalize": kind == "finalize",
        }
        if kind == "close_stream":
            reply["is_last"] = True
        return [json.dumps(reply)]


def main() -> None:
    config = ConnectionConfig(api_key="sk_example", base_url="ws://127.0.0.1:8765")
    conn = PulseConnection(config, jitter=random.Random(7))
    server = TinyServer()
    now = 0.0

    def pump() -> None:
        """Carry out every command, feeding the server's answers back in."""
        while commands := conn.commands():
            for command in commands:
                if isinstance(command, Connect):
                    print(f"transport: connect {command.url}")  # the key is only in the headers
                    conn.connection_opened(now)
                elif isinstance(command, SendBinary | SendText):
                    for reply in server.handle(command):
                        conn.receive_message(now + 0.3, reply)
                elif isinstance(command, CloseConnection):
                    print(f"transport: close {command.code}")
        for event in conn.events():
            if isinstance(event, Transcript) and event.is_final:
                print(f"final (turn {event.turn}, latency {event.latency}): {event.text}")
            elif isinstance(event, Closed):
                print(
                    f"closed: {event.summary.audio_seconds_sent:.2f} s sent, p50 TTFS {event.summary.latency.p50}"
                )
            else:
                print(f"event: {type(event).__name__}")

    conn.start(now)
    pump()
    for _turn in range(2):
        for _ in range(50):  # one second of audio in 20 ms chunks
            now += 0.02
            conn.send_audio(now, bytes(640))
            pump()
        conn.speech_stopped(now)  # local VAD: the speaker paused
        pump()
        now += 0.5
    conn.close(now)
    pump()


if __name__ == "__main__":
    main()
