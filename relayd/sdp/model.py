"""SDP as lines: what the rewriter needs to change in place and nothing more.

rtpengine 10.5 rewrites SDP in place: every line it does not manage is kept
verbatim and in its position. So the model keeps the original lines and only
parses the few fields the rewriter reads (RFC 8866 §5): ``o=``, ``c=``, ``m=``
and ``a=`` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Connection",
    "Line",
    "MediaDescription",
    "Origin",
    "SdpError",
    "Session",
    "SessionDescription",
    "attribute_value",
]


class SdpError(ValueError):
    """The body is not SDP we can work with; the ng reply is "Failed to parse SDP"."""


class _Unknown:
    """Not worked out yet (a description built piece by piece, not parsed)."""


UNKNOWN = _Unknown()


@dataclass(slots=True, init=False)
class Line:
    """One ``<type>=<value>`` line, without its line ending.

    ``attr`` is the attribute name of an ``a=`` line (``rtpmap`` in
    ``a=rtpmap:0 PCMU/8000``), "" otherwise; computed once, since the rewriter
    asks for it many times per line.
    """

    kind: str
    value: str
    attr: str = field(compare=False, repr=False)

    def __init__(self, kind: str, value: str) -> None:
        # by hand: every line of every SDP is one, and a generated __init__ would call
        # __post_init__ on top
        self.kind = kind
        self.value = value
        self.attr = value.partition(":")[0] if kind == "a" else ""

    def __str__(self) -> str:
        return f"{self.kind}={self.value}"


def attribute_value(value: str) -> str:
    return value.partition(":")[2]


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=IN IP4 192.0.2.1`` (RFC 8866 §5.7)."""

    network: str
    family: str  # "IP4" or "IP6"
    address: str

    @property
    def is_zero(self) -> bool:
        return self.address in ("0.0.0.0", "::")

    @classmethod
    def parse(cls, value: str) -> Connection:
        parts = value.split()
        if len(parts) != 3 or parts[1] not in ("IP4", "IP6"):
            raise SdpError(f"bad connection line: c={value}")
        # a multicast TTL or count ("/127") is not ours to keep for unicast relaying
        return cls(parts[0], parts[1], parts[2].split("/")[0])

    def __str__(self) -> str:
        return f"{self.network} {self.family} {self.address}"


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> IN IP4 <address>`` (RFC 8866 §5.2)."""

    username: str
    session_id: str
    version: str
    network: str
    family: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.network} {self.family} {self.address}"
        )

    @classmethod
    def parse(cls, value: str) -> Origin:
        parts = value.split()
        if len(parts) != 6:
            raise SdpError(f"bad origin line: o={value}")
        return cls(*parts)


@dataclass(slots=True)
class MediaDescription:
    """An ``m=`` line and the lines that follow it up to the next ``m=``."""

    media: str
    port: int
    port_count: int | None
    protocol: str
    formats: list[str]
    lines: list[Line] = field(default_factory=list)
    # the parsed ``m=`` text and the fields it gave, so an unchanged line is
    # written back byte for byte (spacing, leading zeros), as rtpengine keeps it
    _verbatim: tuple[str, tuple[object, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # the first c= line, parsed: set by the parser (signalling asks for it many times)
    parsed_connection: Connection | _Unknown | None = field(
        default_factory=lambda: UNKNOWN, init=False, repr=False, compare=False
    )

    def _fields(self) -> tuple[object, ...]:
        return (self.media, self.port, self.port_count, self.protocol, tuple(self.formats))

    def keep_verbatim(self, value: str) -> None:
        """Remember ``value`` as this line's text while its fields stay as parsed."""
        self._verbatim = (value, self._fields())

    def inherit_verbatim(self, other: MediaDescription) -> None:
        """Write this ``m=`` line as ``other``'s text as long as its fields are ``other``'s."""
        self._verbatim = other._verbatim

    def m_value(self) -> str:
        if self._verbatim is not None and self._verbatim[1] == self._fields():
            return self._verbatim[0]
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        return " ".join([self.media, port, self.protocol, *self.formats])

    def attributes(self, name: str) -> list[str]:
        """Values of every ``a=name:value`` (or bare ``a=name``) line, in order."""
        return [attribute_value(ln.value) for ln in self.lines if ln.attr == name]

    def has_attribute(self, name: str) -> bool:
        return any(ln.attr == name for ln in self.lines)

    def connection(self) -> Connection | None:
        if not isinstance(self.parsed_connection, _Unknown):
            return self.parsed_connection
        for ln in self.lines:
            if ln.kind == "c":
                return Connection.parse(ln.value)
        return None


@dataclass(slots=True)
class Session:
    """The session-level lines of one session (RFC 8866 §5: ``v=`` up to the first ``m=``).

    ``first_media`` is the index, among all the body's media sections, of the first one
    that belongs to this session.
    """

    lines: list[Line]
    first_media: int = 0
    # the first c= and o= lines, parsed: set by the parser
    parsed_connection: Connection | _Unknown | None = field(
        default_factory=lambda: UNKNOWN, repr=False, compare=False
    )
    parsed_origin: Origin | _Unknown | None = field(
        default_factory=lambda: UNKNOWN, repr=False, compare=False
    )

    def attributes(self, name: str) -> list[str]:
        return [attribute_value(ln.value) for ln in self.lines if ln.attr == name]

    def connection(self) -> Connection | None:
        if not isinstance(self.parsed_connection, _Unknown):
            return self.parsed_connection
        for ln in self.lines:
            if ln.kind == "c":
                return Connection.parse(ln.value)
        return None

    def origin(self) -> Origin | None:
        if not isinstance(self.parsed_origin, _Unknown):
            return self.parsed_origin
        for ln in self.lines:
            if ln.kind == "o":
                return Origin.parse(ln.value)
        return None


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body: its sessions' lines, then the media descriptions of all of them.

    Nearly every body is one session. rtpengine also takes a body with several (each
    further ``v=`` line starts the next): their media sections are numbered on across the
    body, and each session keeps its own session-level lines.
    """

    sessions: list[Session]
    media: list[MediaDescription]
    eol: str = "\r\n"

    @property
    def session(self) -> list[Line]:
        """The first session's lines."""
        return self.sessions[0].lines

    def session_attributes(self, name: str) -> list[str]:
        return self.sessions[0].attributes(name)

    def connection(self) -> Connection | None:
        """The first session's c=."""
        return self.sessions[0].connection()

    def origin(self) -> Origin | None:
        """The first session's o=."""
        return self.sessions[0].origin()

    def session_of(self, index: int) -> Session:
        """The session media section ``index`` belongs to."""
        found = self.sessions[0]
        for session in self.sessions:
            if session.first_media > index:
                break
            found = session
        return found

    def media_of(self, session: Session) -> list[MediaDescription]:
        """The media sections of ``session``."""
        later = self.sessions[[s is session for s in self.sessions].index(True) + 1 :]
        end = later[0].first_media if later else len(self.media)
        return self.media[session.first_media : end]
