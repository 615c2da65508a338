"""bench/scale.py's choice of relayd workers, without daemons (tests/interop/
test_bench_scale_smoke.py runs the script itself)."""

from __future__ import annotations

from relayd.plane.sockets import worker_budget
from tests.support.scripts import load_script

scale = load_script("bench/scale.py", "bench_scale")


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
