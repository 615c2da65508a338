"""rtpengine's ng control protocol, nothing of calls: bencode, framing, cache, server, client."""
