"""The recording spool as rtpengine 10.5's pcap method lays it out: settings, directories, names.

Layout under ``recording-dir`` (what rtpengine 10.5.3.5 does, and what relayd does)::

    <dir>/pcaps/<call-id>-<tag>.pcap                   written live, from the first packet
    <dir>/tmp/rtpengine-meta-<call-id>-<tag>.tmp       the metadata file while recording
    <dir>/metadata/rtpengine-meta-<call-id>-<tag>.txt  the same file, moved there when done

* ``<call-id>`` is the ng call-id URI-escaped as GLib's ``g_uri_escape_string`` does: every
  byte of its UTF-8 but ``A-Z a-z 0-9 - . _ ~`` becomes ``%XX`` (upper-case hex), so ``/``
  and ``@`` never reach a file name as such. ``<tag>`` is 16 random lower-case hex digits,
  new for each recording: a call recorded twice (``stop recording``, ``start recording``) has
  two pcaps and two metadata files.
* The path of the pcap is ``recording-dir`` as configured (one trailing ``/`` dropped), not
  made absolute: the metadata file's first line and ng's ``recordings`` list carry it so.
* Modes. rtpengine creates a missing ``recording-dir`` 0700 (one level, not its parents) and
  the three sub-directories 0777 less the umask; the pcap 0666 less the umask (libpcap's
  fopen), the metadata file exactly 0664 (chmod). relayd applies ``dir_mode`` to the
  directories it creates and ``file_mode`` to both files, whatever the umask, so that an
  operator lets a collector's group read them (``file_mode = 0o640`` and a set-group-id
  spool directory owned by that group); directories that exist already are left as they are.
* ng keys that name places: 10.5 reads none of ``recording-file``, ``recording-dir`` and
  ``recording-pattern`` (they came later, for the ``proc`` method's recording daemon, whose
  output directory and file name pattern they override; later versions' pcap method takes
  only ``recording-file``, a full path for the pcap used as given). :func:`recording_names`
  follows those later versions: ``file`` places the pcap (absolute path, no extension added),
  ``directory`` and ``pattern`` are kept in the names but place nothing. A caller that wants
  10.5 exactly passes none of them.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from urllib.parse import quote

__all__ = [
    "METADATA_DIR",
    "PCAP_DIR",
    "TMP_DIR",
    "RecordingNames",
    "SpoolSettings",
    "escape_call_id",
    "names_from_fields",
    "names_to_fields",
    "prepare",
    "recording_names",
]

TMP_DIR = "tmp"
PCAP_DIR = "pcaps"
METADATA_DIR = "metadata"
_SUBDIRS = (TMP_DIR, PCAP_DIR, METADATA_DIR)
_TAG_BYTES = 8


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """Where and how recordings are written (``recording-*`` configuration).

    ``flush_bytes`` and ``flush_interval`` bound what a crash can lose of a pcap: packets are
    gathered in memory and written, whole records only, once ``flush_bytes`` are waiting or
    the oldest waiting packet is ``flush_interval`` seconds old (checked as packets arrive and
    by :meth:`CallRecorder.flush_due`); ``flush_interval = 0`` writes every packet at once.
    """

    directory: str
    method: str = "pcap"
    format: str = "raw"
    file_mode: int = 0o640
    dir_mode: int = 0o750
    flush_bytes: int = 32768
    flush_interval: float = 0.2

    def __post_init__(self) -> None:
        if self.method != "pcap":
            raise ValueError(f"recording-method {self.method!r} is not supported (only pcap)")
        if self.format not in ("raw", "eth"):
            raise ValueError(f"recording-format must be raw or eth, not {self.format!r}")
        if not self.directory:
            raise ValueError("recording-dir is empty")
        if self.flush_bytes < 0 or self.flush_interval < 0:
            raise ValueError("flush_bytes and flush_interval cannot be negative")

    @property
    def root(self) -> str:
        """``directory`` with one trailing slash dropped, as rtpengine prints paths."""
        if len(self.directory) > 1 and self.directory.endswith("/"):
            return self.directory[:-1]
        return self.directory


@dataclass(frozen=True, slots=True)
class RecordingNames:
    """The files of one recording (paths as rtpengine prints them)."""

    prefix: str  # "<escaped call-id>-<tag>"
    tag: str
    pcap: str
    temporary: str  # the metadata file while recording (tmp/)
    metadata: str  # where it is moved when the recording ends (metadata/)
    directory: str | None = None  # ng recording-dir, as given: places nothing (see the module)
    pattern: str | None = None  # ng recording-pattern, likewise


def names_to_fields(names: RecordingNames) -> tuple[str, ...]:
    """``names`` as strings, in field order (relayd's worker link carries them so);
    :func:`names_from_fields` reads them back."""
    return tuple("" if value is None else value for value in astuple(names))


def names_from_fields(fields: Sequence[str]) -> RecordingNames:
    """The names :func:`names_to_fields` wrote; ValueError for anything else."""
    if len(fields) != len(_NAME_FIELDS):
        raise ValueError(f"recording names: {len(fields)} fields, not {len(_NAME_FIELDS)}")
    prefix, tag, pcap, temporary, metadata, directory, pattern = fields
    return RecordingNames(
        prefix, tag, pcap, temporary, metadata, directory or None, pattern or None
    )


def escape_call_id(call_id: str | bytes) -> str:
    """The call-id as ``g_uri_escape_string(call_id, NULL, FALSE)`` writes it.

    A ``str`` is taken as relayd's ng layer decodes it (UTF-8 with ``surrogateescape``), so
    the bytes that came over ng are what is escaped.
    """
    raw = call_id if isinstance(call_id, bytes) else call_id.encode("utf-8", "surrogateescape")
    return quote(raw, safe="")


_NAME_FIELDS = tuple(f.name for f in fields(RecordingNames))


def recording_names(
    settings: SpoolSettings,
    call_id: str | bytes,
    *,
    directory: str | None = None,
    pattern: str | None = None,
    file: str | None = None,
    tag: str | None = None,
) -> RecordingNames:
    """The names of a new recording of ``call_id``; ``tag`` defaults to 16 random hex digits.

    ``file`` (ng ``recording-file``) must be an absolute path; ValueError otherwise.
    """
    tag = secrets.token_hex(_TAG_BYTES) if tag is None else tag
    prefix = f"{escape_call_id(call_id)}-{tag}"
    root = settings.root
    if file is not None and not os.path.isabs(file):
        raise ValueError(f"recording-file must be an absolute path, not {file!r}")
    return RecordingNames(
        prefix=prefix,
        tag=tag,
        pcap=file if file is not None else f"{root}/{PCAP_DIR}/{prefix}.pcap",
        temporary=f"{root}/{TMP_DIR}/rtpengine-meta-{prefix}.tmp",
        metadata=f"{root}/{METADATA_DIR}/rtpengine-meta-{prefix}.txt",
        directory=directory,
        pattern=pattern,
    )


def _make_dir(path: str, mode: int, what: str) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(
                errno.ENOTDIR, f"{what} {path} exists and is not a directory", path
            ) from None
        return
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create {what} {path}: {exc.strerror}", path) from exc
    os.chmod(path, mode)  # mkdir's mode went through the umask


def _probe(path: str, what: str) -> None:
    """Create and remove a file in ``path``: catches a read-only mount or wrong owner at
    start-up, which permission bits alone do not show (root passes every access check)."""
    probe = os.path.join(path, f".relayd-probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise type(exc)(exc.errno, f"{what} {path} is not writable: {exc.strerror}", path) from exc


def prepare(settings: SpoolSettings) -> None:
    """Create ``recording-dir`` (one level, as rtpengine) and its ``tmp``, ``pcaps`` and
    ``metadata``, and check that each takes files; OSError saying which and why."""
    root = settings.root
    _make_dir(root, settings.dir_mode, "recording-dir")
    for sub in _SUBDIRS:
        path = os.path.join(root, sub)
        _make_dir(path, settings.dir_mode, f"recording-dir's {sub}/")
        _probe(path, f"recording-dir's {sub}/")
