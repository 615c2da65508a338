"""The kernel path's policy: which directions of a call nftables may carry, and when (pure).

Rules (docs/architecture.md "Kernel path"; rtpengine kernelizes on the same conditions):

* A direction goes to the kernel once both parties' streams of its component
  have a confirmed endpoint (the workers learned and confirmed them), the
  transport is plain RTP both ways, neither party is asymmetric (no learned
  source to key on), no ICE (consent checks share the port), and rtcp-mux is on
  both sides or on neither (RTCP split from RTP needs a worker per packet).
* Parties under ``media-echo`` stay with the workers: their media goes back to
  them or nowhere, not across the call.
* Parties whose media is blocked or silenced (ng ``block``/``silence media``) stay with
  the workers, which drop or silence it; so does the party they talk to.
* A call that records (and is not paused) stays with the workers, which write its pcap
  (relayd/worker/recording.py), as rtpengine 10.5's pcap method does; unless the kernel
  can copy its packets to them (nflog, ``copies``): then it goes to the kernel like any
  other, and is marked recorded there (relayd/plane/handover.py).
* A party that hears ``play media`` (relayd/calls/playback.py) stays with the workers, and
  so does its peer, while the play runs: the player sends from the party's relay socket,
  which the kernel's NAT would own; back to the kernel once the worker says it ended.
* A media section with codec work in either direction (a codec plan:
  relayd/calls/codec_plans.py, DTMF injection included) stays with the workers, both
  directions, RTP and RTCP. The transcoded direction's packets are rewritten and its
  RTCP describes the new stream; and the other direction cannot go alone: the conntrack
  entry that its kernel forward's NAT makes has the transcoded direction's packets as
  its reply tuple, so the kernel would carry those back untranscoded (found by
  tests/netns/test_suite_transcoding.py).
* Separate RTCP streams stay with the workers while they copy RTCP (Homer, the
  RTCP log); with rtcp-mux on both sides one forward carries both.
* With DTMF events reported (``dtmf-log-dest``, ``log-facility-dtmf``: ``dtmf``), a media
  section where either party sends telephone-event stays with the workers, which read
  its event packets (relayd/worker/dtmf.py), as rtpengine 10.5's kernel module leaves
  telephone-event packets to its userspace; unless the kernel copies the call's event
  packets to its worker (``events_copied``: nflog, the call's telephone-event payload type,
  :func:`events_payload_type`): then it goes to the kernel like any other.
* Signalling takes every stream of the call back to the workers, and learning
  starts again, until they confirm the endpoints anew.
* A stream is marked ``kernelized`` exactly while its relay socket's forward is
  in the table: the workers skip those sockets, so no packet leaves a socket the
  kernel took over (it would leave a conntrack entry that clashes with the NAT).

The shell that applies this is :mod:`relayd.plane.handover`, through
:mod:`relayd.plane.kernel` (nftables); :mod:`relayd.nft` is the table itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayd.calls.codec_plans import party_plan
from relayd.calls.model import Call, Endpoint, Monologue
from relayd.ipc import socket_key
from relayd.plane.forwarding import PLAIN, dialogue_pairs, muxes, telephone_events

__all__ = [
    "KernelLeg",
    "back_to_userspace",
    "events_payload_type",
    "kernel_legs",
    "mark_kernelized",
]


@dataclass(frozen=True, slots=True)
class KernelLeg:
    """One direction of a stream the kernel can forward: ``source → relay`` becomes
    ``out → dest``. ``socket`` is the key of the relay socket it bypasses."""

    socket: str
    source: Endpoint
    relay: Endpoint
    out: Endpoint
    dest: Endpoint


def kernel_legs(
    call: Call,
    *,
    rtcp: bool = True,
    copies: bool = False,
    dtmf: bool = False,
    events_copied: bool = False,
) -> list[KernelLeg]:
    """The directions of ``call`` that need no per-packet work and can leave userspace.

    Both parties' streams of a component must have a confirmed endpoint; the
    transport must be plain RTP (SRTP stays in the workers); asymmetric parties
    (no learned source to key on) and rtcp-mux on one side only (RTCP must be
    split from RTP per packet) stay in userspace, as do parties under ``media-echo``.
    With rtcp-mux on both sides the RTP port carries both, so one forward covers them.
    ``rtcp=False`` leaves separate RTCP streams to the workers (which copy RTCP for Homer
    and the RTCP log). A recorded call stays with the workers unless ``copies``: the kernel
    then copies its packets to the worker that records it (nflog). ``dtmf``: DTMF events
    are reported, and a section where a party sends telephone-event stays with the workers
    unless ``events_copied``: the kernel copies the call's event packets to its worker.
    """
    dtmf = dtmf and not events_copied
    if not call.answered:
        return []
    recording = call.recording
    if not copies and recording is not None and recording.active and not recording.paused:
        return []
    legs: list[KernelLeg] = []
    control = call.control
    for x, y in dialogue_pairs(call):
        if x.asymmetric or y.asymmetric or x.media_echo or y.media_echo:
            continue
        if control is not None and any(control.blocks(p) or control.silences(p) for p in (x, y)):
            continue  # blocked or silenced: the workers drop or silence it
        if _playing(x) or _playing(y):
            continue  # played to from its relay socket: no kernel NAT on that port
        for mx, my in zip(x.medias, y.medias, strict=False):
            if mx.protocol not in PLAIN or my.protocol not in PLAIN:
                continue
            if mx.rejected or my.rejected or muxes(mx) != muxes(my):
                continue
            if mx.ice_ufrag or my.ice_ufrag:
                continue  # STUN consent checks share the port: they must reach a worker
            components = 1 if muxes(mx) or not rtcp else 2
            if party_plan(x, mx, my) is not None or party_plan(y, my, mx) is not None:
                continue  # codec work: both directions stay with the workers (above)
            if dtmf and (telephone_events(mx) or telephone_events(my)):
                continue  # its event packets are read by the workers (above)
            for sx, sy in zip(mx.streams[:components], my.streams[:components], strict=False):
                if not (sx.confirmed and sy.confirmed and sx.endpoint and sy.endpoint):
                    continue
                rx = Endpoint(sx.local.local, sx.port)
                ry = Endpoint(sy.local.local, sy.port)
                legs.append(
                    KernelLeg(socket_key(rx.address, rx.port), sx.endpoint, rx, ry, sy.endpoint)
                )
                legs.append(
                    KernelLeg(socket_key(ry.address, ry.port), sy.endpoint, ry, rx, sx.endpoint)
                )
    return legs


def events_payload_type(call: Call) -> int | None:
    """The telephone-event payload type whose packets the kernel copies for the DTMF event
    log, for a call it forwards: the first one a party's SDP names (None: none). One per
    call is enough: a direction with no codec work, the only kind the kernel forwards,
    goes to a party that takes the sender's telephone-event under the same number
    (relayd/calls/codec_plans.py); another number is translated by a worker."""
    for party in call.parties():
        for media in party.medias:
            for codec in media.codecs:
                number = codec.payload_type
                if (
                    codec.name.lower() == "telephone-event"
                    and number.isdigit()
                    and int(number) < 128
                ):
                    return int(number)
    return None


def _playing(party: Monologue) -> bool:
    return party.playback is not None and party.playback.active


def mark_kernelized(call: Call, sockets: set[str]) -> bool:
    """Mark the streams whose relay socket is in ``sockets`` as carried by the kernel and
    the others as not; whether any mark changed (then the workers must hear of it)."""
    changed = False
    for media in call.all_medias():
        for stream in media.streams:
            now_in = socket_key(stream.local.local, stream.port) in sockets
            if stream.kernelized != now_in:
                stream.kernelized = now_in
                changed = True
    return changed


def back_to_userspace(call: Call) -> None:
    """Signalling: every stream of the call returns to the workers, which learn anew."""
    for media in call.all_medias():
        for stream in media.streams:
            stream.kernelized = False
            stream.confirmed = False
