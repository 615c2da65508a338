"""Replay every oracle case against a fresh rtpengine 10.5 and store its replies.

Usage (from the repository root)::

    .venv/bin/python -m tests.interop.record_oracle [CASE ...]

writes ``tests/data/oracle/expected/<case>.json``: per step the request as
stored in ``cases.json`` (SDP bodies by file name) and rtpengine's reply, with
``sdp`` split on CRLF into a list of lines (join with CRLF to get the exact
body back). The daemon is started exactly as ``test_oracle.py`` starts it, so
the recorded ports fall in the same range and normalise the same way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.oracle import (
    EXPECTED_DIR,
    INTERFACES,
    RTPENGINE_NG_PORT,
    RTPENGINE_PORTS,
    Case,
    Exchange,
    load_cases,
    run_case,
    sdp_to_lines,
)
from tests.support.rtpengine import RTPENGINE, rtpengine_installed, running_rtpengine

__all__ = ["main", "record"]


def record(case: Case, exchange: Exchange, directory: Path = EXPECTED_DIR) -> Path:
    steps = []
    for step, result in zip(case.steps, run_case(case, exchange), strict=True):
        reply = dict(result.reply)
        if isinstance(reply.get("sdp"), str):
            reply["sdp"] = sdp_to_lines(reply["sdp"])
        entry: dict[str, object] = {"command": result.command}
        if step.request is not None:
            entry["request"] = step.request
        if step.raw is not None:
            entry["raw"] = step.raw
        if step.encoding != "bencode":
            entry["encoding"] = step.encoding
        entry["reply-encoding"] = result.encoding
        entry["reply"] = reply
        steps.append(entry)
    document = {"case": case.name, "about": case.about, "steps": steps}
    path = directory / f"{case.name}.json"
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    if rtpengine_installed() is None:
        print(f"rtpengine not found at {RTPENGINE}", file=sys.stderr)
        return 2
    cases = load_cases()
    if args.cases:
        unknown = set(args.cases) - {case.name for case in cases}
        if unknown:
            parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
        cases = [case for case in cases if case.name in args.cases]
    EXPECTED_DIR.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="record-oracle-") as tmp,
        running_rtpengine(
            Path(tmp),
            ng_port=RTPENGINE_NG_PORT,
            port_min=RTPENGINE_PORTS[0],
            port_max=RTPENGINE_PORTS[1],
            interface=INTERFACES,
        ) as daemon,
        daemon.client(timeout=2.0) as client,
    ):
        run = uuid.uuid4().hex[:8]
        count = itertools.count()

        def exchange(body: bytes) -> bytes:
            # Never reuse a cookie: rtpengine answers a known one from its cache.
            cookie = f"{run}_{next(count)}"
            return client.request_raw(cookie.encode() + b" " + body, cookie)

        for case in cases:
            path = record(case, exchange)
            print(f"{case.name}: {len(case.steps)} steps -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
