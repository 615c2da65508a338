"""The worker's side of transcoding: which sockets hand their packets to a media engine.

A socket whose ``SocketSpec.codecs`` holds a plan (relayd/transcode/plan.py) gets a
:class:`~relayd.transcode.transcoder.Transcoder` for what its party sends; the loop hands
that socket's RTP to it (after SRTP decryption, before encryption towards the other party:
relayd/worker/secure.py) and sends what comes out instead.

Rules:

* A Forward that repeats a socket's plan keeps its engine (codec state, sequence offset,
  output SSRC); a changed plan starts a new one; an empty one removes it.
* A plan that does not parse, or names a codec the engine cannot open, is logged once; that
  direction's RTP is dropped (counted as errors) until a Forward brings another plan. (The
  supervisor refuses such offers first: this is the worker keeping its word not to send
  media in a codec nobody converted.)
* RTCP of a media section with an engine in either direction is rewritten
  (relayd/transcode/reports.py) so each side hears of the SSRCs it knows. An RTCP socket
  (no rtcp-mux) finds its stream's engines through its RTP socket: the one of the same
  party, same address, port one below.
* An exception out of an engine is a bug: logged with its traceback, counted, the packet
  dropped; the loop goes on.
* ``InjectDtmf`` (ng ``play DTMF``) queues its digit on the engine of each socket it names,
  in order. A socket with no engine, or one whose plan injects nothing (the parties lacked
  ``inject DTMF``), is passed over, as rtpengine 10.5 answers such a request "ok" and
  injects nothing; an engine that has had no packet yet stops the request with 10.5's "No
  SSRC context present for DTMF injection" (the digits queued before it stay queued).
"""

from __future__ import annotations

from relayd.ipc import InjectDtmf, parse_key
from relayd.log import get_logger
from relayd.transcode.codecs import CodecError
from relayd.transcode.inject import Digit
from relayd.transcode.plan import PlanError, parse
from relayd.transcode.reports import rewrite
from relayd.transcode.transcoder import Transcoder, describe
from relayd.worker.sockets import Codecs, MediaSocket

__all__ = ["configure", "inject", "link", "outgoing"]

NO_SSRC = "No SSRC context present for DTMF injection"

log = get_logger("relayd.worker")


def configure(ms: MediaSocket, text: str, worker: int) -> None:
    """Give ``ms`` the engine its spec's ``codecs`` asks for (keeping one it has)."""
    current = ms.codecs
    if current is not None and current.text == text:
        return
    if not text:
        ms.codecs = None
        return
    try:
        plan = parse(text)
        if plan is None:
            raise PlanError("empty")
        ms.codecs = Codecs(text, Transcoder(plan), describe(plan))
        log.debug("transcode.plan", worker=worker, key=ms.leg.key, plan=text)
    except (PlanError, CodecError) as exc:
        log.error("transcode.failed", worker=worker, key=ms.leg.key, error=str(exc))
        ms.codecs = Codecs(text, None, f"failed: {exc}")


def link(sockets: list[MediaSocket]) -> None:
    """Mark the sockets of one media section whose packets the engines see (``ms.transcode``)
    and each RTCP socket's RTP socket; after their ``out`` links are set."""
    by_address = {parse_key(ms.leg.key): ms for ms in sockets if not ms.leg.rtcp}
    for ms in sockets:
        if ms.primary is not None:  # an ICE candidate on another address: its primary's stream
            continue
        if ms.leg.rtcp:
            address = parse_key(ms.leg.key)
            ms.rtp_socket = by_address.get((address[0], address[1] - 1)) if address else None
        else:
            ms.rtp_socket = ms
    for ms in sockets:
        if ms.primary is not None:
            ms.rtp_socket = ms.primary.rtp_socket
        rtp = ms.rtp_socket
        out = rtp.out if rtp is not None else None
        ms.transcode = rtp is not None and (
            rtp.codecs is not None or (out is not None and out.codecs is not None)
        )


def outgoing(ms: MediaSocket, data: bytes, rtcp: bool, worker: int) -> list[bytes]:
    """What goes out for ``data`` (clear RTP or RTCP) that arrived on ``ms``."""
    rtp = ms.rtp_socket
    if rtp is None:
        return [data]
    codecs = rtp.codecs
    try:
        if rtcp:
            out = rtp.out
            reverse = out.codecs.engine if out is not None and out.codecs is not None else None
            forward = codecs.engine if codecs is not None else None
            if forward is None and reverse is None:
                return [data]
            return [rewrite(data, forward, reverse)]
        if codecs is None:
            return [data]
        if codecs.engine is None:
            ms.leg.errors += 1
            return []
        return codecs.engine.process(data)
    except Exception:  # a bug in an engine must not take the worker's loop with it
        log.exception("transcode.bug", worker=worker, key=ms.leg.key)
        ms.leg.errors += 1
        return []


def inject(message: InjectDtmf, by_key: dict[str, MediaSocket], worker: int) -> str:
    """Queue ``message``'s digit on its sockets' engines (module rules); the error, or ""."""
    digit = Digit(message.code, message.volume, message.duration, message.pause)
    for key in message.keys:
        ms = by_key.get(key)
        engine = ms.codecs.engine if ms is not None and ms.codecs is not None else None
        if engine is None or engine.injector is None:
            log.info("dtmf.inject_unset", worker=worker, key=key)
            continue
        if not engine.inject(digit):
            return NO_SSRC
        log.info("dtmf.injected", worker=worker, key=key, code=message.code)
    return ""
