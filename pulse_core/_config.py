"""How to reach the service: key, host, audio format, limits and policies."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import SplitResult, quote, urlencode, urlsplit

import attrs

from ._audio import SAMPLE_RATES, Encoding
from ._errors import ConfigurationError
from ._languages import Language, Region
from ._settings import Settings

__all__ = [
    "DEFAULT_BASE_URL",
    "LEGACY_PATH",
    "LIVE_PATH",
    "ConnectionConfig",
    "ReconnectPolicy",
]

DEFAULT_BASE_URL: Final = "wss://api.smallest.ai"
LIVE_PATH: Final = "/waves/v1/stt/live"
#: The older endpoint: same messages, but it takes no ``model`` parameter.
LEGACY_PATH: Final = "/waves/v1/pulse/get_text"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
        "content-length",
        "transfer-encoding",
    }
)


def _positive(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        raise ConfigurationError(
            name, value, "a finite number " + (">= 0" if allow_zero else "> 0")
        )


def _check_positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _positive(attribute.name, value)


def _check_non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _positive(attribute.name, value, allow_zero=True)


def _check_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(attribute.name, value, "an integer of at least 1")


@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """When and how often to reconnect after a connection is lost or refused.

    The delay before attempt ``n`` (1-based, counting consecutive failures) is
    ``min(max_delay, base_delay * multiplier ** (n - 1))``, shortened by up to
    ``jitter`` of itself at random: it always lies in
    ``[raw * (1 - jitter), raw]``. A connection that stayed open for
    ``stable_after`` seconds resets the count.
    """

    base_delay: float = attrs.field(default=0.25, validator=_check_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_check_positive)
    max_delay: float = attrs.field(default=8.0, validator=_check_non_negative)
    #: Give up after this many consecutive failed attempts; ``None`` never gives up.
    max_attempts: int | None = attrs.field(default=10)
    jitter: float = attrs.field(default=0.5, validator=_check_non_negative)
    stable_after: float = attrs.field(default=5.0, validator=_check_non_negative)
    #: A 429 asking to wait longer than this is treated as a refusal.
    max_retry_after: float = attrs.field(default=30.0, validator=_check_non_negative)
    #: Floor of the delay after close code 1008 (the account's concurrency limit).
    concurrency_delay: float = attrs.field(default=2.0, validator=_check_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None:
            _check_count(self, attrs.fields(ReconnectPolicy).max_attempts, self.max_attempts)
        if self.jitter > 1:
            raise ConfigurationError("jitter", self.jitter, "a fraction from 0 to 1")
        if self.multiplier < 1:
            raise ConfigurationError("multiplier", self.multiplier, "a number >= 1")

    def raw_delay(self, attempt: int) -> float:
        """The delay before ``attempt`` without jitter."""
        exponent = min(attempt - 1, 64)
        try:
            raw = self.base_delay * self.multiplier**exponent
        except OverflowError:
            raw = math.inf
        return float(min(self.max_delay, raw))

    def delay(self, attempt: int, draw: float) -> float:
        """The delay before ``attempt`` given a jitter draw in ``[0, 1)``."""
        draw = min(max(draw, 0.0), 1.0)
        return self.raw_delay(attempt) * (1.0 - self.jitter * draw)


def _convert_encoding(value: object) -> Encoding:
    try:
        return Encoding(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigurationError(
            "encoding", value, "one of " + ", ".join(member.value for member in Encoding)
        ) from None


def _convert_region(value: object) -> Region | None:
    if value is None:
        return None
    try:
        return Region(value.lower() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigurationError("region", value, "'india' or 'us'") from None


def _convert_settings(value: object) -> Settings:
    if isinstance(value, Settings):
        return value
    if isinstance(value, Mapping):
        return Settings.from_mapping(value)
    raise ConfigurationError("settings", value, "a pulse_core.Settings or a mapping of its fields")


def _convert_policy(value: object) -> ReconnectPolicy:
    if isinstance(value, ReconnectPolicy):
        return value
    if isinstance(value, Mapping):
        names = {field.name for field in attrs.fields(ReconnectPolicy)}
        for name in value:
            if name not in names:
                raise ConfigurationError(
                    f"reconnect.{name}",
                    value[name],
                    "a ReconnectPolicy field: " + ", ".join(sorted(names)),
                )
        return ReconnectPolicy(**value)
    raise ConfigurationError("reconnect", value, "a ReconnectPolicy or a mapping of its fields")


def _convert_headers(value: object) -> tuple[tuple[str, str], ...]:
    items: list[object]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigurationError(
            "extra_headers", value, "a mapping or a sequence of (name, value) pairs"
        )
    headers: list[tuple[str, str]] = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ConfigurationError("extra_headers", item, "a (name, value) pair")
        name, text = item
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigurationError(
                "extra_headers", name, "a header name made of token characters"
            )
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigurationError(
                "extra_headers", name, "a header the WebSocket handshake does not set itself"
            )
        if not isinstance(text, str) or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise ConfigurationError(
                "extra_headers", name, "a header value without control characters"
            )
        headers.append((name, text))
    return tuple(headers)


def _check_api_key(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # Never echo the key itself in the error: it may be a real secret.
    if not isinstance(value, str) or not value:
        raise ConfigurationError("api_key", "<redacted>", "a non-empty string (keys start 'sk_')")
    if any(ord(ch) <= 32 or ord(ch) >= 127 for ch in value):
        raise ConfigurationError(
            "api_key", "<redacted>", "printable ASCII without spaces (check for a trailing newline)"
        )


# A DNS name (RFC 1123 section 2.1): dot-separated labels of letters, digits
# and inner hyphens, 63 characters at most each.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """Whether ``host`` (as ``urlsplit`` gives it) is an IP address or a DNS name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    name = host[:-1] if host.endswith(".") else host  # a fully qualified name
    if not name.isascii():
        try:  # an internationalised name is dialled as its IDNA form
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _valid_port(parts: SplitResult) -> bool:
    try:
        port = parts.port
    except ValueError:
        return False
    return port is None or port > 0


