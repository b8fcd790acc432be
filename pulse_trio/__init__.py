"""pulse_trio: a Trio client for Smallest AI's Pulse streaming speech-to-text.

    async with pulse_trio.open_session(settings={"language": "en"}) as session:
        await session.send_audio(chunk)
        await session.speech_stopped()
        async for event in session.events():
            ...

Every protocol decision is made by ``pulse_core.PulseConnection``; this package
moves bytes over trio-websocket. Two wings ship with it and are never imported
by it: the local emulator with token audio for tests (``pulse_trio.emulator``,
``pulse_trio.emulator.token_audio``) and the ``pulse`` command line
(``pulse_trio.cli``).
"""

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._connector import Connector, default_connector
    from ._errors import (
        AuthenticationError,
        CertificateError,
        ConnectionGaveUpError,
        InvalidRequestError,
        PermissionDeniedError,
        RateLimitError,
        RegionError,
        SessionFailedError,
    )
    from ._session import HANDLER_EVENTS, Session, open_session

__all__ = [
    "HANDLER_EVENTS",
    "AuthenticationError",
    "CertificateError",
    "ConnectionGaveUpError",
    "Connector",
    "InvalidRequestError",
    "PermissionDeniedError",
    "RateLimitError",
    "RegionError",
    "Session",
    "SessionFailedError",
    "default_connector",
    "open_session",
]


# Imported when first used, so that ``pulse --help`` (which imports this
# package first) does not load Trio, trio-websocket and the engine.
def __getattr__(name: str) -> object:
    module: ModuleType
    if name in ("Connector", "default_connector"):
        from . import _connector as module  # noqa: PLC0415 - loaded when first used
    elif name in ("HANDLER_EVENTS", "Session", "open_session"):
        from . import _session as module  # noqa: PLC0415
    elif name in __all__:
        from . import _errors as module  # noqa: PLC0415
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
