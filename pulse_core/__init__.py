"""pulse_core: a sans-IO protocol engine for Smallest AI's Pulse streaming speech-to-text.

No sockets, no clock, no randomness: feed :class:`PulseConnection` inputs with
the current time, carry out the :mod:`commands <pulse_core._commands>` it
returns, and hand its events to the application. See ``spec/PROTOCOL.md``.
"""

from ._audio import SAMPLE_RATES, Encoding, OggPageSplitter, opus_packet_ticks
from ._commands import CloseConnection, Command, Connect, SendBinary, SendPing, SendText
from ._config import DEFAULT_BASE_URL, LEGACY_PATH, LIVE_PATH, ConnectionConfig, ReconnectPolicy
from ._connection import JitterSource, PulseConnection
from ._errors import ConfigurationError, LocalProtocolError, PulseError, RemoteProtocolError
from ._events import (
    AudioDropped,
    Closed,
    Connected,
    ConnectionFailed,
    Disconnected,
    DropReason,
    Event,
    FinalizeTimedOut,
    LatencySummary,
    MalformedMessage,
    Reconnecting,
    ServerError,
    SessionSummary,
    SettingsApplied,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    UnhandledMessage,
)
from ._handlers import HANDLER_EVENTS, check_handler_name, handler_names
from ._languages import CURRENT_STREAMING_LANGUAGES, Language, Region
from ._messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ErrorMessage,
    ServerMessage,
    SpeechEndedMessage,
    SpeechStartedMessage,
    TranscriptionMessage,
    UnknownMessage,
    Utterance,
    Word,
    parse_server_message,
)
from ._secrets import Redactor
from ._settings import Keyword, Settings
from ._state import State

__version__ = "0.1.0"

__all__ = [
    "CURRENT_STREAMING_LANGUAGES",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HANDLER_EVENTS",
    "LEGACY_PATH",
    "LIVE_PATH",
    "SAMPLE_RATES",
    "AudioDropped",
    "CloseConnection",
    "Closed",
    "Command",
    "ConfigurationError",
    "Connect",
    "Connected",
    "ConnectionConfig",
    "ConnectionFailed",
    "Disconnected",
    "DropReason",
    "Encoding",
    "ErrorMessage",
    "Event",
    "FinalizeTimedOut",
    "JitterSource",
    "Keyword",
    "Language",
    "LatencySummary",
    "LocalProtocolError",
    "MalformedMessage",
    "OggPageSplitter",
    "PulseConnection",
    "PulseError",
    "ReconnectPolicy",
    "Reconnecting",
    "Redactor",
    "Region",
    "RemoteProtocolError",
    "SendBinary",
    "SendPing",
    "SendText",
    "ServerError",
    "ServerMessage",
    "SessionSummary",
    "Settings",
    "SettingsApplied",
    "SpeechEnded",
    "SpeechEndedMessage",
    "SpeechStarted",
    "SpeechStartedMessage",
    "State",
    "Transcript",
    "TranscriptionMessage",
    "UnhandledMessage",
    "UnknownMessage",
    "Utterance",
    "Word",
    "__version__",
    "check_handler_name",
    "handler_names",
    "opus_packet_ticks",
    "parse_server_message",
]
