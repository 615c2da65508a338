"""Transcoding: what a worker does to the RTP of a stream whose two sides speak different
codecs, payload types or packet times (issue 15).

``plan`` is the contract between the supervisor's codec negotiation (relayd/calls/) and
the workers' media engine: one :class:`~relayd.transcode.plan.CodecPlan` per direction of
a media section, carried to the worker in :class:`relayd.ipc.SocketSpec`. Pure; shared
with the workers.
"""
