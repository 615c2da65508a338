"""rtpengine's ng control protocol: codec, messages, commands, server, client."""
