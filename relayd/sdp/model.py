"""SDP as lines: what the rewriter needs to change in place and nothing more.

rtpengine 10.5 rewrites SDP in place: every line it does not manage is kept
verbatim and in its position. So the model keeps the original lines and only
parses the few fields the rewriter reads (RFC 8866 §5): ``o=``, ``c=``, ``m=``
and ``a=`` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, final

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


@final
class _Unknown:
    """Not worked out yet (a description built piece by piece, not parsed)."""


UNKNOWN = _Unknown()


class Line:
    """One ``<type>=<value>`` line, without its line ending.

    ``attr`` is the attribute name of an ``a=`` line (``rtpmap`` in
    ``a=rtpmap:0 PCMU/8000``), "" otherwise; ``text`` the whole line as written
    (``a=rtpmap:0 PCMU/8000``). Both computed once: the rewriter asks for ``attr`` many
    times per line, and every line of every SDP we send is written out as ``text``.
    A plain class with slots and a hand-written ``__init__`` (every line of every SDP is
    one): lines are never changed once made, so rewritten SDPs share them.
    """

    __slots__ = ("attr", "kind", "text", "value")

    kind: str
    value: str
    attr: str
    text: str

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        self.value = value
        self.attr = value.partition(":")[0] if kind == "a" else ""
        self.text = f"{kind}={value}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Line):
            return NotImplemented
        return self.kind == other.kind and self.value == other.value

    __hash__ = None  # type: ignore[assignment]  # compared by value, as a mutable dataclass

    def __repr__(self) -> str:
        return f"Line(kind={self.kind!r}, value={self.value!r})"

    def __str__(self) -> str:
        return self.text


def attribute_value(value: str) -> str:
    return value.partition(":")[2]


class Connection(NamedTuple):
    """``c=IN IP4 192.0.2.1`` (RFC 8866 §5.7). A named tuple: made for every c= line of
    every SDP, and a frozen dataclass costs three times as much to make."""

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


class Origin(NamedTuple):
    """``o=<username> <sess-id> <sess-version> IN IP4 <address>`` (RFC 8866 §5.2). A named
    tuple, as :class:`Connection`."""

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
        return cls._make(parts)


@dataclass(slots=True, init=False)
class MediaDescription:
    """An ``m=`` line and the lines that follow it up to the next ``m=``."""

    media: str
    port: int
    port_count: int | None
    protocol: str
    formats: list[str]
    lines: list[Line]
    # the parsed ``m=`` text and the fields it gave, so an unchanged line is
    # written back byte for byte (spacing, leading zeros), as rtpengine keeps it
    _verbatim: tuple[str, tuple[object, ...]] | None = field(repr=False, compare=False)
    # the first c= line, parsed: set by the parser (signalling asks for it many times)
    parsed_connection: Connection | _Unknown | None = field(repr=False, compare=False)

    def __init__(
        self,
        media: str,
        port: int,
        port_count: int | None,
        protocol: str,
        formats: list[str],
        lines: list[Line] | None = None,
    ) -> None:
        # by hand: two or more per SDP parsed and per SDP written
        self.media = media
        self.port = port
        self.port_count = port_count
        self.protocol = protocol
        self.formats = formats
        self.lines = [] if lines is None else lines
        self._verbatim = None
        self.parsed_connection = UNKNOWN

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
        parsed = self.parsed_connection
        if type(parsed) is not _Unknown:  # (no isinstance: once per section and message)
            return parsed
        for ln in self.lines:
            if ln.kind == "c":
                return Connection.parse(ln.value)
        return None


@dataclass(slots=True, init=False)
class Session:
    """The session-level lines of one session (RFC 8866 §5: ``v=`` up to the first ``m=``).

    ``first_media`` is the index, among all the body's media sections, of the first one
    that belongs to this session.
    """

    lines: list[Line]
    first_media: int
    # the first c= and o= lines, parsed: set by the parser
    parsed_connection: Connection | _Unknown | None = field(repr=False, compare=False)
    parsed_origin: Origin | _Unknown | None = field(repr=False, compare=False)

    def __init__(
        self,
        lines: list[Line],
        first_media: int = 0,
        parsed_connection: Connection | _Unknown | None = UNKNOWN,
        parsed_origin: Origin | _Unknown | None = UNKNOWN,
    ) -> None:
        self.lines = lines
        self.first_media = first_media
        self.parsed_connection = parsed_connection
        self.parsed_origin = parsed_origin

    def attributes(self, name: str) -> list[str]:
        return [attribute_value(ln.value) for ln in self.lines if ln.attr == name]

    def connection(self) -> Connection | None:
        parsed = self.parsed_connection
        if type(parsed) is not _Unknown:  # (no isinstance: once per section and message)
            return parsed
        for ln in self.lines:
            if ln.kind == "c":
                return Connection.parse(ln.value)
        return None

    def origin(self) -> Origin | None:
        parsed = self.parsed_origin
        if type(parsed) is not _Unknown:
            return parsed
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
        if len(self.sessions) == 1:  # nearly every body
            return self.sessions[0]
        found = self.sessions[0]
        for session in self.sessions:
            if session.first_media > index:
                break
            found = session
        return found

    def media_of(self, session: Session) -> list[MediaDescription]:
        """The media sections of ``session``."""
        sessions = self.sessions
        at = next((i for i, candidate in enumerate(sessions) if candidate is session), None)
        if at is None:
            raise ValueError("not a session of this description")
        end = sessions[at + 1].first_media if at + 1 < len(sessions) else len(self.media)
        return self.media[session.first_media : end]