def _without_credentials(url: str, host: str | None, port: int | None) -> str:
    """``url`` fit for an error message: any user:password part is redacted."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "<redacted>@" + authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen(kw_only=True, repr=False)
class ConnectionConfig:
    """Everything the engine needs to reach the service, and its limits.

    The API key is never part of ``repr()``, ``str()``, the URL or any error
    message; it only travels in the ``Authorization`` header of the upgrade
    request.
    """

    api_key: str = attrs.field(validator=_check_api_key)
    base_url: str | None = None
    #: Shortcut for a region's host; a region given with ``base_url`` is the
    #: region that host serves (used for the language check).
    region: Region | None = attrs.field(default=None, converter=_convert_region)
    path: str = LIVE_PATH
    encoding: Encoding = attrs.field(default=Encoding.LINEAR16, converter=_convert_encoding)
    sample_rate: int = 16000
    settings: Settings = attrs.field(factory=Settings, converter=_convert_settings)
    #: Seconds without outgoing audio after which keepalive silence (or a ping) is sent.
    keepalive_interval: float = attrs.field(default=5.0, validator=_check_positive)
    #: Seconds of silence per keepalive.
    keepalive_silence: float = attrs.field(default=0.1, validator=_check_positive)
    #: Seconds the server may stay silent (no message, no pong) before the engine
    #: pings it to check that the connection is alive.
    ping_interval: float = attrs.field(default=5.0, validator=_check_positive)
    #: Seconds a liveness ping may go unanswered, with nothing else heard, before
    #: the connection is taken as dead and replaced (its audio is replayed).
    ping_timeout: float = attrs.field(default=5.0, validator=_check_positive)
    #: Seconds to wait for the final answering a finalize.
    finalize_timeout: float = attrs.field(default=5.0, validator=_check_positive)
    #: Seconds from close() to giving up on the server's ``is_last`` final.
    close_timeout: float = attrs.field(default=5.0, validator=_check_positive)
    #: Seconds a connection attempt may take before it counts as failed.
    connect_timeout: float = attrs.field(default=10.0, validator=_check_positive)
    reconnect: ReconnectPolicy = attrs.field(factory=ReconnectPolicy, converter=_convert_policy)
    #: Seconds of audio kept for replay after a reconnect (and before the first open).
    replay_seconds: float = attrs.field(default=30.0, validator=_check_positive)
    #: Largest audio frame sent, in bytes (the service recommends 1024 to 8192).
    chunk_bytes: int = attrs.field(default=4096, validator=_check_count)
    #: Longest a byte of audio waits to be coalesced into a larger frame, in
    #: seconds of audio and of clock time. 0 sends every chunk as it comes.
    max_chunk_delay: float = attrs.field(default=0.1, validator=_check_non_negative)
    #: Largest server message accepted, in bytes.
    max_message_size: int = attrs.field(default=1 << 20, validator=_check_count)
    #: Most finalizes awaiting an answer at once; beyond it the oldest times out.
    max_pending_finalizes: int = attrs.field(default=64, validator=_check_count)
    #: Most events or commands waiting to be drained before the engine refuses input.
    max_pending_outputs: int = attrs.field(default=100_000, validator=_check_count)
    #: Latency samples kept for percentiles (the oldest are forgotten).
    latency_samples: int = attrs.field(default=10_000, validator=_check_count)
    extra_headers: tuple[tuple[str, str], ...] = attrs.field(
        factory=tuple, converter=_convert_headers
    )
    #: Budget for time-to-final-segment (TTFS); the published Pulse p99 is 1.59 s.
    ttfs_p99_latency: float = attrs.field(default=1.59, validator=_check_positive)
    #: Allow plain ``ws://`` to a host that is not loopback.
    allow_insecure: bool = False
    #: Ask for word timestamps when the settings leave them unset, so that a
    #: replay after a reconnect starts exactly where the last final ended.
    replay_alignment: bool = True

    def __attrs_post_init__(self) -> None:
        if type(self.sample_rate) is not int or self.sample_rate not in SAMPLE_RATES:
            raise ConfigurationError(
                "sample_rate", self.sample_rate, "one of " + ", ".join(map(str, SAMPLE_RATES))
            )
        if self.encoding.telephony and self.sample_rate != 8000:
            raise ConfigurationError(
                "sample_rate",
                self.sample_rate,
                f"8000 with encoding={self.encoding.value} (G.711 is 8 kHz telephone audio)",
            )
        width = self.encoding.sample_width or 1
        if self.chunk_bytes % width:
            raise ConfigurationError(
                "chunk_bytes", self.chunk_bytes, f"a multiple of the {width}-byte sample size"
            )
        if (
            not isinstance(self.path, str)
            or not self.path.startswith("/")
            or any(ch in self.path for ch in "?#")
        ):
            raise ConfigurationError("path", self.path, f"a path such as {LIVE_PATH!r}")
        base = self.resolved_base_url
        parts = urlsplit(base)
        shown = _without_credentials(
            base, parts.hostname, parts.port if _valid_port(parts) else None
        )
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigurationError("base_url", shown, "a ws:// or wss:// URL with a host")
        if "?" in base or "#" in base or parts.username or parts.password:
            raise ConfigurationError(
                "base_url",
                shown,
                "scheme, host, port and optional path only (no query, fragment or credentials)",
            )
        if not _valid_port(parts):
            raise ConfigurationError("base_url", shown, "a port from 1 to 65535")
        if not _valid_host(parts.hostname):
            raise ConfigurationError("base_url", shown, "a host name or IP address")
        if parts.scheme == "ws" and not self.allow_insecure and not _is_loopback(parts.hostname):
            raise ConfigurationError(
                "base_url",
                base,
                "wss:// (plain ws:// sends audio unencrypted; it is allowed to "
                "loopback, or with allow_insecure=True)",
            )
        if self.region is not None and self.base_url is not None:
            host = parts.hostname
            known = {r.host: r for r in Region}
            if host in known and known[host] is not self.region:
                raise ConfigurationError(
                    "region", self.region.value, f"the region of base_url ({known[host].value})"
                )
        self.check_language(self.settings)

    # -- derived values -------------------------------------------------------

    @property
    def resolved_base_url(self) -> str:
        if self.base_url is not None:
            return self.base_url.rstrip("/")
        if self.region is not None:
            return f"wss://{self.region.host}"
        return DEFAULT_BASE_URL

    @property
    def resolved_region(self) -> Region | None:
        """The region of the host, when known (``None`` for other hosts)."""
        if self.region is not None:
            return self.region
        host = urlsplit(self.resolved_base_url).hostname
        for region in Region:
            if region.host == host:
                return region
        return None

    @property
    def legacy(self) -> bool:
        """Whether the path is the older endpoint, which takes no ``model``."""
        return self.path.rstrip("/").endswith("/pulse/get_text")

    def check_language(self, settings: Settings) -> None:
        """Reject a language the chosen host does not serve, naming the one that does."""
        region = self.resolved_region
        language: Language = settings.language
        if region is None or region in language.regions:
            return
        (serving,) = language.regions
        raise ConfigurationError(
            "language",
            language.value,
            f"a language served by the {region.value} host ({region.host})",
            detail=f"{language.value} is served only by the {serving.value} host, "
            f"wss://{serving.host}; use region={serving.value!r}",
        )

    def url(self, settings: Settings | None = None) -> str:
        """The upgrade URL for ``settings`` (default: the configured ones)."""
        settings = self.settings if settings is None else settings
        params = [
            *settings.query(include_model=not self.legacy),
            ("encoding", self.encoding.value),
            ("sample_rate", str(self.sample_rate)),
        ]
        if self.replay_alignment and settings.word_timestamps is None:
            params.append(("word_timestamps", "true"))
        return (
            f"{self.resolved_base_url}{self.path}?{urlencode(params, quote_via=quote, safe=',:')}"
        )

    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers of the upgrade request, ``Authorization`` first."""
        return (("Authorization", f"Bearer {self.api_key}"), *self.extra_headers)

    def with_settings(self, settings: Settings) -> ConnectionConfig:
        """A copy using ``settings`` (checked against the host's region)."""
        self.check_language(settings)
        return attrs.evolve(self, settings=settings)

    @property
    def ticks_per_second(self) -> int:
        return self.encoding.clock_rate(self.sample_rate)

    def __repr__(self) -> str:
        shown = [
            f"{field.name}={getattr(self, field.name)!r}"
            for field in attrs.fields(ConnectionConfig)
            if field.name != "api_key"
        ]
        return "ConnectionConfig(api_key=<redacted>, " + ", ".join(shown) + ")"

    __str__ = __repr__
