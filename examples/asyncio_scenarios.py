"""The end-to-end scenario kit's factory for the asyncio transport.

A factory runs one ``Target`` (where to connect, with what, and the client's
steps) through a transport and returns what the application observed. This one
drives ``examples/asyncio_transport.py``; run the whole list against it from
the repository's root:

    python -m pulse_trio.emulator.scenarios --factory examples.asyncio_scenarios:factory
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from examples.asyncio_transport import AsyncioSession, open_session
from pulse_core import Event
from pulse_trio.emulator.scenarios import Observed, Target, observe, play

__all__ = ["factory", "run_steps"]

Opener = Callable[..., contextlib.AbstractAsyncContextManager[AsyncioSession]]


async def run_steps(target: Target, opener: Opener = open_session) -> Observed:
    """Carry out ``target``'s steps on a session from ``opener`` (``open_session``,
    or a variant of it), within ``target.timeout``."""
    events: list[Event] = []
    error: BaseException | None = None
    try:
        async with asyncio.timeout(target.timeout):
            async with opener(
                target.api_key,
                settings=target.settings,
                base_url=target.base_url,
                encoding=target.encoding,
                sample_rate=target.sample_rate,
                **target.options,
            ) as session:
                session.event_handler("on_event")(events.append)
                connected = asyncio.Event()
                session.event_handler("on_connected")(lambda _event: connected.set())
                await play(target, session, sleep=asyncio.sleep, connected=connected.wait)
    except Exception as exc:  # the session's documented error, or the timeout
        error = exc
    return observe(events, error)


def factory(target: Target) -> Observed:
    """The scenario kit's factory: one fresh event loop per target."""
    return asyncio.run(run_steps(target))
