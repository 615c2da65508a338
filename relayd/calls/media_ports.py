"""Our ports towards each party's media (pure: the allocator's binder does the I/O).

A media section gets its RTP/RTCP pair on the party's interface the first time
the party needs it and keeps it across re-offers (a re-INVITE keeps its ports),
plus a pair on every other address of the interface while ICE is offered. Ports
taken while a message is handled are recorded (:class:`Taken`), so that "Ran out
of ports" gives them all back; the call's end releases everything.
"""

from __future__ import annotations

from relayd.calls.interfaces import Interfaces
from relayd.calls.model import Call, LocalAddress, Media, Monologue, Stream
from relayd.calls.ports import PortAllocator

__all__ = ["MediaPorts", "Taken"]


class Taken:
    """Ports taken while handling one message, to give back if it fails."""

    def __init__(self, ports: PortAllocator) -> None:
        self.ports = ports
        self._taken: list[tuple[Media, str, int]] = []

    def add(self, media: Media, address: str, port: int) -> None:
        self._taken.append((media, address, port))

    def rollback(self) -> None:
        """Give back every port taken, newest first, and take it off its media (the RTP/RTCP pair,
        or the ICE candidate port on another address)."""
        for media, address, port in reversed(self._taken):
            self.ports.release(address, port)
            if media.port == port and media.local is not None and media.local.local == address:
                _forget_pair(media)
            else:
                media.ice_ports = tuple(
                    (a, p) for a, p in media.ice_ports if (a.local, p) != (address, port)
                )


class MediaPorts:
    """Takes, keeps and gives back the port pairs of each party's media sections."""

    def __init__(self, interfaces: Interfaces, ports: PortAllocator) -> None:
        self.interfaces = interfaces
        self.ports = ports

    def ensure(
        self,
        call: Call,
        party: Monologue,
        media: Media,
        family: str,
        taken: Taken,
        *,
        renew: bool = False,
    ) -> None:
        """Our RTP/RTCP ports towards ``party`` for one media section, kept once given."""
        if media.rejected or media.passthrough:
            return
        local = self.local_of(call, party, family)
        if media.port and media.local is not None and (renew or media.local.family != local.family):
            self.release(media)
        if not media.port:
            media.port = self.ports.allocate(local.local, call.worker)
            media.local = local
            taken.add(media, local.local, media.port)
            media.rtcp_port = media.port + 1
        if not media.streams:
            owner = media.local or local
            media.streams = [
                Stream(
                    owner,
                    media.port,
                    rtcp=False,
                    endpoint=media.remote_rtp,
                    advertised_endpoint=media.remote_rtp,
                    call_id=call.call_id,
                ),
                Stream(
                    owner,
                    media.port + 1,
                    rtcp=True,
                    endpoint=media.remote_rtcp,
                    advertised_endpoint=media.remote_rtcp,
                    call_id=call.call_id,
                ),
            ]

    def local_of(
        self, call: Call, party: Monologue, family: str, *, take_turn: bool = True
    ) -> LocalAddress:
        """The local address in ``family`` for ``party``'s media: on the interface its media
        have where that is still what the party asks for (a party keeps the interface a
        round-robin pool gave it for the rest of the call, as rtpengine's), else on the one
        the interface it names, or its pool's turn, gives (see :meth:`Interfaces.choose`: an
        interface of the pool with a free pair on each address in the call's worker slice)."""
        interfaces, name = self.interfaces, party.interface
        if interfaces.pool_of(name) is None:
            return interfaces.select(name or interfaces.default, family)
        for media in party.medias:
            held = media.local
            if held is not None and interfaces.member(name, held.interface):
                kept = interfaces.select(held.interface, family)
                if kept.family == family:
                    return kept
                break
        worker = call.worker
        return interfaces.choose(
            name,
            family,
            lambda address: self.ports.has_free(address.local, worker),
            take_turn=take_turn,
        )

    def ensure_ice(self, call: Call, media: Media, taken: Taken) -> None:
        """With ICE towards a party (ours, or its own with our relay candidates), a candidate
        on every other address of its interface, on the same port number where it is free
        (as rtpengine, whose candidates on all addresses share the port)."""
        if not (media.ice or media.ice_relay) or not media.port or media.local is None:
            self._release_ice(media)
            return
        others = [
            a
            for a in self.interfaces.by_name.get(media.local.interface, [])
            if a.local != media.local.local
        ]
        have = {a.local for a, _ in media.ice_ports}
        for address in others:
            if address.local not in have:
                port = self.ports.allocate_like(address.local, media.port, call.worker)
                media.ice_ports += ((address, port),)
                taken.add(media, address.local, port)

    def _release_ice(self, media: Media) -> None:
        for address, port in media.ice_ports:
            self.ports.release(address.local, port)
        media.ice_ports = ()

    def release(self, media: Media) -> None:
        self._release_ice(media)
        if media.port and media.local is not None:
            self.ports.release(media.local.local, media.port)
        _forget_pair(media)

    def release_call(self, call: Call) -> None:
        for media in call.all_medias():
            self.release(media)


def _forget_pair(media: Media) -> None:
    """The media section has no pair of ours any more (its ports were given back)."""
    media.port = media.rtcp_port = 0
    media.local = None
    media.streams.clear()
