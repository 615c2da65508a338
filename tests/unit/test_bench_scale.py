"""bench/scale.py's choice of relayd workers, without daemons (tests/interop/
test_bench_scale_smoke.py runs the script itself)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from relayd.plane.sockets import worker_budget

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def _load() -> ModuleType:
    """The script as a module; the namespace prefix it sets for its lab (an environment
    variable that bench/media.py's and kernel.py's smoke runs would inherit) is put back."""
    before = os.environ.get("RELAYD_BENCH_NETNS")
    try:
        return _exec()
    finally:
        if before is None:
            os.environ.pop("RELAYD_BENCH_NETNS", None)
        else:
            os.environ["RELAYD_BENCH_NETNS"] = before


def _exec() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scale = _load()


def test_the_default_workers_hold_every_port_of_the_largest_size_once() -> None:
    """Each of a call's four sockets is held by one worker, a worker holds at most its
    descriptor budget: 10,000 calls at this VM's limit of 20,000 need three workers, a
    host that may raise the limit needs one."""
    assert scale.workers_for(1_000, 20_000) == 1
    assert scale.workers_for(4_906, 20_000) == 1  # 19,624 sockets: the budget exactly
    assert scale.workers_for(4_907, 20_000) == 2
    assert scale.workers_for(10_000, 20_000) == 3
    assert scale.workers_for(100_000, 1_048_576) == 1
    for calls in (1, 4_906, 4_907, 10_000, 100_000):
        workers = scale.workers_for(calls, 20_000)
        budget = worker_budget(20_000)
        assert budget is not None
        assert workers * budget >= 4 * calls > (workers - 1) * budget
