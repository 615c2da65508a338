"""SDP engine: parse, model, rewrite in place and write, as rtpengine 10.5 does."""
