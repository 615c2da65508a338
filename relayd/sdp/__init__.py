"""SDP as lines (RFC 8866): parse, model, codecs, write. Pure; calls/rewrite.py writes into it."""
