"""Operations: relayctl and its admin socket, /metrics, Homer, statistics, counters, reload."""
