"""The rtpengine oracle for the interop tier: re-exported from :mod:`tests.support.oracle`.

The corpus, its normalisation and the comparison live in ``tests/support/oracle.py``,
shared with the in-process replay in ``tests/unit/test_oracle_corpus.py``; this module
keeps the names ``test_oracle.py`` and ``record_oracle.py`` import.
"""

from __future__ import annotations

from tests.support.oracle import (
    CASES_FILE,
    EXPECTED_DIR,
    INTERFACES,
    RELAYD_NG_PORT,
    RELAYD_PORTS,
    RTPENGINE_NG_PORT,
    RTPENGINE_PORTS,
    SDP_DIR,
    Case,
    Exchange,
    Normaliser,
    Step,
    StepResult,
    comparable,
    decode_reply,
    differences,
    encode_step,
    load_cases,
    load_expected,
    port_problems,
    run_case,
    sdp_from_lines,
    sdp_to_lines,
    structural_problems,
)

__all__ = [
    "CASES_FILE",
    "EXPECTED_DIR",
    "INTERFACES",
    "RELAYD_NG_PORT",
    "RELAYD_PORTS",
    "RTPENGINE_NG_PORT",
    "RTPENGINE_PORTS",
    "SDP_DIR",
    "Case",
    "Exchange",
    "Normaliser",
    "Step",
    "StepResult",
    "comparable",
    "decode_reply",
    "differences",
    "encode_step",
    "load_cases",
    "load_expected",
    "port_problems",
    "run_case",
    "sdp_from_lines",
    "sdp_to_lines",
    "structural_problems",
]
