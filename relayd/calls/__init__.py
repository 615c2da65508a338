"""Calls: the call model, ng commands and their timers, offer/answer, ports, journal.

Pure core, but for the journal's SQLite file: no sockets, no asyncio, no clock.
"""
