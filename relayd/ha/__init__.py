"""High availability over Redis: call state written for a standby, and the standby's takeover.

:mod:`relayd.ha.settings` reads rtpengine's ``redis`` keys (pure); :mod:`relayd.ha.writer`
writes and deletes calls off the event loop; :mod:`relayd.ha.watcher` follows a peer's
calls through keyspace notifications; :mod:`relayd.ha.replica` is the supervisor's side:
which calls are written, the foreign calls held, and their takeover. docs/operations.md
("High availability") says how to run two relayd this way.
"""
