"""The ``pulse`` command line.

    pulse emulator [--host 127.0.0.1] [--port 8765] [--api-key KEY ...]
                   [--region us|india] [--max-sessions N] [--certfile F --keyfile F]

Exit statuses: 0 ok, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence

import trio

from .emulator import Emulator

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulse",
        description="Smallest AI Pulse speech-to-text client and local emulator.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    emulator = commands.add_parser(
        "emulator",
        help="serve a local Pulse-compatible server (token audio recognition)",
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
        "--max-sessions", type=int, default=100, help="concurrency limit (default 100)"
    )
    emulator.add_argument("--certfile", help="serve wss:// with this certificate (PEM)")
    emulator.add_argument("--keyfile", help="private key for --certfile (PEM)")
    emulator.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    emulator = Emulator(
        api_keys=set(args.api_keys) if args.api_keys else None,
        region=args.region,
        max_sessions=args.max_sessions,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: emulator.serve(
                args.host, args.port, ssl_context=context, task_status=task_status
            )
        )
        scheme = "wss" if context else "ws"
        print(
            f"pulse emulator listening on {scheme}://{args.host}:{emulator.port} "
            f"(engine: {emulator.engine.name}; Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "emulator":
            if not 0 <= args.port <= 65535:
                print(
                    f"pulse emulator: --port {args.port} is not a port (0 to 65535)",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            if bool(args.certfile) != bool(args.keyfile):
                print("pulse emulator: --certfile and --keyfile go together", file=sys.stderr)
                return EXIT_USAGE
            trio.run(_serve, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"pulse {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
