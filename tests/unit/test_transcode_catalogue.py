"""The codecs the negotiation offers to transcode are the codecs the workers' engine opens.

relayd/calls/transcoding.py (the supervisor, pure) decides which codecs relayd may add or
transcode; relayd/transcode/codecs.py (the workers) opens them. A codec in the first and
not the second would be negotiated and then dropped by every worker
(``relayd_transcoding_failed_streams``); one in the second only would never be used.
"""

from __future__ import annotations

import pytest

from relayd.calls.transcoding import TRANSCODABLE
from relayd.transcode.codecs import audio_rate, open_decoder, open_encoder
from relayd.transcode.plan import Format

FORMATS = {
    "pcmu": Format(0, "PCMU", 8000),
    "pcma": Format(8, "PCMA", 8000),
    "g722": Format(9, "G722", 8000),
    "opus": Format(96, "opus", 48000, 2),
}


def test_every_transcodable_codec_has_a_format_here() -> None:
    assert set(FORMATS) == TRANSCODABLE


@pytest.mark.parametrize("name", sorted(TRANSCODABLE))
def test_the_engine_opens_every_codec_the_negotiation_offers(name: str) -> None:
    fmt = FORMATS[name]
    rate = audio_rate(fmt)
    decoder = open_decoder(fmt)
    encoder = open_encoder(fmt, rate, rate // 50)  # 20 ms
    payload = encoder.encode(encoder.silence * encoder.samples)
    assert payload
    assert len(decoder.decode(payload)) > 0
