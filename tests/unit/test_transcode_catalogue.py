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
from relayd.transcode.plan import TRANSCODED


def test_the_negotiation_transcodes_the_engine_s_codecs() -> None:
    assert {name.lower() for name in TRANSCODED} == TRANSCODABLE


@pytest.mark.parametrize("name", sorted(TRANSCODED))
def test_the_engine_opens_every_codec_the_negotiation_offers(name: str) -> None:
    fmt = TRANSCODED[name]
    rate = audio_rate(fmt)
    decoder = open_decoder(fmt)
    encoder = open_encoder(fmt, rate, rate // 50)  # 20 ms
    payload = encoder.encode(encoder.silence * encoder.samples)
    assert payload
    assert len(decoder.decode(payload)) > 0
