"""Operations: relayctl and its admin socket, /metrics over HTTP, Homer (HEP), counters."""
