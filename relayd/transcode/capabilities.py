"""What this relayd can transcode, codec by codec, as ``rtpengine --codecs`` lists its own.

rtpengine's ``codecs`` option prints every codec it knows and whether its build can decode
and encode it, then exits: operators run it to check an installation. relayd's codecs are
PCMU, PCMA, G.722 and Opus (with telephone-event and CN); each is opened, made to encode
20 ms of silence and to decode it back here, so a PyAV build without libopus, say, shows as
"not available" with the reason. The other codecs rtpengine names are passed through as
offered, never transcoded (docs/transcoding.md).
"""

from __future__ import annotations

from relayd.transcode.codecs import CodecError, audio_rate, open_decoder, open_encoder
from relayd.transcode.plan import TRANSCODED, Format

__all__ = ["report"]

# the RTP audio codecs rtpengine 10.5 names in its list, in its order
_NAMES = (
    "PCMA", "PCMU", "G723", "G722", "QCELP", "G729", "G729a", "speex", "GSM", "iLBC", "opus",
    "AMR", "AMR-WB", "telephone-event", "CN",
)  # fmt: skip
_EVENTS = ("telephone-event", "CN")  # made and read by relayd itself


def _check(fmt: Format) -> str:
    try:
        rate = audio_rate(fmt)
        encoder = open_encoder(fmt, rate, rate // 50)
        payload = encoder.encode(encoder.silence * encoder.samples)
        if not payload or not open_decoder(fmt).decode(payload):
            return "not available here: encodes or decodes nothing"
    except (CodecError, ValueError, OSError) as exc:
        return f"not available here: {exc}"
    return "fully supported"


def report() -> list[tuple[str, str]]:
    """(codec, what relayd does with it), in rtpengine's order."""
    result = []
    for name in _NAMES:
        if name in TRANSCODED:
            result.append((name, _check(TRANSCODED[name])))
        elif name in _EVENTS:
            result.append((name, "fully supported"))
        else:
            result.append((name, "not transcoded: passed through as offered"))
    return result


def text() -> str:
    """The report as ``rtpengine --codecs`` prints its own: the name right-aligned."""
    return "".join(f"{name:>20}: {status}\n" for name, status in report())
