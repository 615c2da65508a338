"""One audio section as the codec tests offer and answer it (test_suite_codec, test_suite_probes,
test_transcoding_negotiation): each module passes its own payload-type table."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["audio_sdp"]


def audio_sdp(
    rtpmaps: Mapping[str, str], address: str, port: int, formats: str, *extra: str
) -> str:
    """An audio section listing ``formats``, with an rtpmap for those of ``rtpmaps`` that
    the ``extra`` attribute lines do not map themselves."""
    mapped = {line.split()[0].removeprefix("a=rtpmap:") for line in extra}
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {formats}",
        *(
            f"a=rtpmap:{pt} {rtpmaps[pt]}"
            for pt in formats.split()
            if pt in rtpmaps and pt not in mapped
        ),
        *extra,
        "a=sendrecv",
    ]
    return "\r\n".join(lines) + "\r\n"
