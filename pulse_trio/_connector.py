"""Connectors: how a session reaches the server.

A connector dials TCP (and TLS for wss) and upgrades the stream to a
WebSocket; ``open_session(connector=...)`` takes any callable of the
``Connector`` shape (the emulator's ``memory_connector()`` is one), and
``default_connector`` goes over the network. ``close_transport`` closes the
stream under a WebSocket, whoever opened it.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import TypeAlias
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection

from ._websocket import open_client

__all__ = ["Connector", "close_transport", "default_connector"]

#: Opens a WebSocket: (nursery for its background task, url, headers, ssl context).
Connector: TypeAlias = Callable[
    [trio.Nursery, str, list[tuple[bytes, bytes]], ssl.SSLContext | None],
    Awaitable[WebSocketConnection],
]


async def default_connector(
    nursery: trio.Nursery,
    url: str,
    headers: list[tuple[bytes, bytes]],
    ssl_context: ssl.SSLContext | None,
    *,
    max_message_size: int = 1 << 20,
) -> WebSocketConnection:
    """Dial TCP (and TLS for wss, with the system's certificate verification
    unless ``ssl_context`` says otherwise), then run the WebSocket handshake.

    The connector owns the stream so that it is closed whatever happens:
    trio-websocket leaves it open when the handshake is refused. A handshake
    that cannot succeed raises ``HandshakeFailed`` at once (``_websocket``).
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if secure:
            context = ssl_context or ssl.create_default_context()
            stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
            await stream.do_handshake()
        name = f"[{host}]" if ":" in host else host  # an IPv6 literal
        authority = name if parts.port is None else f"{name}:{parts.port}"
        return await open_client(
            nursery,
            stream,
            authority,
            resource,
            extra_headers=headers,
            message_queue_size=16,
            max_message_size=max_message_size,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def close_transport(ws: WebSocketConnection | None) -> None:
    """Close the stream under ``ws``: trio-websocket leaves it open when the
    server closed first, which would leak the socket."""
    stream = getattr(ws, "_stream", None)
    if stream is not None:
        await trio.aclose_forcefully(stream)
